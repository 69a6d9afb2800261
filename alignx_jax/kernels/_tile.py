"""Math of one (token block x vocab block) tile, shared by every fused implementation.

A tile holds the logits ``x @ w`` of ``bn`` tokens against ``bv`` vocabulary columns. The last
block of an axis that its block size does not divide is *shifted back* so that it ends at the
array's edge (``block_start``); its columns (rows) that the previous block already covered are
"stale" and masked out. That way no implementation ever pads or copies ``hidden`` or ``w``.
"""
import jax
import jax.numpy as jnp


def cdiv(a: int, b: int) -> int:
    """Number of blocks of size ``b`` that cover ``a`` elements."""
    return -(-a // b)


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    # jax >= 0.9 keeps them on `manual_axis_type.varying`; earlier releases on `vma`.
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", None) or getattr(aval, "vma", ()))


def match_vma(init, *operands):
    """Mark loop carries ``init`` as varying over the same mesh axes as ``operands``.

    Inside ``shard_map`` a loop's carry must keep its type; zeros created in the kernel are
    device-invariant while the values added to them vary with the shard.
    """
    axes = tuple(sorted(set().union(*(_varying_axes(x) for x in operands))))
    if not axes:
        return init
    return jax.tree.map(lambda x: jax.lax.pcast(x, axes, to="varying"), init)


def out_shape(shape, dtype, *operands) -> jax.ShapeDtypeStruct:
    """A Pallas call's output shape that varies over the mesh axes its operands vary on (inside
    `shard_map` with `check_vma`, a kernel's outputs must say so; elsewhere it is ignored)."""
    axes = frozenset().union(*(_varying_axes(x) for x in operands))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=axes))


def sum_to_match(cotangent, primal):
    """Sum ``cotangent`` over the mesh axes it varies on but ``primal`` does not.

    A kernel input replicated over an axis (``w`` over the data axis, ``hidden`` over the
    vocabulary axis) gets the sum of every shard's partial gradient, as autodiff would give it.
    """
    extra = tuple(sorted(_varying_axes(cotangent) - _varying_axes(primal)))
    return jax.lax.psum(cotangent, extra) if extra else cotangent


def block_start(index, block: int, size: int):
    """First element of block ``index``: ``min(index * block, size - block)`` (needs ``block <= size``)."""
    return jnp.minimum(index * block, size - block)


def _positions(start, block: int, axis: int):
    shape = (block, 1) if axis == 0 else (1, block)
    return start + jax.lax.broadcasted_iota(jnp.int32, shape, axis)


def fresh(index, block: int, size: int, axis: int):
    """bool [block, 1] (axis 0) or [1, block] (axis 1): the shifted block ``index`` covers new elements."""
    return _positions(block_start(index, block, size), block, axis) >= index * block


def in_bounds(index, block: int, size: int, axis: int):
    """Like ``fresh`` for plain (unshifted) blocks, whose last one may run past ``size``."""
    return _positions(index * block, block, axis) < size


def tile_logits(x, w_block):
    """``x [bn, D] @ w_block [D, bv]`` accumulated in float32."""
    return jax.lax.dot_general(x, w_block, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def label_hits(labels, col_start, block: int):
    """bool [bn, bv]: column ``col_start + c`` is the label of row ``t`` (an iota compare, no gather).

    ``labels`` is an int32 column [bn, 1].
    """
    return _positions(col_start, block, 1) == labels


def online_update(m, s, picked, logits, hits, cols_ok):
    """One step of the online log-sum-exp over vocabulary tiles, in float32.

    ``m`` [bn, 1] is the running row max, ``s`` the running ``sum(exp(logit - m))``, ``picked``
    the label logit found so far; columns where ``cols_ok`` [1, bv] is False take no part.
    """
    logits = jnp.where(cols_ok, logits, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(logits, axis=1, keepdims=True))
    s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new), axis=1, keepdims=True)
    picked = picked + jnp.sum(jnp.where(hits & cols_ok, logits, 0.0), axis=1, keepdims=True)
    return m_new, s, picked


def tile_dlogits(logits, hits, lse, g_label, g_lse, rows_ok):
    """d(loss)/d(logits) of a tile, float32 [bn, bv]; per-row inputs are columns [bn, 1].

    With ``label = logits[label]`` and ``lse = logsumexp(logits)`` per row,
    ``dlogits = g_lse * softmax(logits) + g_label * onehot(label)``; rows where ``rows_ok`` is
    False get 0 (``where``, so an overflowing ``exp`` of a masked row never leaks a NaN).
    """
    probs = jnp.exp(logits - lse)
    dlogits = g_lse * probs + jnp.where(hits, g_label, 0.0)
    return jnp.where(rows_ok, dlogits, 0.0)
