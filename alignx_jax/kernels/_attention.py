"""Attention over packed preference rows, the mask given as structure (segments, roles, positions).

The mask rule (the packed layout of `alignx_jax.data`, in kernel terms): every token carries a
segment id (0 = padding), a role (0 = padding, 1 = the shared prefix, >= 2 a branch that forks
from the prefix) and its RoPE position. Query i may attend key j when

    seg[i] == seg[j] > 0  and  j <= i  and  (role[i] == role[j]
                                             or (role[j] == 1 and pos[j] < branch_start[i]))

where branch_start[i] is the smallest position of i's own (segment, role) block. A plain causal
row is one segment whose tokens all have role 1.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.kernels import _attention_gpu, _attention_tpu, _attention_xla

PREFIX_ROLE = 1
ATTENTION_IMPLS = ("auto", "xla", "dense", "cudnn", "pallas_gpu", "splash")


def packed_mask(segment_ids: chex.Array, roles: chex.Array, positions: chex.Array) -> chex.Array:
    """The dense bool mask [B, T, T] (query, key) of the rule in the module docstring."""
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    role_q, role_k = roles[:, :, None], roles[:, None, :]
    t = segment_ids.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same_segment = (seg_q == seg_k) & (seg_q > 0)
    same_block = same_segment & (role_q == role_k)
    branch_start = jnp.min(jnp.where(same_block, positions[:, None, :], np.iinfo(np.int32).max), axis=-1)
    from_prefix = (role_k == PREFIX_ROLE) & (role_q != PREFIX_ROLE) & (positions[:, None, :] < branch_start[:, :, None])
    return same_segment & causal[None] & ((role_q == role_k) | from_prefix)


def attention(q: chex.Array, k: chex.Array, v: chex.Array, *, segment_ids: chex.Array | None = None,
              roles: chex.Array | None = None, positions: chex.Array | None = None, impl: str = "auto",
              block_q: int | None = None, block_k: int | None = None, interpret: bool = False) -> chex.Array:
    """softmax(q k^T / sqrt(H) + mask) v over packed rows, grouped-query.

    Args:
      q: [B, T, N, H]; k, v: [B, T, K, H] with N a multiple of K (GQA: query head n reads kv head
        n // (N / K)).
      segment_ids, roles, positions: int32 [B, T], the mask structure (module docstring).
        segment_ids = roles = None: plain causal rows (every token one segment in the prefix
        role); positions are then unused.
      impl: where it runs (`auto_impl` picks per platform and dtype):
        "xla"        block-sparse flash attention in pure JAX (`_attention_xla`), any backend;
        "dense"      the [B, T, T] mask and `jax.nn.dot_product_attention` (XLA), the reference;
        "cudnn"      cuDNN flash attention (GPU, fp16/bf16), packed rows as a dense mask;
        "pallas_gpu" block-sparse flash attention as Pallas-Triton kernels (`_attention_gpu`);
        "splash"     TPU splash attention, packed rows as its dynamic mask (`_attention_tpu`).
      block_q, block_k: tile sizes (None: the implementation's default); any T works (padded).
      interpret: run a Pallas implementation (pallas_gpu, splash) in interpret mode (CPU tests).

    Returns:
      [B, T, N, H] in q's dtype. A query that attends nothing (padding) gives finite garbage
      (0 for the block-sparse implementations).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: impl={impl!r} is not one of {ATTENTION_IMPLS}")
    chex.assert_rank([q, k, v], 4)
    chex.assert_equal_shape([k, v])
    if (segment_ids is None) != (roles is None):
        raise ValueError("attention: segment_ids and roles go together (both None: plain causal rows)")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: {q.shape[2]} query heads are not a multiple of {k.shape[2]} kv heads")
    if segment_ids is not None:
        if positions is None:
            raise ValueError("attention: packed rows (segment_ids, roles) need positions")
        chex.assert_shape([segment_ids, roles, positions], q.shape[:2])
    if impl == "auto":
        impl = auto_impl(q.dtype, q.shape[-1])
    if impl == "dense":
        if segment_ids is None:
            return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), is_causal=True)
        mask = packed_mask(segment_ids, roles, positions)
        return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None])
    if impl == "cudnn":
        return _attention_gpu.cudnn_attention(q, k, v, segment_ids, roles, positions)
    blocks = {name: size for name, size in (("block_q", block_q), ("block_k", block_k)) if size is not None}
    if impl == "pallas_gpu":
        return _attention_gpu.pallas_attention(q, k, v, segment_ids, roles, positions, interpret=interpret, **blocks)
    if impl == "splash":
        return _attention_tpu.splash_attention(q, k, v, segment_ids, roles, positions, interpret=interpret, **blocks)
    return _attention_xla.attention(q, k, v, segment_ids, roles, positions, **blocks)


def auto_impl(dtype, head_dim: int, backend: str | None = None) -> str:
    """The implementation "auto" runs: splash on TPU; on GPU cuDNN for fp16/bf16 (its dtypes and head
    dims), else the dense XLA path (the Triton kernel is opt-in until measured on a GPU); elsewhere the
    block-sparse XLA loop."""
    backend = backend or jax.default_backend()
    if backend == "tpu":
        return "splash"
    if backend == "gpu":
        cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
        return "cudnn" if cudnn_ok else "dense"
    return "xla"
