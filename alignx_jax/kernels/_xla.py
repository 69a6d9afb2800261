"""Pure-JAX fused kernel: loops over (token block x vocab block) tiles, never [N, V] logits.

The fallback on every backend and the reference the Pallas kernels are checked against. Both
passes keep only one tile of logits alive; the forward carries an online log-sum-exp, the backward
recomputes each tile from ``hidden``, ``w`` and the saved ``lse``. Blocks that do not divide N or
V are shifted back to end at the edge (``_tile.block_start``), so nothing is padded or copied.
"""
import jax
import jax.numpy as jnp

from alignx_jax.kernels import _tile


def _rows(x, start, size):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def forward_stats(hidden, w, labels, valid, *, block_tokens: int, block_vocab: int):
    """Label logit and log-sum-exp per token, float32 [N] each (garbage-free for every row)."""
    del valid  # the caller zeroes masked rows; computing them costs nothing extra here
    n, v = hidden.shape[0], w.shape[1]
    bn, bv = min(block_tokens, n), min(block_vocab, v)
    label_column = labels[:, None]

    def token_block(i, outputs):
        r0 = _tile.block_start(i, bn, n)
        x, block_labels = _rows(hidden, r0, bn), _rows(label_column, r0, bn)

        def vocab_block(j, carry):
            c0 = _tile.block_start(j, bv, v)
            logits = _tile.tile_logits(x, jax.lax.dynamic_slice_in_dim(w, c0, bv, axis=1))
            hits = _tile.label_hits(block_labels, c0, bv)
            return _tile.online_update(*carry, logits, hits, _tile.fresh(j, bv, v, axis=1))

        column = jnp.zeros((bn, 1), jnp.float32)
        init = _tile.match_vma((column - jnp.inf, column, column), hidden, w, labels)
        m, s, picked = jax.lax.fori_loop(0, _tile.cdiv(v, bv), vocab_block, init)
        # A shifted last token block recomputes rows of the previous one exactly; overwriting is harmless.
        block_stats = jnp.concatenate([picked, m + jnp.log(s)], axis=1)
        return jax.lax.dynamic_update_slice_in_dim(outputs, block_stats, r0, axis=0)

    init = _tile.match_vma(jnp.zeros((n, 2), jnp.float32), hidden, w, labels)
    stats = jax.lax.fori_loop(0, _tile.cdiv(n, bn), token_block, init)
    return stats[:, 0], stats[:, 1]


def backward_grads(hidden, w, labels, valid, lse, g_label, g_lse, *, block_tokens: int, block_vocab: int):
    """``(d hidden, d w)`` from the cotangents of the label logit and the lse (see ``_tile.tile_dlogits``).

    Vocabulary blocks are the outer loop, so each ``dw`` block is complete after one sweep over the
    tokens and is written once in ``w``'s dtype; ``dx`` [N, D] is accumulated in float32.
    """
    n, d = hidden.shape
    v = w.shape[1]
    bn, bv = min(block_tokens, n), min(block_vocab, v)
    # One [N, 5] float32 table of per-row inputs: one dynamic slice per tile instead of five
    # (label ids stay exact in float32 below 2**24, far above any vocabulary).
    rows = jnp.stack(
        [labels.astype(jnp.float32), valid.astype(jnp.float32), lse, g_label, g_lse], axis=1
    )

    def vocab_block(j, carry):
        dx, dw = carry
        c0 = _tile.block_start(j, bv, v)
        w_block = jax.lax.dynamic_slice_in_dim(w, c0, bv, axis=1)
        fresh_cols = _tile.fresh(j, bv, v, axis=1)

        def token_block(i, inner):
            dx, dw_block = inner
            r0 = _tile.block_start(i, bn, n)
            x = _rows(hidden, r0, bn)
            block = _rows(rows, r0, bn)
            block_labels, block_valid, block_lse, block_g_label, block_g_lse = jnp.split(block, 5, axis=1)
            rows_ok = _tile.fresh(i, bn, n, axis=0) & (block_valid > 0)
            logits = _tile.tile_logits(x, w_block)
            hits = _tile.label_hits(block_labels.astype(jnp.int32), c0, bv)
            dlogits = _tile.tile_dlogits(logits, hits, block_lse, block_g_label, block_g_lse, rows_ok)
            # dw takes the stale columns too (the block is overwritten whole); dx must not count them twice.
            dw_block = dw_block + jax.lax.dot_general(
                x, dlogits.astype(x.dtype), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
            )
            dx_rows = jax.lax.dot_general(
                jnp.where(fresh_cols, dlogits, 0.0).astype(w.dtype),
                w_block,
                (((1,), (1,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            dx = jax.lax.dynamic_update_slice_in_dim(dx, _rows(dx, r0, bn) + dx_rows, r0, axis=0)
            return dx, dw_block

        dw_block = _tile.match_vma(jnp.zeros((d, bv), jnp.float32), hidden, w, rows)
        dx, dw_block = jax.lax.fori_loop(0, _tile.cdiv(n, bn), token_block, (dx, dw_block))
        dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_block.astype(dw.dtype), c0, axis=1)
        return dx, dw

    init = _tile.match_vma((jnp.zeros((n, d), jnp.float32), jnp.zeros(w.shape, w.dtype)), hidden, w, rows)
    dx, dw = jax.lax.fori_loop(0, _tile.cdiv(v, bv), vocab_block, init)
    return dx.astype(hidden.dtype), dw
