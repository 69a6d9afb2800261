"""kernels.attention: block-sparse flash attention equals masked dense attention (values and gradients).

The reference is `jax.nn.dot_product_attention` with the dense mask of `data.attention_mask` (the data
layer's definition of the packed layout). Padding queries attend nothing: the reference gives them an
average of every value, the kernels 0, so losses weight padding rows by 0 (as the model's scoring does).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import data, kernels
from alignx_jax.kernels import _attention_mask


def random_pair(rng, prompt_len, chosen_len, rejected_len):
    ids = lambda n: rng.integers(3, 500, n).astype(np.int32)  # noqa: E731
    return data.EncodedPair(np.concatenate([[1], ids(prompt_len - 1)]).astype(np.int32), ids(chosen_len), ids(rejected_len))


@pytest.fixture(scope="module")
def packed():
    """Row 0: three pairs; row 1: one pair then padding; T = 75 (divisible by no block size)."""
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng, 11, 5, 4), random_pair(rng, 14, 3, 7), random_pair(rng, 23, 1, 2), random_pair(rng, 6, 9, 3)]
    return data.pack_rows([pairs[:3], pairs[3:]], seq_len=75)


def structure(batch):
    return {name: jnp.asarray(getattr(batch, name)) for name in ("segment_ids", "roles", "positions")}


def make_qkv(shape, heads, kv_heads, dim, dtype=jnp.float32, seed=0):
    b, t = shape
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (b, t, heads, dim), dtype)
    k, v = (jax.random.normal(key, (b, t, kv_heads, dim), dtype) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], (b, t, heads, dim), jnp.float32)
    return q, k, v, cotangent


def reference(q, k, v, batch):
    mask = jnp.asarray(data.attention_mask(batch.segment_ids, batch.roles, batch.positions))
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    return jax.nn.dot_product_attention(up(q), up(k), up(v), mask=mask[:, None])


def value_and_grads(attend, q, k, v, cotangent, live):
    """Output and d/d(q, k, v) of sum(out * cotangent) over live (non-padding) query rows."""
    weights = cotangent * live[:, :, None, None]

    def loss(q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def assert_close(got, want, live, atol, rtol=0.0):
    live = np.asarray(live)[:, :, None, None]
    np.testing.assert_allclose(np.where(live, np.asarray(got, np.float32), 0), np.where(live, want, 0), atol=atol, rtol=rtol)


@pytest.mark.parametrize("heads, kv_heads, block_q, block_k", [(6, 2, 16, 32), (8, 2, 32, 16)])
def test_xla_matches_dense_fp32(packed, heads, kv_heads, block_q, block_k):
    q, k, v, cotangent = make_qkv(packed.shape, heads, kv_heads, 16)
    live = jnp.asarray(packed.segment_ids > 0)
    attend = functools.partial(kernels.attention, **structure(packed), impl="xla", block_q=block_q, block_k=block_k)
    out, grads = value_and_grads(attend, q, k, v, cotangent, live)
    want_out, want_grads = value_and_grads(lambda *a: reference(*a, packed), q, k, v, cotangent, live)
    assert_close(out, want_out, live, atol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_xla_bf16_within_2e_2_of_fp32(packed):
    q, k, v, cotangent = make_qkv(packed.shape, 8, 2, 32, dtype=jnp.bfloat16)
    live = jnp.asarray(packed.segment_ids > 0)
    attend = functools.partial(kernels.attention, **structure(packed), impl="xla", block_q=16, block_k=32)
    out, grads = value_and_grads(attend, q, k, v, cotangent, live)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    want_out, want_grads = value_and_grads(lambda *a: reference(*a, packed), q, k, v, cotangent, live)
    scale = lambda x: float(jnp.abs(x).max())  # noqa: E731
    assert_close(out, want_out, live, atol=2e-2 * scale(want_out))
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2 * scale(want))


def test_plain_causal_rows_equal_is_causal():
    q, k, v, cotangent = make_qkv((2, 75), 6, 3, 8)
    live = jnp.ones((2, 75), bool)
    ours = functools.partial(kernels.attention, impl="xla", block_q=16, block_k=16)
    dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    out, grads = value_and_grads(ours, q, k, v, cotangent, live)
    want_out, want_grads = value_and_grads(dense, q, k, v, cotangent, live)
    assert_close(out, want_out, live, atol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The same rows given as structure (one segment, all prefix) take the dynamic path to the same values,
    # and a block larger than the row is one tile.
    ones = jnp.ones((2, 75), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(75, dtype=jnp.int32), (2, 75))
    structured = functools.partial(ours, segment_ids=ones, roles=ones, positions=positions)
    np.testing.assert_allclose(jax.jit(structured)(q, k, v), out, atol=1e-6)
    one_tile = jax.jit(functools.partial(kernels.attention, impl="xla", block_q=128, block_k=128))
    np.testing.assert_allclose(one_tile(q, k, v), out, atol=1e-6)


def test_padding_queries_give_zero_and_no_gradient(packed):
    q, k, v, _ = make_qkv(packed.shape, 4, 2, 8)
    attend = functools.partial(kernels.attention, **structure(packed), impl="xla", block_q=16, block_k=16)
    padding = np.asarray(packed.segment_ids == 0)
    # Only padding rows in the loss: every gradient is exactly zero (padding keys are never read either).
    loss = lambda *a: jnp.sum(attend(*a) * jnp.asarray(padding)[:, :, None, None])  # noqa: E731
    out, grads = jax.jit(lambda *a: (attend(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(q, k, v)
    assert padding.any() and np.all(np.asarray(out)[padding] == 0)
    assert all(float(jnp.abs(g).max()) == 0 for g in grads)


def test_jit_equals_eager(packed):
    q, k, v, _ = make_qkv(packed.shape, 4, 2, 8)
    attend = functools.partial(kernels.attention, **structure(packed), impl="xla", block_q=32, block_k=16)
    np.testing.assert_allclose(jax.jit(attend)(q, k, v), attend(q, k, v), atol=1e-6)


def test_dense_impl_is_the_packed_mask_reference(packed):
    mask = kernels.packed_mask(*structure(packed).values())
    np.testing.assert_array_equal(mask, data.attention_mask(packed.segment_ids, packed.roles, packed.positions))


def random_structure(rng, b, t):
    """Arbitrary (non-layout) structure: scattered segments and roles, shuffled positions."""
    seg = rng.integers(0, 4, (b, t)).astype(np.int32)
    role = np.where(seg > 0, rng.integers(1, 5, (b, t)), 0).astype(np.int32)
    pos = np.stack([rng.permutation(t) for _ in range(b)]).astype(np.int32)
    return seg, role, pos


@pytest.mark.parametrize("seed", range(3))
def test_branch_start_and_block_skipping_are_exact_or_conservative(seed, packed):
    rng = np.random.default_rng(seed)
    layouts = [tuple(np.asarray(getattr(packed, n))[:, :64] for n in ("segment_ids", "roles", "positions")),
               random_structure(rng, 2, 64)]
    for seg, role, pos in layouts:
        same_block = (seg[:, :, None] == seg[:, None, :]) & (role[:, :, None] == role[:, None, :])
        want_start = np.where(same_block, pos[:, None, :], np.iinfo(np.int32).max).min(-1)
        got_start = _attention_mask.branch_start(jnp.asarray(seg), jnp.asarray(role), jnp.asarray(pos))
        np.testing.assert_array_equal(got_start, want_start)
        dense = np.asarray(kernels.packed_mask(jnp.asarray(seg), jnp.asarray(role), jnp.asarray(pos)))
        tiles = dense.reshape(2, 4, 16, 8, 8).any(axis=(2, 4))  # 16-row query blocks x 8-column key blocks
        visible = np.asarray(_attention_mask.block_visibility(jnp.asarray(seg), jnp.asarray(role), block_q=16, block_k=8))
        assert np.all(visible >= tiles)  # never skips a tile that holds a visible pair
        if seg is layouts[0][0]:
            assert np.array_equal(visible, tiles)  # and on the data layout it skips every other tile


def test_random_structure_values_match_the_rule():
    rng = np.random.default_rng(5)
    seg, role, pos = (jnp.asarray(a) for a in random_structure(rng, 2, 40))
    q, k, v, cotangent = make_qkv((2, 40), 4, 2, 8)
    mask = kernels.packed_mask(seg, role, pos)
    live = mask.any(-1)
    attend = functools.partial(kernels.attention, segment_ids=seg, roles=role, positions=pos, impl="xla",
                               block_q=16, block_k=8)
    out, grads = value_and_grads(attend, q, k, v, cotangent, live)
    dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])  # noqa: E731
    want_out, want_grads = value_and_grads(dense, q, k, v, cotangent, live)
    assert_close(out, want_out, live, atol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_packed_rows_skip_tiles():
    """On a row of 6 pairs the kernel visits far fewer tiles than the causal triangle."""
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, 150, 60, 50) for _ in range(6)]
    batch = data.pack_rows([pairs], seq_len=1664)
    visible = _attention_mask.block_visibility(jnp.asarray(batch.segment_ids), jnp.asarray(batch.roles),
                                               block_q=128, block_k=128)
    causal = 13 * 14 // 2
    assert int(visible.sum()) < 0.4 * causal


@pytest.mark.parametrize("kwargs, message", [
    (dict(impl="flash"), "impl='flash' is not one of"),
    (dict(roles=jnp.ones((1, 8), jnp.int32)), "segment_ids and roles go together"),
    (dict(segment_ids=jnp.ones((1, 8), jnp.int32), roles=jnp.ones((1, 8), jnp.int32)), "need positions"),
])
def test_bad_input_names_the_problem(kwargs, message):
    q = jnp.zeros((1, 8, 4, 8))
    with pytest.raises(ValueError, match=message):
        kernels.attention(q, q[:, :, :2], q[:, :, :2], **kwargs)


# ---- Pallas implementations: interpret mode on CPU, cross-lowered for their hardware -----------------

@pytest.fixture(scope="module")
def long_packed():
    """Row 0: two pairs over several 128-blocks; row 1: one pair and padding; T = 300."""
    rng = np.random.default_rng(3)
    pairs = [random_pair(rng, 97, 41, 30), random_pair(rng, 50, 20, 33), random_pair(rng, 140, 60, 7)]
    return data.pack_rows([pairs[:2], pairs[2:]], seq_len=300)


@pytest.mark.parametrize("impl, batch, blocks", [
    ("pallas_gpu", "packed", dict(block_q=16, block_k=32)),
    ("pallas_gpu", "causal", dict(block_q=32, block_k=16)),
    ("splash", "packed", dict(block_q=128, block_k=128)),
    ("splash", "causal", dict(block_q=128, block_k=128)),
], ids=lambda x: x if isinstance(x, str) else "")
def test_pallas_interpret_matches_dense(impl, batch, blocks, request):
    rows = request.getfixturevalue("packed" if impl == "pallas_gpu" else "long_packed")
    q, k, v, cotangent = make_qkv(rows.shape, 8, 2, 16)  # GQA 4:1
    if batch == "causal":
        live = jnp.ones(rows.shape, bool)
        kw, want = {}, lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        live = jnp.asarray(rows.segment_ids > 0)
        kw, want = structure(rows), lambda *a: reference(*a, rows)  # noqa: E731
    attend = functools.partial(kernels.attention, impl=impl, interpret=True, **blocks, **kw)
    out, grads = value_and_grads(attend, q, k, v, cotangent, live)
    want_out, want_grads = value_and_grads(want, q, k, v, cotangent, live)
    assert_close(out, want_out, live, atol=1e-5)
    for got, want_grad in zip(grads, want_grads):
        np.testing.assert_allclose(got, want_grad, atol=1e-5)


@pytest.mark.parametrize("impl, platform, marker", [
    ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"),
    ("splash", "tpu", "tpu_custom_call"),
])
@pytest.mark.parametrize("packed_rows", [True, False], ids=["packed", "causal"])
def test_pallas_kernels_lower_for_their_hardware(impl, platform, marker, packed_rows):
    """Cross-lowering applies Triton's and Mosaic's shape rules at an awkward real size (T = 1000,
    SmolLM2's 9 query / 3 kv heads of 64, bf16); it cannot run the kernels (no GPU/TPU here)."""
    b, t, n, kv, h = 2, 1000, 9, 3, 64
    tensors = [jax.ShapeDtypeStruct((b, t, heads, h), jnp.bfloat16) for heads in (n, kv, kv)]
    ints = [jax.ShapeDtypeStruct((b, t), jnp.int32)] * (3 if packed_rows else 0)

    def loss(q, k, v, *structure_):
        kw = dict(zip(("segment_ids", "roles", "positions"), structure_))
        return jnp.sum(kernels.attention(q, k, v, impl=impl, **kw).astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*tensors, *ints).lower(lowering_platforms=(platform,))
    assert lowered.as_text().count(marker) >= 2  # forward and backward kernels


def test_auto_picks_per_platform(monkeypatch):
    from alignx_jax.kernels import _attention

    assert _attention.auto_impl(jnp.float32, 64) == "xla"
    assert _attention.auto_impl(jnp.bfloat16, 64, backend="tpu") == "splash"
    assert _attention.auto_impl(jnp.bfloat16, 128, backend="gpu") == "cudnn"
    assert _attention.auto_impl(jnp.float32, 64, backend="gpu") == "dense"  # cuDNN runs fp16/bf16 only
