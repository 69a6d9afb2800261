"""Scored-token gathering and per-response sums around the kernel, against direct full-logits sums."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import kernels


def test_gather_takes_masked_positions_in_order_and_pads():
    mask = jnp.asarray([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], bool)
    scored = kernels.gather_scored_tokens(mask, 6)
    np.testing.assert_array_equal(scored.index, [1, 2, 4, 5, 0, 0])
    np.testing.assert_array_equal(scored.valid, [True] * 4 + [False] * 2)
    assert int(scored.count) == 4


def test_gather_count_reports_overflow():
    scored = kernels.gather_scored_tokens(jnp.ones((3, 4), bool), 8)
    assert int(scored.count) == 12 and bool(scored.valid.all())


@pytest.mark.parametrize("count, length", [(1, 64), (64, 64), (65, 128), (128, 128)])
def test_bucket_length_is_smallest_that_fits(count, length):
    assert kernels.bucket_length(count, (64, 128, 256)) == length


def test_bucket_length_errors():
    with pytest.raises(ValueError, match="exceed the largest bucket 256"):
        kernels.bucket_length(257, (64, 256))
    with pytest.raises(ValueError, match="ascending"):
        kernels.bucket_length(3, (256, 64))


def test_segment_sum_matches_numpy_and_drops_out_of_range_ids():
    rng = np.random.default_rng(0)
    values = rng.normal(size=50).astype(np.float32)
    ids = rng.integers(-1, 7, size=50)  # -1: prompt / padding
    expected = np.array([values[ids == s].sum() for s in range(6)])  # id 6 is out of range too
    chex.assert_trees_all_close(kernels.segment_sum(jnp.asarray(values), jnp.asarray(ids), 6), expected, atol=1e-6)


def test_segment_sum_rejects_float_ids():
    with pytest.raises(TypeError, match="segment_ids must be integers"):
        kernels.segment_sum(jnp.zeros(3), jnp.zeros(3), 2)


def test_packed_pipeline_equals_full_logits_sums():
    """[prompt | chosen | rejected] rows: gather + fused kernel + segment sums == naive per-response sums."""
    rng = np.random.default_rng(1)
    b, t, d, v = 2, 12, 8, 40
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    # Per row: segment 1 = prompt, 2 = chosen, 3 = rejected, 0 = padding.
    segments = jnp.asarray([[1] * 4 + [2] * 3 + [3] * 4 + [0], [1] * 6 + [2] * 2 + [3] * 2 + [0] * 2], jnp.int32)
    response = segments >= 2

    def per_response_sums(hidden, w):
        scored = kernels.gather_scored_tokens(response, 16)
        flat_hidden = hidden.reshape(-1, d)[scored.index]
        flat_labels = labels.reshape(-1)[scored.index]
        logp, _ = kernels.token_logprobs(flat_hidden, w, flat_labels, scored.valid, impl="xla", block_tokens=4, block_vocab=16)
        # id = row * 2 + (0 chosen, 1 rejected); padding slots get -1.
        row = scored.index // t
        ids = jnp.where(scored.valid, row * 2 + segments.reshape(-1)[scored.index] - 2, -1)
        return kernels.segment_sum(logp, ids, 2 * b)

    def reference(hidden, w):
        logp = jax.nn.log_softmax(hidden @ w, axis=-1)
        token_logp = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        return jnp.stack([jnp.sum(token_logp * (segments == s), axis=1) for s in (2, 3)], axis=1).reshape(-1)

    chex.assert_trees_all_close(per_response_sums(hidden, w), reference(hidden, w), atol=1e-5)
    g = jnp.asarray(rng.normal(size=2 * b), jnp.float32)
    grads = jax.grad(lambda h, w: jnp.sum(g * per_response_sums(h, w)), argnums=(0, 1))(hidden, w)
    expected = jax.grad(lambda h, w: jnp.sum(g * reference(h, w)), argnums=(0, 1))(hidden, w)
    chex.assert_trees_all_close(grads, expected, atol=1e-5)


def test_segment_sum_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"values \(3,\) and segment_ids \(4,\)"):
        kernels.segment_sum(jnp.zeros(3), jnp.zeros(4, jnp.int32), 2)


def test_gather_rejects_non_bool_mask_and_bad_length():
    with pytest.raises(TypeError, match="mask must be bool"):
        kernels.gather_scored_tokens(jnp.ones((2, 3), jnp.int32), 4)
    with pytest.raises(ValueError, match="length=0"):
        kernels.gather_scored_tokens(jnp.ones((2, 3), bool), 0)
