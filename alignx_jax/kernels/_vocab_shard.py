"""Combine per-shard statistics when the vocabulary is split over a mesh axis."""
import jax
import jax.numpy as jnp


def local_labels(labels, vocab_per_shard: int, axis_name):
    """Global label ids -> ids of this shard's columns (out of [0, vocab_per_shard) when elsewhere).

    A label outside the shard matches no column of the iota compare, so the shard contributes 0
    to the label logit.
    """
    return labels - jax.lax.axis_index(axis_name) * vocab_per_shard


def combine(picked, lse, axis_name):
    """Global ``(label logit, lse)`` from each shard's partial ones.

    ``lse = m + log(sum_shards exp(lse_shard - m))`` with ``m = max_shards lse_shard``; ``m`` only
    keeps the exponentials in range and cancels exactly, so it carries no gradient. The label
    logit lives on exactly one shard (0 elsewhere), so a sum finds it.
    """
    m = jax.lax.pmax(jax.lax.stop_gradient(lse), axis_name)
    total = m + jnp.log(jax.lax.psum(jnp.exp(lse - m), axis_name))
    return jax.lax.psum(picked, axis_name), total
