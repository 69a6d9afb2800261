"""Pallas TPU (Mosaic) kernels: a 2-D grid of tiles with the reduction axis last.

Each pass is a grid over (owner blocks, reduced blocks). The reduced axis is "arbitrary"
(sequential), so the owner's accumulator stays in VMEM scratch across it and is written once:
forward (token block, vocab block) with an online log-sum-exp, ``dx`` (token block, vocab block),
``dw`` (vocab block, token block). Blocks hold the full D. A last block that runs past N or V
reads padding, so masks test every row and column against the edge, and the padding is zeroed
before it can enter a matmul (0 * garbage could be NaN).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from alignx_jax.kernels import _tile

MIB = 2**20
# VMEM per TensorCore by device kind (jax's pallas tpu_info); a megacore device runs a kernel on one core.
VMEM_BYTES = {"TPU v4": 16 * MIB, "TPU v5 lite": 128 * MIB, "TPU v5e": 128 * MIB, "TPU v5": 64 * MIB,
              "TPU v5p": 64 * MIB, "TPU v6 lite": 128 * MIB, "TPU v6e": 128 * MIB}
_DEFAULT_VMEM = 16 * MIB  # an unknown chip: the smallest
# Tiles to try, largest first: bn a multiple of 8 sublanes and bv of 128 lanes.
_TILES = ((512, 1024), (256, 1024), (256, 512), (128, 512), (128, 256), (64, 256), (32, 128), (8, 128))


def device_vmem_bytes() -> int:
    """VMEM of the chip the kernel is compiled for: the mesh in effect (`jax.set_mesh`, e.g. a TPU
    topology's abstract devices compiled on a CPU machine), else the default device."""
    try:
        mesh = jax.sharding.get_mesh()
        device = mesh.devices.flat[0] if mesh is not None and not mesh.empty else jax.devices()[0]
    except Exception:  # no concrete mesh in effect
        device = jax.devices()[0]
    return VMEM_BYTES.get(device.device_kind, _DEFAULT_VMEM)


def tile_vmem_bytes(bn: int, bv: int, d: int, itemsize: int) -> int:
    """VMEM that the largest of the three kernels (``dw``) holds at tile (bn, bv): its inputs double-
    buffered, the fp32 [D, bv] accumulator, its double-buffered output block, and fp32 [bn, bv]
    logits with their exp and dlogits."""
    inputs = 2 * (bn * d + d * bv) * itemsize + 2 * 6 * bn * 4
    return inputs + d * bv * 4 + 2 * d * bv * itemsize + 3 * bn * bv * 4


def choose_tiles(d: int, itemsize: int, vmem: int, n: int | None = None, v: int | None = None) -> tuple[int, int]:
    """The largest tile of `_TILES` whose kernels fit 60% of `vmem` (the rest: Mosaic's own scratch)."""
    for bn, bv in _TILES:
        if tile_vmem_bytes(bn, bv, d, itemsize) <= 0.6 * vmem:
            return bn, bv
    return _TILES[-1]


def _params(vmem_needed: int):
    # Mosaic's default scoped VMEM limit (16-32 MiB) is below what D = 4096 tiles need; raise it to
    # what the tiles need plus headroom, within the chip.
    limit = int(min(max(vmem_needed * 1.5, 32 * MIB), 0.9 * device_vmem_bytes()))
    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=limit)


def _column(x, dtype=None):
    return (x if dtype is None else x.astype(dtype))[:, None]


def _row_specs(block_rows, owner_is_rows: bool, count: int):
    index = (lambda i, j: (i, 0)) if owner_is_rows else (lambda j, i: (i, 0))
    return [pl.BlockSpec((block_rows, 1), index) for _ in range(count)]


def _forward_kernel(x_ref, w_ref, labels_ref, picked_ref, lse_ref, m_sc, s_sc, picked_sc, *, n, v, bn, bv):
    del n  # rows past N are computed on padding and dropped by the masked write
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        s_sc[...] = jnp.zeros(s_sc.shape, jnp.float32)
        picked_sc[...] = jnp.zeros(picked_sc.shape, jnp.float32)

    cols_ok = _tile.in_bounds(j, bv, v, axis=1)
    logits = _tile.tile_logits(x_ref[...], jnp.where(cols_ok, w_ref[...], 0))
    hits = _tile.label_hits(labels_ref[...], j * bv, bv)
    m, s, picked = _tile.online_update(m_sc[...], s_sc[...], picked_sc[...], logits, hits, cols_ok)
    m_sc[...], s_sc[...], picked_sc[...] = m, s, picked

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        picked_ref[...] = picked
        lse_ref[...] = m + jnp.log(s)


def forward_stats(hidden, w, labels, valid, *, block_tokens: int, block_vocab: int, interpret: bool = False):
    """Label logit and lse per token, float32 [N] each (see ``_xla.forward_stats``)."""
    del valid
    (n, d), v = hidden.shape, w.shape[1]
    bn, bv = min(block_tokens, n), min(block_vocab, v)
    kernel = functools.partial(_forward_kernel, n=n, v=v, bn=bn, bv=bv)
    column = _tile.out_shape((n, 1), jnp.float32, hidden, w, labels)
    size = hidden.dtype.itemsize
    cost = pl.CostEstimate(flops=2 * n * d * v, transcendentals=n * v,
                           bytes_accessed=n * d * size + d * v * size * _tile.cdiv(n, bn) + 3 * n * 4)
    picked, lse = pl.pallas_call(
        kernel,
        grid=(_tile.cdiv(n, bn), _tile.cdiv(v, bv)),
        in_specs=[
            pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, bv), lambda i, j: (0, j)),
            *_row_specs(bn, True, 1),
        ],
        out_specs=_row_specs(bn, True, 2),
        out_shape=[column, column],
        scratch_shapes=[pltpu.VMEM((bn, 1), jnp.float32) for _ in range(3)],
        compiler_params=_params(tile_vmem_bytes(bn, bv, d, size)),
        cost_estimate=cost,
        interpret=interpret,
    )(hidden, w, _column(labels))
    return picked[:, 0], lse[:, 0]


def _dlogits(x_ref, w_ref, labels_ref, valid_ref, lse_ref, g_label_ref, g_lse_ref, i, j, *, n, v, bn, bv):
    """Recompute a tile; returns (x, w block, dlogits) with padding rows and columns zeroed."""
    rows_ok = _tile.in_bounds(i, bn, n, axis=0)
    cols_ok = _tile.in_bounds(j, bv, v, axis=1)
    x = jnp.where(rows_ok, x_ref[...], 0)
    w_block = jnp.where(cols_ok, w_ref[...], 0)
    logits = _tile.tile_logits(x, w_block)
    hits = _tile.label_hits(labels_ref[...], j * bv, bv)
    ok = rows_ok & (valid_ref[...] > 0)
    dlogits = _tile.tile_dlogits(logits, hits, lse_ref[...], g_label_ref[...], g_lse_ref[...], ok)
    return x, w_block, jnp.where(cols_ok, dlogits, 0.0)


def _dx_kernel(x_ref, w_ref, *refs, n, v, bn, bv):
    *row_refs, dx_ref, acc = refs
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    _, w_block, dlogits = _dlogits(x_ref, w_ref, *row_refs, i, j, n=n, v=v, bn=bn, bv=bv)
    acc[...] += jax.lax.dot_general(
        dlogits.astype(w_block.dtype), w_block, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        dx_ref[...] = acc[...].astype(dx_ref.dtype)


def _dw_kernel(x_ref, w_ref, *refs, n, v, bn, bv):
    *row_refs, dw_ref, acc = refs
    j, i = pl.program_id(0), pl.program_id(1)

    @pl.when(i == 0)
    def _():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    x, _, dlogits = _dlogits(x_ref, w_ref, *row_refs, i, j, n=n, v=v, bn=bn, bv=bv)
    acc[...] += jax.lax.dot_general(
        x, dlogits.astype(x.dtype), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )

    @pl.when(i == pl.num_programs(1) - 1)
    def _():
        dw_ref[...] = acc[...].astype(dw_ref.dtype)


def backward_grads(hidden, w, labels, valid, lse, g_label, g_lse, *, block_tokens: int, block_vocab: int,
                   interpret: bool = False):
    """``(d hidden, d w)``: one kernel per gradient, each recomputing its tiles (see ``_tile.tile_dlogits``)."""
    (n, d), v = hidden.shape, w.shape[1]
    bn, bv = min(block_tokens, n), min(block_vocab, v)
    static = dict(n=n, v=v, bn=bn, bv=bv)
    row_inputs = (_column(labels), _column(valid, jnp.int32), _column(lse), _column(g_label), _column(g_lse))
    nt, nv = _tile.cdiv(n, bn), _tile.cdiv(v, bv)
    size = hidden.dtype.itemsize
    # Each backward kernel recomputes its tiles' logits (2 N D V) and takes one more product (2 N D V).
    cost = pl.CostEstimate(flops=4 * n * d * v, transcendentals=n * v,
                           bytes_accessed=n * d * size * nv + d * v * size * nt + 6 * n * 4)
    params = _params(tile_vmem_bytes(bn, bv, d, size))
    dx = pl.pallas_call(
        functools.partial(_dx_kernel, **static),
        grid=(nt, nv),
        in_specs=[
            pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, bv), lambda i, j: (0, j)),
            *_row_specs(bn, True, len(row_inputs)),
        ],
        out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
        out_shape=_tile.out_shape(hidden.shape, hidden.dtype, hidden, w, *row_inputs),
        scratch_shapes=[pltpu.VMEM((bn, d), jnp.float32)],
        compiler_params=params,
        cost_estimate=cost,
        interpret=interpret,
    )(hidden, w, *row_inputs)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **static),
        grid=(nv, nt),
        in_specs=[
            pl.BlockSpec((bn, d), lambda j, i: (i, 0)),
            pl.BlockSpec((d, bv), lambda j, i: (0, j)),
            *_row_specs(bn, False, len(row_inputs)),
        ],
        out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
        out_shape=_tile.out_shape(w.shape, w.dtype, hidden, w, *row_inputs),
        scratch_shapes=[pltpu.VMEM((d, bv), jnp.float32)],
        compiler_params=params,
        cost_estimate=cost,
        interpret=interpret,
    )(hidden, w, *row_inputs)
    return dx, dw
