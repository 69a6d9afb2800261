"""GPU attention: cuDNN flash attention, and a Pallas-Triton block-sparse flash kernel.

cuDNN (`jax.nn.dot_product_attention(implementation="cudnn")`) takes a mask only as a dense bias (its
packed-sequence mode knows segments, not a prefix shared by two mutually invisible branches), so for
packed rows it reads a [B, 1, T, T] mask and skips only the causal upper triangle; plain causal rows
need no mask at all. It runs fp16/bf16 only.

The Triton kernel (`pallas_gpu`) computes the mask per tile from the structure and visits only the
tiles that may hold a visible pair, as the XLA version does (same lists, same tile math):

  forward  grid (query block, batch, query head): online softmax over the query block's key-block
           list; K/V are read through the kv head n // G (no copy per query head)
  dq       the same grid and loop, recomputing p = exp(s - lse)
  dk, dv   grid (key block, batch, kv head): loop over the query blocks that see the key block
           (the transposed lists) and the G query heads of the kv head, so dk/dv of a kv head are
           summed in registers without atomics

Block sizes and the head dim must be powers of two (Triton tensors), >= 16 for its dots; T is padded.
A query that sees nothing gets 0 and no gradient. Untested on a GPU here: `interpret=True` on CPU runs
the same kernels, and tests cross-lower them for CUDA.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from alignx_jax.kernels import _attention_mask as masks

_F32 = jnp.float32


def cudnn_attention(q, k, v, segment_ids, roles, positions):
    """cuDNN fused attention; packed rows as a dense mask (module docstring)."""
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if segment_ids is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    start = masks.branch_start(segment_ids, roles, positions)
    mask = masks.full_mask(segment_ids, roles, start, positions)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")


# HIGHEST: Triton would run float32 dots as TF32 by default (bf16 inputs are unaffected).
_dot = functools.partial(jax.lax.dot_general, preferred_element_type=_F32, precision=jax.lax.Precision.HIGHEST)


def _dot_nt(a, b):
    return _dot(a, b, (((1,), (1,)), ((), ())))


def _dot_nn(a, b):
    return _dot(a, b, (((1,), (0,)), ((), ())))


def _dot_tn(a, b):
    return _dot(a, b, (((0,), (0,)), ((), ())))


def _tile_mask(struct_refs, q0, k0, bq, bk, length):
    """bool [bq, bk] of the tile whose first query is q0 and first key k0."""
    q_index = q0 + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    k_index = k0 + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    if not struct_refs:
        return masks.causal_tile_mask(q_index, k_index, length)
    seg, role, start, pos = struct_refs
    column = lambda ref: ref[pl.ds(q0, bq)][:, None]  # noqa: E731
    row = lambda ref: ref[pl.ds(k0, bk)][None, :]  # noqa: E731
    return masks.tile_mask(q_index, column(seg), column(role), column(start), k_index, row(seg), row(role), row(pos))


def _scores(q, k, mask, scale):
    return jnp.where(mask, _dot_nt(q, k) * scale, -jnp.inf)


def _forward_kernel(q_ref, k_ref, v_ref, order_ref, count_ref, *refs, bq, bk, scale, length, structured):
    struct_refs, (o_ref, lse_ref) = (refs[:4] if structured else ()), refs[-2:]
    qi = pl.program_id(0)
    q = q_ref[...]

    def key_block(j, carry):
        m, l, acc = carry
        k0 = order_ref[j] * bk
        s = _scores(q, k_ref[pl.ds(k0, bk), :], _tile_mask(struct_refs, qi * bq, k0, bq, bk, length), scale)
        m_new = jnp.maximum(m, s.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[:, None])
        alpha = jnp.exp(m - m_safe)
        acc = alpha[:, None] * acc + _dot_nn(p.astype(v_ref.dtype), v_ref[pl.ds(k0, bk), :])
        return m_new, alpha * l + p.sum(axis=1), acc

    rows = jnp.zeros((bq,), _F32)
    m, l, acc = jax.lax.fori_loop(0, count_ref[qi], key_block, (rows - jnp.inf, rows, jnp.zeros(q.shape, _F32)))
    seen = l > 0
    safe_l = jnp.where(seen, l, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(safe_l), jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, order_ref, count_ref, *refs, bq, bk, scale, length,
               structured):
    struct_refs, dq_ref = (refs[:4] if structured else ()), refs[-1]
    qi = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]

    def key_block(j, dq):
        k0 = order_ref[j] * bk
        k, v = k_ref[pl.ds(k0, bk), :], v_ref[pl.ds(k0, bk), :]
        p = jnp.exp(_scores(q, k, _tile_mask(struct_refs, qi * bq, k0, bq, bk, length), scale) - lse)
        ds = p * (_dot_nt(do, v) - delta)
        return dq + _dot_nn(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, count_ref[qi], key_block, jnp.zeros(q.shape, _F32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, order_ref, count_ref, *refs, bq, bk, scale, length,
                structured, groups):
    struct_refs, (dk_ref, dv_ref) = (refs[:4] if structured else ()), refs[-2:]
    kj = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]

    def query_block(i, carry):
        dk, dv = carry
        q0 = order_ref[i] * bq
        mask = _tile_mask(struct_refs, q0, kj * bk, bq, bk, length)
        for g in range(groups):  # the query heads that read this kv head
            q, do = q_ref[pl.ds(q0, bq), g, :], do_ref[pl.ds(q0, bq), g, :]
            lse, delta = lse_ref[g, pl.ds(q0, bq)][:, None], delta_ref[g, pl.ds(q0, bq)][:, None]
            p = jnp.exp(_scores(q, k, mask, scale) - lse)
            ds = p * (_dot_nt(do, v) - delta)
            dv = dv + _dot_tn(p.astype(do.dtype), do)
            dk = dk + _dot_tn(ds.astype(q.dtype), q)
        return dk, dv

    zeros = jnp.zeros(k.shape, _F32)
    dk, dv = jax.lax.fori_loop(0, count_ref[kj], query_block, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)


class _Plan:
    """Static sizes of one call."""

    def __init__(self, q, k, length, block_q, block_k):
        self.b, self.tp, self.n, self.h = q.shape
        self.kv = k.shape[2]
        self.groups = self.n // self.kv
        self.length, self.bq, self.bk = length, block_q, block_k
        self.nq, self.nk = self.tp // block_q, self.tp // block_k
        self.scale = float(1.0 / np.sqrt(self.h))


def _struct_specs(plan, structured, index_map):
    return [pl.BlockSpec((None, plan.tp), index_map)] * (4 if structured else 0)


def _forward(plan, interpret, q, k, v, structure, order, count):
    structured = structure is not None
    g, bq = plan.groups, plan.bq
    kernel = functools.partial(_forward_kernel, bq=bq, bk=plan.bk, scale=plan.scale, length=plan.length,
                               structured=structured)
    row_block = pl.BlockSpec((None, bq, None, plan.h), lambda i, b, n: (b, i, n, 0))
    kv_full = pl.BlockSpec((None, plan.tp, None, plan.h), lambda i, b, n: (b, 0, n // g, 0))
    return pl.pallas_call(
        kernel,
        grid=(plan.nq, plan.b, plan.n),
        in_specs=[row_block, kv_full, kv_full,
                  pl.BlockSpec((None, None, plan.nk), lambda i, b, n: (b, i, 0)),
                  pl.BlockSpec((None, plan.nq), lambda i, b, n: (b, 0)),
                  *_struct_specs(plan, structured, lambda i, b, n: (b, 0))],
        out_specs=[row_block, pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((plan.b, plan.n, plan.tp), _F32)],
        compiler_params=_TRITON,
        interpret=interpret,
        name="packed_attention_forward",
    )(q, k, v, order, count, *(structure or ()))


def _backward(plan, interpret, q, k, v, structure, order, count, order_t, count_t, out, lse, d_out):
    structured = structure is not None
    g, bq, bk, h = plan.groups, plan.bq, plan.bk, plan.h
    delta = jnp.einsum("btnh,btnh->bnt", out.astype(_F32), d_out.astype(_F32))
    common = dict(bq=bq, bk=bk, scale=plan.scale, length=plan.length, structured=structured)
    row_block = pl.BlockSpec((None, bq, None, h), lambda i, b, n: (b, i, n, 0))
    kv_full = pl.BlockSpec((None, plan.tp, None, h), lambda i, b, n: (b, 0, n // g, 0))
    stat_block = pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **common),
        grid=(plan.nq, plan.b, plan.n),
        in_specs=[row_block, kv_full, kv_full, row_block, stat_block, stat_block,
                  pl.BlockSpec((None, None, plan.nk), lambda i, b, n: (b, i, 0)),
                  pl.BlockSpec((None, plan.nq), lambda i, b, n: (b, 0)),
                  *_struct_specs(plan, structured, lambda i, b, n: (b, 0))],
        out_specs=row_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_TRITON,
        interpret=interpret,
        name="packed_attention_dq",
    )(q, k, v, d_out, lse, delta, order, count, *(structure or ()))
    kv_block = pl.BlockSpec((None, bk, None, h), lambda j, b, c: (b, j, c, 0))
    group_full = pl.BlockSpec((None, plan.tp, g, h), lambda j, b, c: (b, 0, c, 0))
    group_stats = pl.BlockSpec((None, g, plan.tp), lambda j, b, c: (b, c, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, groups=g, **common),
        grid=(plan.nk, plan.b, plan.kv),
        in_specs=[group_full, kv_block, kv_block, group_full, group_stats, group_stats,
                  pl.BlockSpec((None, None, plan.nq), lambda j, b, c: (b, j, 0)),
                  pl.BlockSpec((None, plan.nk), lambda j, b, c: (b, 0)),
                  *_struct_specs(plan, structured, lambda j, b, c: (b, 0))],
        out_specs=[kv_block, kv_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
        compiler_params=_TRITON,
        interpret=interpret,
        name="packed_attention_dkv",
    )(q, k, v, d_out, lse, delta, order_t, count_t, *(structure or ()))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(plan, interpret, q, k, v, structure, order, count, order_t, count_t):
    return _forward(plan, interpret, q, k, v, structure, order, count)[0]


def _flash_fwd(plan, interpret, q, k, v, structure, order, count, order_t, count_t):
    out, lse = _forward(plan, interpret, q, k, v, structure, order, count)
    return out, (q, k, v, structure, order, count, order_t, count_t, out, lse)


def _flash_bwd(plan, interpret, residuals, d_out):
    q, k, v, structure, order, count, order_t, count_t, out, lse = residuals
    dq, dk, dv = _backward(plan, interpret, q, k, v, structure, order, count, order_t, count_t, out, lse, d_out)
    return (dq, dk, dv, *jax.tree.map(lambda _: None, (structure, order, count, order_t, count_t)))


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check_power_of_two(**sizes):
    for name, size in sizes.items():
        if size < 16 or size & (size - 1):
            raise ValueError(f"attention (pallas_gpu): {name}={size} must be a power of two >= 16 (Triton tensors)")


def pallas_attention(q, k, v, segment_ids, roles, positions, *, block_q: int = 64, block_k: int = 64,
                     interpret: bool = False):
    """Block-sparse flash attention as Pallas-Triton kernels (module docstring); same contract as
    `_attention_xla.attention`."""
    bsz, t, n, h = q.shape
    _check_power_of_two(block_q=block_q, block_k=block_k, head_dim=h)
    tp = int(-(-t // max(block_q, block_k)) * max(block_q, block_k))
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, tp - t)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
    if segment_ids is None:
        visible = np.broadcast_to(masks.causal_visibility(t, block_q=block_q, block_k=block_k, padded=tp),
                                  (bsz, tp // block_q, tp // block_k))
        structure = None
    else:
        start = masks.branch_start(segment_ids, roles, positions)
        structure = tuple(pad(a.astype(jnp.int32)) for a in (segment_ids, roles, start, positions))
        visible = masks.block_visibility(structure[0], structure[1], block_q=block_q, block_k=block_k)
    order, count = (jnp.asarray(a) for a in masks.compact(visible))
    order_t, count_t = (jnp.asarray(a) for a in masks.compact(visible.swapaxes(1, 2)))
    plan = _Plan(jax.ShapeDtypeStruct((bsz, tp, n, h), q.dtype), k, t, block_q, block_k)
    out = _flash(plan, interpret, pad(q), pad(k), pad(v), structure, order, count, order_t, count_t)
    return out[:, :t]
