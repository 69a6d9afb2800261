"""Block-sparse flash attention in pure JAX (XLA): the CPU default and the reference of the kernels.

Layout: queries are regrouped once to [B, K, T, G, H] (K kv heads, G = N / K query heads per kv
head), so the G query heads that share a kv head are one matrix of bq * G rows against a key tile:
GQA reads each K/V tile once and never repeats K/V in memory. T is padded to a multiple of both
block sizes with padding tokens (segment 0), which nothing sees.

Block sparsity: per query block, the key blocks that may hold a visible pair
(``_attention_mask.block_visibility``) are compacted into a list, and the inner loop runs over that
list only (a ``while`` loop with a data-dependent trip count), so masked-out tiles cost nothing,
not even a branch. For plain causal rows the list is a compile-time constant.

Forward: online softmax in float32 per query block (running max ``m``, sum ``l``, accumulator), one
tile of scores alive at a time; saves ``o`` and ``lse = m + log l``. Backward (custom VJP): one pass
over the same tiles recomputes ``p = exp(s - lse)`` and accumulates ``dq`` per query block and
``dk``/``dv`` (float32) in place; 5 matmuls per tile against the forward's 2.

A query that sees nothing (padding) gets output 0 and no gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.kernels import _attention_mask as masks

_F32 = jnp.float32


def _dot(a, b, contract, batch=((0,), (0,))):
    return jax.lax.dot_general(a, b, (contract, batch), preferred_element_type=_F32)


def _qk(q, k):  # [K, M, H] x [K, bk, H] -> [K, M, bk]
    return _dot(q, k, ((2,), (2,)))


def _pv(p, v):  # [K, M, bk] x [K, bk, H] -> [K, M, H]
    return _dot(p, v, ((2,), (1,)))


def _ptd(p, d):  # [K, M, bk] x [K, M, H] -> [K, bk, H]
    # A dot contracting the left operand's major axis leaves XLA CPU's fast (YNNPACK) path, and XLA
    # folds a plain transpose back into the dot; on CPU the barrier keeps the transposed copy
    # (~1.6x faster per tile than the folded dot, measured at 384 x 128 x 64).
    p_t = jax.lax.platform_dependent(p, cpu=lambda p: jax.lax.optimization_barrier(jnp.swapaxes(p, 1, 2)),
                                     default=lambda p: jnp.swapaxes(p, 1, 2))
    return _dot(p_t, d, ((2,), (1,)))


class _Tiles:
    """Static tiling plus the per-token structure, padded; builds the mask of one tile."""

    def __init__(self, structure, *, length, block_q, block_k, groups):
        self.length, self.bq, self.bk, self.groups = length, block_q, block_k, groups
        self.structure = structure  # None (plain causal) or (seg, role, start, pos), int32 [B, Tp]

    def mask(self, b, qi, kj):
        """bool [1, bq * G, bk]: the tile's mask, repeated over the G query heads of a kv head."""
        bq, bk = self.bq, self.bk
        q_index = qi * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
        k_index = kj * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
        if self.structure is None:
            mask = masks.causal_tile_mask(q_index, k_index, self.length)
        else:
            seg, role, start, pos = self.structure
            q_cols = [jax.lax.dynamic_slice(a, (b, qi * bq), (1, bq)).reshape(bq, 1) for a in (seg, role, start)]
            k_rows = [jax.lax.dynamic_slice(a, (b, kj * bk), (1, bk)) for a in (seg, role, pos)]
            mask = masks.tile_mask(q_index, *q_cols, k_index, *k_rows)
        return jnp.broadcast_to(mask[:, None, :], (bq, self.groups, bk)).reshape(1, bq * self.groups, bk)


def _q_block(x, b, qi, bq):
    """Rows of query block qi of batch b: [B, K, Tp, G, H] -> [K, bq * G, H]."""
    _, k, _, g, h = x.shape
    return jax.lax.dynamic_slice(x, (b, 0, qi * bq, 0, 0), (1, k, bq, g, h)).reshape(k, bq * g, h)


def _kv_block(x, b, kj, bk):
    _, k, _, h = x.shape
    return jax.lax.dynamic_slice(x, (b, 0, kj * bk, 0), (1, k, bk, h))[0]


def _rows(x, b, qi, bq):
    """Per-row statistics [B, K, Tp, G] of query block qi -> [K, bq * G]."""
    _, k, _, g = x.shape
    return jax.lax.dynamic_slice(x, (b, 0, qi * bq, 0), (1, k, bq, g)).reshape(k, bq * g)


def _forward(q, k, v, order, count, tiles: _Tiles, scale: float):
    bsz, kh, tp, g, h = q.shape
    bq, bk, nq = tiles.bq, tiles.bk, tp // tiles.bq

    def query_block(u, carry):
        out, lse = carry
        b, qi = u // nq, u % nq
        qt = _q_block(q, b, qi, bq)

        def key_block(j, inner):
            m, l, acc = inner
            kj = order[b, qi, j]
            s = _qk(qt, _kv_block(k, b, kj, bk)) * scale
            s = jnp.where(tiles.mask(b, qi, kj), s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with nothing visible yet
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m - m_safe)
            acc = alpha[..., None] * acc + _pv(p.astype(v.dtype), _kv_block(v, b, kj, bk))
            return m_new, alpha * l + p.sum(-1), acc

        rows = jnp.zeros((kh, bq * g), _F32)
        m, l, acc = jax.lax.fori_loop(0, count[b, qi], key_block, (rows - jnp.inf, rows, jnp.zeros((kh, bq * g, h), _F32)))
        seen = l > 0
        o_block = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse_block = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
        out = jax.lax.dynamic_update_slice(out, o_block.astype(out.dtype).reshape(1, kh, bq, g, h), (b, 0, qi * bq, 0, 0))
        lse = jax.lax.dynamic_update_slice(lse, lse_block.reshape(1, kh, bq, g), (b, 0, qi * bq, 0))
        return out, lse

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros(q.shape[:-1], _F32))
    return jax.lax.fori_loop(0, bsz * nq, query_block, init)


def _backward(q, k, v, out, lse, d_out, order, count, tiles: _Tiles, scale: float):
    bsz, kh, tp, g, h = q.shape
    bq, bk, nq = tiles.bq, tiles.bk, tp // tiles.bq
    delta = jnp.sum(d_out.astype(_F32) * out.astype(_F32), axis=-1)  # [B, K, Tp, G]

    def query_block(u, carry):
        dq, dk, dv = carry
        b, qi = u // nq, u % nq
        qt, dot = _q_block(q, b, qi, bq), _q_block(d_out, b, qi, bq)
        lse_t, delta_t = _rows(lse, b, qi, bq)[..., None], _rows(delta, b, qi, bq)[..., None]

        def key_block(j, inner):
            dq_t, dk, dv = inner
            kj = order[b, qi, j]
            kt, vt = _kv_block(k, b, kj, bk), _kv_block(v, b, kj, bk)
            s = _qk(qt, kt) * scale
            p = jnp.exp(jnp.where(tiles.mask(b, qi, kj), s - lse_t, -jnp.inf))
            dp = _qk(dot, vt)
            ds = (p * (dp - delta_t)).astype(q.dtype)
            dq_t = dq_t + _pv(ds, kt)
            start = (b, 0, kj * bk, 0)
            dv_t = jax.lax.dynamic_slice(dv, start, (1, kh, bk, h)) + _ptd(p.astype(q.dtype), dot)[None]
            dk_t = jax.lax.dynamic_slice(dk, start, (1, kh, bk, h)) + _ptd(ds, qt)[None]
            return dq_t, jax.lax.dynamic_update_slice(dk, dk_t, start), jax.lax.dynamic_update_slice(dv, dv_t, start)

        dq_t, dk, dv = jax.lax.fori_loop(0, count[b, qi], key_block, (jnp.zeros((kh, bq * g, h), _F32), dk, dv))
        dq = jax.lax.dynamic_update_slice(dq, (dq_t * scale).astype(dq.dtype).reshape(1, kh, bq, g, h),
                                          (b, 0, qi * bq, 0, 0))
        return dq, dk, dv

    kv_zeros = jnp.zeros(k.shape, _F32)
    dq, dk, dv = jax.lax.fori_loop(0, bsz * nq, query_block, (jnp.zeros(q.shape, q.dtype), kv_zeros, kv_zeros))
    return dq, (dk * scale).astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q, k, v, structure, order, count, static, scale):
    return _forward(q, k, v, order, count, _tiles(structure, static), scale)[0]


def _tiles(structure, static):
    length, block_q, block_k, groups = static
    return _Tiles(structure, length=length, block_q=block_q, block_k=block_k, groups=groups)


def _flash_fwd(q, k, v, structure, order, count, static, scale):
    out, lse = _forward(q, k, v, order, count, _tiles(structure, static), scale)
    return out, (q, k, v, structure, order, count, out, lse)


def _flash_bwd(static, scale, residuals, d_out):
    q, k, v, structure, order, count, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, out, lse, d_out, order, count, _tiles(structure, static), scale)
    no_grad = jax.tree.map(lambda _: None, (structure, order, count))
    return (dq, dk, dv, *no_grad)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _padded_length(t: int, block_q: int, block_k: int) -> int:
    step = np.lcm(block_q, block_k)
    return int(-(-t // step) * step)


def attention(q, k, v, segment_ids, roles, positions, *, block_q: int = 128, block_k: int = 128):
    """Block-sparse flash attention; ``segment_ids is None`` means plain causal rows.

    q [B, T, N, H]; k, v [B, T, K, H]; structure int32 [B, T] (``_attention_mask``'s rule).
    Returns [B, T, N, H] in q's dtype.
    """
    bsz, t, n, h = q.shape
    kh = k.shape[2]
    g = n // kh
    block_q, block_k = min(block_q, t), min(block_k, t)
    tp = _padded_length(t, block_q, block_k)
    pad = ((0, 0), (0, 0), (0, tp - t))
    qh = jnp.pad(q.reshape(bsz, t, kh, g, h).transpose(0, 2, 1, 3, 4), pad + ((0, 0), (0, 0)))
    kh_, vh = (jnp.pad(x.astype(q.dtype).transpose(0, 2, 1, 3), pad + ((0, 0),)) for x in (k, v))
    nq, nk = tp // block_q, tp // block_k
    if segment_ids is None:
        order, count = masks.compact(masks.causal_visibility(t, block_q=block_q, block_k=block_k, padded=tp))
        order, count = np.broadcast_to(order, (bsz, nq, nk)), np.broadcast_to(count, (bsz, nq))
        structure = None
    else:
        start = masks.branch_start(segment_ids, roles, positions)
        seg, role, start, pos = (jnp.pad(a.astype(jnp.int32), ((0, 0), (0, tp - t))) for a in
                                 (segment_ids, roles, start, positions))
        order, count = masks.compact(masks.block_visibility(seg, role, block_q=block_q, block_k=block_k))
        structure = (seg, role, start, pos)
    out = _flash(qh, kh_, vh, structure, jnp.asarray(order), jnp.asarray(count), (t, block_q, block_k, g),
                 float(1.0 / np.sqrt(h)))
    return out[:, :, :t].transpose(0, 2, 1, 3, 4).reshape(bsz, t, n, h)
