"""Pallas GPU (Triton) kernels: a 1-D grid over owner blocks, the other axis looped inside.

Triton programs run in no particular order, so each program owns its outputs outright and keeps
its accumulator in registers: the forward and ``dx`` programs own a token block and loop over the
vocabulary; the ``dw`` programs own a vocabulary block and loop over the tokens. As in the XLA
version, a last block that would run past N or V is shifted back to end at the edge
(``_tile.block_start``), so every load is in bounds and Triton's power-of-two shapes never meet
the odd sizes of real vocabularies (128256) or widths (576). D is handled in chunks of ``bd``
columns (a Python-unrolled list), so D needs only to be a multiple of 16.

Untested on a GPU here (CPU only, ``interpret=True``): the tile math is the XLA version's.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from alignx_jax.kernels import _tile


# Triton compiler parameters also select the Triton lowering (not Mosaic GPU) for pallas_call.
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)


KIB = 1024
# Shared memory per SM by compute capability (CUDA's figures); Triton keeps a program's tiles there.
SHARED_MEMORY_BYTES = {"9.0": 228 * KIB, "8.0": 164 * KIB, "8.7": 164 * KIB, "8.6": 100 * KIB, "8.9": 100 * KIB,
                       "7.5": 64 * KIB, "7.0": 96 * KIB}
_DEFAULT_SHARED = 48 * KIB


def shared_memory_bytes(device=None) -> int:
    """Shared memory per SM of a GPU (by its compute capability), 48 KiB when unknown."""
    device = device or jax.devices()[0]
    return SHARED_MEMORY_BYTES.get(str(getattr(device, "compute_capability", "")), _DEFAULT_SHARED)


def tile_shared_bytes(bn: int, bv: int, d: int, itemsize: int) -> int:
    """Shared memory of a program at tile (bn, bv): its [bn, D] hidden block and a [D, bv] LM-head block
    in the input dtype, and the fp32 [bn, bv] logits. Reproduces the measured request: 475,136 B at
    (64, 128), D = 576, fp32 on an H100 (RESOURCE_EXHAUSTED against its 232,448 B)."""
    return (bn * d + d * bv) * itemsize + bn * bv * 4


def choose_tiles(d: int, itemsize: int, shared: int) -> tuple[int, int] | None:
    """The largest power-of-two tile (bn <= 64, 16 <= bv <= 128, tl.dot's minimum 16) within 90% of
    `shared`; None when even (16, 16) does not fit (large D: use the XLA kernel)."""
    best = None
    for bn in (64, 32, 16):
        for bv in (128, 64, 32, 16):
            if tile_shared_bytes(bn, bv, d, itemsize) <= 0.9 * shared:
                if best is None or bn * bv > best[0] * best[1]:
                    best = (bn, bv)
    return best


def _pow2_at_most(size: int, cap: int) -> int:
    return 1 << (min(size, cap).bit_length() - 1)


def _d_chunk(d: int) -> int:
    """Largest power of two <= 64 dividing D."""
    return min(64, d & -d)


def _dot_nt(a, b):
    """``a [m, k] @ b [n, k].T`` in float32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):
    """``a [k, m].T @ b [k, n]`` in float32."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _logits(x_chunks, w_ref, c0, bv, bd):
    return sum(
        _tile.tile_logits(x, w_ref[pl.ds(k * bd, bd), pl.ds(c0, bv)]) for k, x in enumerate(x_chunks)
    )


def _forward_kernel(x_ref, w_ref, labels_ref, picked_ref, lse_ref, *, n, v, bn, bv, bd):
    r0 = _tile.block_start(pl.program_id(0), bn, n)
    x_chunks = [x_ref[pl.ds(r0, bn), pl.ds(k * bd, bd)] for k in range(x_ref.shape[1] // bd)]
    labels = labels_ref[pl.ds(r0, bn), :]

    def vocab_block(j, carry):
        c0 = _tile.block_start(j, bv, v)
        logits = _logits(x_chunks, w_ref, c0, bv, bd)
        return _tile.online_update(*carry, logits, _tile.label_hits(labels, c0, bv), _tile.fresh(j, bv, v, axis=1))

    column = jnp.zeros((bn, 1), jnp.float32)
    m, s, picked = jax.lax.fori_loop(0, _tile.cdiv(v, bv), vocab_block, (column - jnp.inf, column, column))
    # A shifted block rewrites rows of its neighbour with bit-identical values.
    picked_ref[pl.ds(r0, bn), :] = picked
    lse_ref[pl.ds(r0, bn), :] = m + jnp.log(s)


def _sizes(hidden, w, block_tokens, block_vocab):
    (n, d), v = hidden.shape, w.shape[1]
    return dict(n=n, v=v, bn=_pow2_at_most(n, block_tokens), bv=_pow2_at_most(v, block_vocab), bd=_d_chunk(d))


def forward_stats(hidden, w, labels, valid, *, block_tokens: int, block_vocab: int, interpret: bool = False):
    """Label logit and lse per token, float32 [N] each (see ``_xla.forward_stats``)."""
    del valid
    sizes = _sizes(hidden, w, block_tokens, block_vocab)
    column = _tile.out_shape((hidden.shape[0], 1), jnp.float32, hidden, w, labels)
    picked, lse = pl.pallas_call(
        functools.partial(_forward_kernel, **sizes),
        grid=(_tile.cdiv(sizes["n"], sizes["bn"]),),
        out_shape=[column, column],
        compiler_params=_TRITON,
        interpret=interpret,
    )(hidden, w, labels[:, None])
    return picked[:, 0], lse[:, 0]


def _tile_dlogits(x_chunks, w_ref, rows, c0, bv, bd, rows_ok):
    labels, valid, lse, g_label, g_lse = rows
    logits = _logits(x_chunks, w_ref, c0, bv, bd)
    hits = _tile.label_hits(labels, c0, bv)
    return _tile.tile_dlogits(logits, hits, lse, g_label, g_lse, rows_ok & (valid > 0))


def _row_inputs(row_refs, r0, bn):
    """(labels, valid, lse, g_label, g_lse) columns [bn, 1] of the rows from ``r0``."""
    return tuple(ref[pl.ds(r0, bn), :] for ref in row_refs)


def _dx_kernel(x_ref, w_ref, *refs, n, v, bn, bv, bd):
    *row_refs, dx_ref = refs
    r0 = _tile.block_start(pl.program_id(0), bn, n)
    chunks = x_ref.shape[1] // bd
    x_chunks = [x_ref[pl.ds(r0, bn), pl.ds(k * bd, bd)] for k in range(chunks)]
    rows = _row_inputs(row_refs, r0, bn)
    all_rows = jnp.ones((bn, 1), jnp.bool_)

    def vocab_block(j, acc):
        c0 = _tile.block_start(j, bv, v)
        dlogits = _tile_dlogits(x_chunks, w_ref, rows, c0, bv, bd, all_rows)
        # Stale columns were counted by the previous vocabulary block.
        dlogits = jnp.where(_tile.fresh(j, bv, v, axis=1), dlogits, 0.0).astype(w_ref.dtype)
        return tuple(a + _dot_nt(dlogits, w_ref[pl.ds(k * bd, bd), pl.ds(c0, bv)]) for k, a in enumerate(acc))

    acc = tuple(jnp.zeros((bn, bd), jnp.float32) for _ in range(chunks))
    acc = jax.lax.fori_loop(0, _tile.cdiv(v, bv), vocab_block, acc)
    for k, a in enumerate(acc):
        dx_ref[pl.ds(r0, bn), pl.ds(k * bd, bd)] = a.astype(dx_ref.dtype)


def _dw_kernel(x_ref, w_ref, *refs, n, v, bn, bv, bd):
    *row_refs, dw_ref = refs
    c0 = _tile.block_start(pl.program_id(0), bv, v)
    chunks = x_ref.shape[1] // bd

    def token_block(i, acc):
        r0 = _tile.block_start(i, bn, n)
        x_chunks = [x_ref[pl.ds(r0, bn), pl.ds(k * bd, bd)] for k in range(chunks)]
        # Stale rows were counted by the previous token block.
        dlogits = _tile_dlogits(x_chunks, w_ref, _row_inputs(row_refs, r0, bn), c0, bv, bd, _tile.fresh(i, bn, n, axis=0))
        dlogits = dlogits.astype(x_ref.dtype)
        return tuple(a + _dot_tn(x, dlogits) for a, x in zip(acc, x_chunks))

    acc = tuple(jnp.zeros((bd, bv), jnp.float32) for _ in range(chunks))
    acc = jax.lax.fori_loop(0, _tile.cdiv(n, bn), token_block, acc)
    for k, a in enumerate(acc):
        dw_ref[pl.ds(k * bd, bd), pl.ds(c0, bv)] = a.astype(dw_ref.dtype)


def backward_grads(hidden, w, labels, valid, lse, g_label, g_lse, *, block_tokens: int, block_vocab: int,
                   interpret: bool = False):
    """``(d hidden, d w)``: one kernel per gradient, each recomputing its tiles (see ``_tile.tile_dlogits``)."""
    sizes = _sizes(hidden, w, block_tokens, block_vocab)
    # Separate [N, 1] columns: Triton tensors must have power-of-two shapes, so no [N, 5] table.
    rows = (labels[:, None], valid.astype(jnp.int32)[:, None], lse[:, None], g_label[:, None], g_lse[:, None])
    dx = pl.pallas_call(
        functools.partial(_dx_kernel, **sizes),
        grid=(_tile.cdiv(sizes["n"], sizes["bn"]),),
        out_shape=_tile.out_shape(hidden.shape, hidden.dtype, hidden, w, *rows),
        compiler_params=_TRITON,
        interpret=interpret,
    )(hidden, w, *rows)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **sizes),
        grid=(_tile.cdiv(sizes["v"], sizes["bv"]),),
        out_shape=_tile.out_shape(w.shape, w.dtype, hidden, w, *rows),
        compiler_params=_TRITON,
        interpret=interpret,
    )(hidden, w, *rows)
    return dx, dw
