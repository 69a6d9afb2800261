"""Shared inputs for the kernel tests: random problems and a fwd+bwd probe against the naive head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _make_problem(n, d, v, *, dtype=jnp.float32, masked_fraction=0.25, seed=0):
    """Random hidden, w, labels, valid mask and cotangents for logp and lse."""
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
    # Scale so the logits spread over a few units: the softmax is neither flat nor one-hot.
    w = jnp.asarray(rng.normal(size=(d, v)) * 2.0 / np.sqrt(d), dtype)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    valid = jnp.asarray(rng.random(n) >= masked_fraction)
    g_logp = jnp.asarray(rng.normal(size=n), jnp.float32)
    g_lse = jnp.asarray(rng.normal(size=n), jnp.float32)
    return dict(hidden=hidden, w=w, labels=labels, valid=valid, g_logp=g_logp, g_lse=g_lse)


def _value_and_grads(logprobs, problem):
    """Jitted ``(logp, lse, d hidden, d w)`` of ``sum(g_logp * logp + g_lse * lse)``: both outputs' VJPs at once."""

    def loss(hidden, w):
        logp, lse = logprobs(hidden, w, problem["labels"], problem["valid"])
        return jnp.sum(problem["g_logp"] * logp) + jnp.sum(problem["g_lse"] * lse), (logp, lse)

    (_, (logp, lse)), (d_hidden, d_w) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        problem["hidden"], problem["w"]
    )
    return logp, lse, d_hidden, d_w


@pytest.fixture
def make_problem():
    """``make_problem(n, d, v, *, dtype, masked_fraction, seed)`` -> dict of inputs and cotangents."""
    return _make_problem


@pytest.fixture
def value_and_grads():
    """``value_and_grads(logprobs, problem)`` -> jitted (logp, lse, d hidden, d w)."""
    return _value_and_grads
