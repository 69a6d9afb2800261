"""``token_logprobs`` over a mesh whose vocabulary axis splits the LM head's columns."""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alignx_jax.kernels import _token_logprobs


def sharded_token_logprobs(hidden, w, labels, valid=None, *, mesh, vocab_axis: str, token_axis=None, **options):
    """``token_logprobs`` with ``w`` [D, V] split over ``vocab_axis`` (columns) of ``mesh``.

    Each shard runs the fused kernel on its columns; the partial log-sum-exps are combined with
    one ``pmax`` and two ``psum`` of [N] floats, so neither logits nor ``w`` move between
    devices. ``token_axis`` optionally splits the tokens (e.g. the data axis). ``options`` go to
    ``token_logprobs``. V must divide evenly over ``vocab_axis``. The mesh axes must be of type
    ``AxisType.Auto`` (with explicit axes, ``jax.sharding.reshard`` the inputs first).
    """
    if vocab_axis not in mesh.axis_names:
        raise ValueError(f"sharded_token_logprobs: vocab_axis {vocab_axis!r} is not an axis of the mesh {mesh.axis_names}")
    shards = mesh.shape[vocab_axis]
    if w.shape[1] % shards:
        raise ValueError(f"sharded_token_logprobs: V={w.shape[1]} does not split evenly over {shards} '{vocab_axis}' shards")
    tokens = P(token_axis)

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(P(token_axis, None), P(None, vocab_axis), tokens, tokens),
        out_specs=(tokens, tokens),
    )
    def per_shard(hidden, w, labels, valid):
        return _token_logprobs.token_logprobs(hidden, w, labels, valid, vocab_axis=vocab_axis, **options)

    if valid is None:
        valid = jnp.ones(labels.shape, jnp.bool_)
    return per_shard(hidden, w, labels, valid)
