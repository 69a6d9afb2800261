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

PREFIX_ROLE = 1
ATTENTION_IMPLS = ("auto", "xla", "dense")


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


def attention(q: chex.Array, k: chex.Array, v: chex.Array, *, segment_ids: chex.Array, roles: chex.Array,
              positions: chex.Array, impl: str = "auto") -> chex.Array:
    """softmax(q k^T / sqrt(H) + mask) v over packed rows, grouped-query.

    Args:
      q: [B, T, N, H]; k, v: [B, T, K, H] with N a multiple of K (GQA: query head n reads kv head
        n // (N / K)).
      segment_ids, roles, positions: int32 [B, T], the mask structure (module docstring).
      impl: "auto" | "xla" | "dense" ("dense": build the [B, T, T] mask, the reference).

    Returns:
      [B, T, N, H] in q's dtype. A query that attends nothing (padding) gives finite garbage.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: impl={impl!r} is not one of {ATTENTION_IMPLS}")
    chex.assert_rank([q, k, v], 4)
    chex.assert_equal_shape([k, v])
    chex.assert_shape([segment_ids, roles, positions], q.shape[:2])
    mask = packed_mask(segment_ids, roles, positions)
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None])
