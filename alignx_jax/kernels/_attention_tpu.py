"""TPU attention: splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`).

Plain causal rows use splash's static `CausalMask` (its block sparsity fixed at trace time).

Packed rows cannot be said with splash's segment ids: they are compared for equality only, and a
shared prefix must be visible to two branches that must not see each other, so no one id per token
can express it. They go through splash's *dynamic* mask instead: the mask of each row is built on
device from the structure (`_attention_mask.tile_mask` over the row, [T, T] bool), and splash turns
it into per-block metadata at run time (`process_dynamic_mask`): empty blocks (other pairs, a
rejected block against its chosen sibling) are skipped, full blocks run without a mask, partial
ones read their [bq, bk] slice. The cost is that [T, T] bool mask per row and per pass (forward,
dkv; the fused backward needs no dq copy): 64 MiB each at T = 8192, temporary.

Splash divides by the row's softmax sum even when a query sees nothing, so padding queries are
given their own key (the diagonal): their output is their own value (finite garbage), and since
padding keys are seen by padding queries only, real tokens are unaffected.

T is padded to a multiple of the block size. Untested on a TPU here: `interpret=True` runs the same
kernels on CPU and tests cross-lower them for TPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from alignx_jax.kernels import _attention_mask as masks


def _block_sizes(block_q: int, block_k: int) -> splash.BlockSizes:
    return splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k, block_q_dkv=block_q,
                             block_kv_dkv=block_k, block_kv_dkv_compute=block_k, use_fused_bwd_kernel=True)


def _concrete_dynamic_flag(kernel):
    """Work around splash (jax 0.10) under jit: `make_splash_mha` turns the MaskInfos' Python flag
    `is_dynamic_mask` into a jnp array, a tracer inside jit, which `__call__` then tests with `if`.
    The flag is metadata that nothing inside the kernel reads; make it a concrete numpy bool again."""
    fix = lambda info: None if info is None else info._replace(is_dynamic_mask=np.bool_(True))  # noqa: E731
    kernel.fwd_mask_info, kernel.dq_mask_info, kernel.dkv_mask_info = (
        fix(kernel.fwd_mask_info), fix(kernel.dq_mask_info), fix(kernel.dkv_mask_info))
    return kernel


def row_mask(seg, role, start, pos):
    """bool [T, T] of one row (the packed rule), padding queries seeing themselves."""
    mask = masks.full_mask(seg[None], role[None], start[None], pos[None])[0]
    return mask | ((seg[:, None] == 0) & jnp.eye(seg.shape[0], dtype=bool))


def splash_attention(q, k, v, segment_ids, roles, positions, *, block_q: int = 512, block_k: int = 512,
                     interpret: bool = False):
    """Splash attention over packed rows (module docstring); same contract as `_attention_xla.attention`."""
    bsz, t, n, h = q.shape
    step = 128  # splash tiles are multiples of the 128 lanes
    tp = int(-(-t // step) * step)
    block_q, block_k = min(block_q, tp), min(block_k, tp)
    tp = int(-(-tp // np.lcm(block_q, block_k)) * np.lcm(block_q, block_k))
    pad = lambda x: jnp.pad(x, ((0, 0), (0, tp - t)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
    # Splash takes one row at a time, heads first: [N, T, H].
    heads_first = lambda x: pad(x.astype(q.dtype)).transpose(0, 2, 1, 3)  # noqa: E731
    qh, kh, vh = heads_first(q * (1.0 / np.sqrt(h)).astype(q.dtype)), heads_first(k), heads_first(v)
    sizes = _block_sizes(block_q, block_k)
    if segment_ids is None:
        mask = splash.MultiHeadMask([splash.CausalMask((tp, tp))])
        kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        out = jax.vmap(kernel)(qh, kh, vh)
    else:
        start = masks.branch_start(segment_ids, roles, positions)
        structure = tuple(pad(a.astype(jnp.int32)) for a in (segment_ids, roles, start, positions))

        def one_row(q, k, v, seg, role, start, pos):
            mask = row_mask(seg, role, start, pos)[None]  # one mask, broadcast over the heads
            kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                            interpret=interpret)
            return _concrete_dynamic_flag(kernel)(q, k, v)

        out = jax.vmap(one_row)(qh, kh, vh, *structure)
    return out.transpose(0, 2, 1, 3)[:, :t]


splash_attention_causal = functools.partial(splash_attention, segment_ids=None, roles=None, positions=None)
