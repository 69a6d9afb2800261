"""Fused token log-probs equal the naive full-logits head, in values and gradients."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import kernels

# (N, D, V, block_tokens, block_vocab): what each case stresses.
SHAPES = {
    "blocks_divide_nothing": (37, 16, 100, 8, 24),  # N % 8 != 0, V % 24 != 0
    "vocab_smaller_than_block": (20, 8, 50, 8, 64),
    "one_token_block": (6, 8, 40, 16, 16),
    "exact_blocks": (32, 16, 64, 8, 16),
}


@pytest.fixture
def naive(value_and_grads):
    return lambda problem: value_and_grads(kernels.naive_token_logprobs, problem)


@pytest.fixture
def fused(value_and_grads):
    return lambda problem, **options: value_and_grads(functools.partial(kernels.token_logprobs, **options), problem)


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_xla_matches_naive_fp32(case, make_problem, naive, fused):
    n, d, v, bn, bv = SHAPES[case]
    problem = make_problem(n, d, v)
    chex.assert_trees_all_close(
        fused(problem, impl="xla", block_tokens=bn, block_vocab=bv), naive(problem), atol=1e-5, rtol=1e-5
    )


def _relative_error(got, want):
    return float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)) / jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("impl", ["xla", "pallas_tpu", "pallas_gpu"])
def test_bf16_matches_fp32_naive_within_2e_2_relative(impl, make_problem, naive, fused):
    problem = make_problem(24, 32, 80, dtype=jnp.bfloat16)
    # The reference sees the very same (bf16-representable) numbers, computed in fp32.
    reference = naive({**problem, "hidden": problem["hidden"].astype(jnp.float32), "w": problem["w"].astype(jnp.float32)})
    got = fused(problem, impl=impl, block_tokens=16, block_vocab=32, interpret=impl != "xla")
    assert got[2].dtype == jnp.bfloat16 and got[3].dtype == jnp.bfloat16
    for name, g, r in zip(("logp", "lse", "d_hidden", "d_w"), got, reference):
        assert _relative_error(g, r) < 2e-2, name


def test_masked_tokens_give_zero_and_no_gradient(make_problem, fused):
    problem = make_problem(19, 8, 30, masked_fraction=0.5)
    logp, lse, d_hidden, _ = fused(problem, impl="xla", block_tokens=4, block_vocab=8)
    masked = ~problem["valid"]
    assert masked.any() and problem["valid"].any()
    np.testing.assert_array_equal(logp[masked], 0.0)
    np.testing.assert_array_equal(lse[masked], 0.0)
    np.testing.assert_array_equal(d_hidden[masked], 0.0)


def test_masked_tokens_equal_dropped_tokens(make_problem, fused):
    problem = make_problem(19, 8, 30, masked_fraction=0.5)
    keep = np.asarray(problem["valid"])
    sliced = {k: (x[keep] if x.shape[:1] == (19,) else x) for k, x in problem.items()}
    logp, lse, _, d_w = fused(problem, impl="xla", block_tokens=4, block_vocab=8)
    logp_s, lse_s, _, d_w_s = fused(sliced, impl="xla", block_tokens=4, block_vocab=8)
    chex.assert_trees_all_close((logp[keep], lse[keep], d_w), (logp_s, lse_s, d_w_s), atol=1e-5)


def test_overflowing_masked_row_does_not_poison_gradients(make_problem, fused):
    # A padding row whose logits overflow exp() in fp32 must still contribute exactly nothing.
    problem = make_problem(8, 4, 16, masked_fraction=0.0)
    problem["hidden"] = problem["hidden"].at[3].set(1e4)
    problem["valid"] = problem["valid"].at[3].set(False)
    _, _, d_hidden, d_w = fused(problem, impl="xla", block_tokens=4, block_vocab=8)
    assert bool(jnp.all(jnp.isfinite(d_w))) and bool(jnp.all(jnp.isfinite(d_hidden)))


def test_jit_equals_eager(make_problem):
    problem = make_problem(21, 8, 33)
    fn = functools.partial(kernels.token_logprobs, impl="xla", block_tokens=8, block_vocab=16)
    args = (problem["hidden"], problem["w"], problem["labels"], problem["valid"])
    chex.assert_trees_all_close(jax.jit(fn)(*args), fn(*args), atol=1e-6)


def test_no_grad_path_gives_same_values_and_zero_gradient(make_problem, value_and_grads, fused):
    problem = make_problem(21, 8, 33)
    options = dict(impl="xla", block_tokens=8, block_vocab=16)
    logp, lse, d_hidden, d_w = fused(problem, **options)
    logp_ng, lse_ng, d_hidden_ng, d_w_ng = value_and_grads(
        functools.partial(kernels.token_logprobs_no_grad, **options), problem
    )
    chex.assert_trees_all_close((logp_ng, lse_ng), (logp, lse))
    assert not jnp.any(d_hidden_ng) and not jnp.any(d_w_ng)


def test_saved_residuals_hold_no_token_by_vocab_array(make_problem):
    n, v = 16, 64
    problem = make_problem(n, 8, v)

    def saved_sizes(logprobs):
        fn = lambda h, w: logprobs(h, w, problem["labels"], problem["valid"])[0]
        return [x.size for x in jax.tree.leaves(jax.vjp(fn, problem["hidden"], problem["w"])[1])]

    assert max(saved_sizes(kernels.naive_token_logprobs)) >= n * v  # the probe sees [N, V] logits
    assert max(saved_sizes(functools.partial(kernels.token_logprobs, impl="xla"))) < n * v


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
@pytest.mark.parametrize("case", ["blocks_divide_nothing", "vocab_smaller_than_block"])
def test_pallas_interpret_matches_naive_fp32(impl, case, make_problem, naive, fused):
    n, d, v, bn, bv = SHAPES[case]
    problem = make_problem(n, d, v)
    got = fused(problem, impl=impl, block_tokens=bn, block_vocab=bv, interpret=True)
    chex.assert_trees_all_close(got, naive(problem), atol=1e-5, rtol=1e-5)


def test_label_outside_vocab_gives_minus_lse(make_problem, fused):
    problem = make_problem(4, 8, 16, masked_fraction=0.0)
    problem["labels"] = problem["labels"].at[1].set(16)
    logp, lse, _, _ = fused(problem, impl="xla", block_tokens=4, block_vocab=8)
    assert float(logp[1]) == pytest.approx(-float(lse[1]))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(hidden=jnp.zeros((4, 8)), w=jnp.zeros((6, 16))), ValueError, "disagree on D"),
        (dict(hidden=jnp.zeros((1, 4, 8))), ValueError, "hidden must have rank 2"),
        (dict(labels=jnp.zeros((5,), jnp.int32)), ValueError, "labels"),
        (dict(labels=jnp.zeros((4,), jnp.float32)), TypeError, "int32"),
        (dict(valid=jnp.ones((4,), jnp.int32)), TypeError, "valid must be bool"),
        (dict(impl="cuda"), ValueError, "impl='cuda'"),
        (dict(block_vocab=0), ValueError, "block_vocab=0"),
    ],
)
def test_bad_input_names_the_problem(kwargs, error, message):
    call = dict(hidden=jnp.zeros((4, 8)), w=jnp.zeros((8, 16)), labels=jnp.zeros((4,), jnp.int32), valid=None)
    call.update(kwargs)
    with pytest.raises(error, match=message):
        kernels.token_logprobs(call.pop("hidden"), call.pop("w"), call.pop("labels"), call.pop("valid"), **call)


def test_auto_picks_pallas_on_tpu_and_the_xla_loop_elsewhere(monkeypatch):
    assert kernels.KernelConfig().resolved().impl == "xla"
    for backend, impl in (("tpu", "pallas_tpu"), ("gpu", "xla")):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        resolved = kernels.KernelConfig(block_vocab=256).resolved()
        assert (resolved.impl, resolved.block_vocab) == (impl, 256)


@pytest.mark.parametrize("impl, platform", [("pallas_tpu", "tpu"), ("pallas_gpu", "cuda")])
def test_pallas_kernels_lower_for_their_hardware(impl, platform):
    """Cross-lowering on CPU applies Mosaic's and Triton's shape rules (Triton: power-of-two tensors)
    at awkward real sizes; it cannot run the kernels, which stay untested on hardware here."""
    n, d, v = 1000, 576, 50000

    def loss(hidden, w, labels):
        return jnp.sum(kernels.token_logprobs(hidden, w, labels, impl=impl)[0])

    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
        jax.ShapeDtypeStruct((d, v), jnp.bfloat16),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(*shapes).lower(lowering_platforms=(platform,))
    assert ("tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton") in lowered.as_text()
