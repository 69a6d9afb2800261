"""The packed-rows mask as structure: per-token arrays, per-tile masks and per-block visibility.

Every attention implementation computes its mask from the same three per-token arrays, never
from a dense [B, T, T] mask:

  seg    int32 [B, T]  segment id, 0 = padding
  role   int32 [B, T]  1 = shared prefix, >= 2 a branch (0 on padding)
  start  int32 [B, T]  the branch start: smallest position of the token's own (segment, role) block

and a token's position ``pos`` [B, T]. Query i may attend key j (indices in the row) when

  seg[i] == seg[j] > 0  and  j <= i  and  (role[i] == role[j] or (role[j] == 1 and pos[j] < start[i]))

(``_attention``'s module docstring states the rule; ``packed_mask`` there is its dense reference).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PREFIX_ROLE = 1


def branch_start(segment_ids, roles, positions):
    """int32 [B, T]: the smallest position among the tokens of each token's (segment, role) block.

    O(T log T): sort each row by (segment, role, position); the first token of every run of equal
    (segment, role) holds the run's minimum, which is spread over the run and scattered back.
    """
    b, t = segment_ids.shape
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    seg_s, role_s, pos_s, index_s = jax.lax.sort((segment_ids, roles, positions, index), dimension=1, num_keys=3)
    new_run = jnp.concatenate(
        [jnp.ones((b, 1), bool), (seg_s[:, 1:] != seg_s[:, :-1]) | (role_s[:, 1:] != role_s[:, :-1])], axis=1)
    run_first = jax.lax.cummax(jnp.where(new_run, index, 0), axis=1)
    start_s = jnp.take_along_axis(pos_s, run_first, axis=1)
    rows = jnp.arange(b)[:, None]
    return jnp.zeros((b, t), jnp.int32).at[rows, index_s].set(start_s.astype(jnp.int32))


def tile_mask(q_index, q_seg, q_role, q_start, k_index, k_seg, k_role, k_pos):
    """bool [..., bq, bk] from query columns [..., bq, 1] and key rows [..., 1, bk] (the module's rule)."""
    same_segment = (q_seg == k_seg) & (q_seg > 0)
    reachable = (q_role == k_role) | ((k_role == PREFIX_ROLE) & (k_pos < q_start))
    return same_segment & (k_index <= q_index) & reachable


def full_mask(seg, role, start, pos):
    """bool [B, T, T] (query, key) of whole rows: the tile mask with one tile per row."""
    index = jnp.arange(seg.shape[1], dtype=jnp.int32)[None]
    col, row = (lambda a: a[:, :, None]), (lambda a: a[:, None, :])  # noqa: E731
    return tile_mask(col(index), col(seg), col(role), col(start), row(index), row(seg), row(role), row(pos))


def causal_tile_mask(q_index, k_index, length: int):
    """The plain causal rule (one segment, every token in the prefix role) on a row of ``length``."""
    return (k_index <= q_index) & (k_index < length)


def _role_bits(role, seg):
    """int32 bit set of the roles present (role mod 31; padding tokens contribute nothing)."""
    return jnp.where(seg > 0, jnp.left_shift(1, jnp.remainder(role, 31)), 0).astype(jnp.int32)


def _block_or(x, size):
    b, t = x.shape
    return jax.lax.reduce(x.reshape(b, t // size, size), np.int32(0), jax.lax.bitwise_or, (2,))


def block_visibility(seg, role, *, block_q: int, block_k: int):
    """bool [B, T / block_q, T / block_k]: may the query block see anything of the key block?

    Conservative (True whenever some pair in the tile is visible, for any input), and exact on the
    layouts of ``alignx_jax.data``: a tile is skipped when it lies above the diagonal, when the
    blocks share no segment, or when no role of the query block can reach a role of the key block
    (a rejected block never reads its chosen sibling). T must be a multiple of both block sizes.
    """
    b, t = seg.shape
    nq, nk = t // block_q, t // block_k
    big = np.int32(np.iinfo(np.int32).max)
    live = seg > 0
    seg_lo = jnp.where(live, seg, big)
    q_lo = seg_lo.reshape(b, nq, block_q).min(-1)
    q_hi = seg.reshape(b, nq, block_q).max(-1)
    k_lo = seg_lo.reshape(b, nk, block_k).min(-1)
    k_hi = seg.reshape(b, nk, block_k).max(-1)
    share_segment = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
    bits = _role_bits(role, seg)
    q_bits, k_bits = _block_or(bits, block_q), _block_or(bits, block_k)
    q_branch = ((role != PREFIX_ROLE) & live).reshape(b, nq, block_q).any(-1)
    k_prefix = ((role == PREFIX_ROLE) & live).reshape(b, nk, block_k).any(-1)
    reach = ((q_bits[:, :, None] & k_bits[:, None, :]) != 0) | (q_branch[:, :, None] & k_prefix[:, None, :])
    q_last = jnp.arange(nq) * block_q + block_q - 1
    k_first = jnp.arange(nk) * block_k
    below_diagonal = k_first[None, :] <= q_last[:, None]
    return share_segment & reach & below_diagonal[None]


def causal_visibility(length: int, *, block_q: int, block_k: int, padded: int) -> np.ndarray:
    """bool [T / block_q, T / block_k] (numpy, static) of the plain causal rule on a padded row."""
    q_first = np.arange(padded // block_q) * block_q
    k_first = np.arange(padded // block_k) * block_k
    # Query blocks made only of padding read nothing: their rows are sliced off.
    return ((k_first[None, :] <= q_first[:, None] + block_q - 1) & (q_first[:, None] < length)
            & (k_first[None, :] < length))


def compact(visible):
    """(order, count): per query block, the visible key blocks first in increasing order.

    visible [..., nq, nk] bool -> order int32 [..., nq, nk], count int32 [..., nq]. Works on numpy
    (static structure) and jax arrays.
    """
    xp = np if isinstance(visible, np.ndarray) else jnp
    order = xp.argsort(~visible, axis=-1, stable=True).astype(np.int32)
    return order, visible.sum(-1).astype(np.int32)
