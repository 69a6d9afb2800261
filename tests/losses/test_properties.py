"""Properties every registered loss must have: jit == eager, correct gradients, finite at extreme
inputs, vmap, and beta applied exactly once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignx_jax import losses

_MIXTURE = {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}


def call_kwargs(name, chosen_tokens, rejected_tokens):
    """The keyword inputs a trainer passes: token counts always, a component list for the mixture."""
    kwargs = {"chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}
    return {**kwargs, **_MIXTURE} if name == "mixture" else kwargs


def batch_args(pair_batch, dtype=jnp.float32):
    logps = [jnp.asarray(x, dtype) for x in pair_batch.logps]
    return logps, jnp.asarray(pair_batch.chosen_tokens), jnp.asarray(pair_batch.rejected_tokens)


@pytest.mark.parametrize("name", losses.names())
def test_jit_equals_eager(pair_batch, name):
    logps, n_w, n_l = batch_args(pair_batch)
    fn = losses.get(name)
    kwargs = call_kwargs(name, n_w, n_l)
    eager = fn(*logps, **kwargs)
    jitted = jax.jit(lambda *a: fn(*a, **kwargs))(*logps)
    assert eager[0].shape == (len(pair_batch.chosen_tokens),) and eager[0].dtype == jnp.float32
    # XLA may fuse differently from op-by-op dispatch: a few float32 ulps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6), eager, jitted)


@pytest.mark.parametrize("name", losses.names())
def test_gradients_match_finite_differences(pair_batch, name):
    with jax.enable_x64(True):
        logps, n_w, n_l = batch_args(pair_batch, jnp.float64)
        fn = losses.get(name)
        kwargs = call_kwargs(name, n_w, n_l)
        check_grads(lambda *a: fn(*a, **kwargs)[0], logps, order=1, modes=("rev",))


def _extreme_inputs(batch_size=4):
    """|beta * log-ratio| = 1e4 at beta = 0.1, both signs, every log-prob < 0 (valid for orpo)."""
    big = 1e5
    policy_chosen = jnp.array([-1e-3, -2 * big, -1e-3, -2 * big])
    policy_rejected = jnp.array([-2 * big, -1e-3, -1e-3, -2 * big])
    reference = jnp.full((batch_size,), -big)
    return [policy_chosen, policy_rejected, reference, reference]


_EXTREME_CASES = [(name, {}) for name in losses.names()] + [
    ("sigmoid", {"f_divergence_type": f}) for f in ("forward_kl", "js_divergence", "alpha_divergence")
]


@pytest.mark.parametrize("name,hparams", _EXTREME_CASES)
def test_finite_at_extreme_inputs(name, hparams):
    logps = _extreme_inputs()
    fn = losses.get(name)
    kwargs = {**call_kwargs(name, jnp.ones(4), jnp.ones(4)), **hparams}
    values, metrics = fn(*logps, **kwargs)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a, **kwargs)[0]), argnums=(0, 1, 2, 3))(*logps)
    assert bool(jnp.all(jnp.isfinite(values))), values
    for grad in grads:
        assert bool(jnp.all(jnp.isfinite(grad))), grads
    for key, value in metrics.items():
        assert bool(jnp.all(jnp.isfinite(value))), key


@pytest.mark.parametrize("name", losses.names())
def test_vmap_over_groups_equals_a_loop(name):
    """vmap over a leading group axis [K, B] (e.g. users) equals calling each group on its own."""
    rng = np.random.default_rng(1)
    groups, batch = 3, 4
    logps = [jnp.asarray(-rng.uniform(1, 20, (groups, batch)), jnp.float32) for _ in range(4)]
    n_w, n_l = (jnp.asarray(rng.integers(1, 9, (groups, batch))) for _ in range(2))
    fn = losses.get(name)
    extra = _MIXTURE if name == "mixture" else {}

    def one(pc, pr, rc, rr, cw, cl):
        return fn(pc, pr, rc, rr, chosen_tokens=cw, rejected_tokens=cl, **extra)

    mapped = jax.vmap(one)(*logps, n_w, n_l)
    looped = [one(*(x[k] for x in logps), n_w[k], n_l[k]) for k in range(groups)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6), mapped, stacked)


@pytest.mark.parametrize("name", sorted(set(losses.names()) - {"mixture"}))
def test_doubling_beta_doubles_the_rewards_exactly(pair_batch, name):
    logps, n_w, n_l = batch_args(pair_batch)
    fn = losses.get(name)
    _, once = fn(*logps, beta=0.3, chosen_tokens=n_w, rejected_tokens=n_l)
    _, twice = fn(*logps, beta=0.6, chosen_tokens=n_w, rejected_tokens=n_l)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        np.testing.assert_array_equal(twice[key], 2 * once[key], err_msg=key)  # scaling by 2 is exact


# Losses of beta * (log-prob differences) only: (beta / 2, log-probs x 2) must give the same loss. A
# beta applied twice would shrink it to beta^2 / 4 * 2 x, which changes the value.
_BETA_TIMES_INPUT = (
    "sigmoid",
    "hinge",
    "robust",
    "exo_pair",
    "discopop",
    "sigmoid_norm",
    "bco_pair",
    "nca_pair",
    "apo_zero",
    "apo_down",
    "dpop",
    "aot",
    "aot_pair",
    "aot_unpaired",
    "simpo",
)


@pytest.mark.parametrize("name", _BETA_TIMES_INPUT)
def test_beta_enters_once_as_a_scale_of_the_log_ratios(pair_batch, name):
    logps, n_w, n_l = batch_args(pair_batch)
    fn = losses.get(name)
    hparams = {"label_smoothing": 0.1} if name in ("robust", "exo_pair", "aot", "simpo") else {}
    base, _ = fn(*logps, beta=0.3, chosen_tokens=n_w, rejected_tokens=n_l, **hparams)
    scaled, _ = fn(*(2 * x for x in logps), beta=0.15, chosen_tokens=n_w, rejected_tokens=n_l, **hparams)
    np.testing.assert_allclose(scaled, base, rtol=1e-6)
    changed, _ = fn(*logps, beta=0.6, chosen_tokens=n_w, rejected_tokens=n_l, **hparams)
    assert not np.allclose(changed, base)  # beta matters at all


@pytest.mark.parametrize("name", ["ipo", "sppo_hard"])
def test_squared_losses_scale_with_their_target_one_over_two_beta(pair_batch, name):
    """(u - 1/(2 beta))^2 with log-ratios x 2 and beta / 2 is exactly 4 times the loss."""
    logps, n_w, n_l = batch_args(pair_batch)
    fn = losses.get(name)
    base, _ = fn(*logps, beta=0.3, chosen_tokens=n_w, rejected_tokens=n_l)
    scaled, _ = fn(*(2 * x for x in logps), beta=0.15, chosen_tokens=n_w, rejected_tokens=n_l)
    np.testing.assert_allclose(scaled, 4 * base, rtol=1e-6)
