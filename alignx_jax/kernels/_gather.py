"""Pick the scored (response) tokens out of a packed batch into a static, bucketed length.

The LM head runs only on these: the persona prompt, often most of a row, needs no logits.
"""
import bisect
from typing import NamedTuple

import chex
import jax.numpy as jnp


class ScoredTokens(NamedTuple):
    """Flat positions of the scored tokens, padded to a static length.

    ``index``: int32 [L], positions into the flattened [B * T] batch (padding points at 0);
    ``valid``: bool [L], False on padding; ``count``: int32 [], how many tokens the mask held
    (more than L means some were dropped: pick ``L`` with ``bucket_length`` on the host).
    """

    index: chex.Array
    valid: chex.Array
    count: chex.Array


def bucket_length(count: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket that holds ``count`` tokens (host side; one compiled shape per bucket)."""
    if list(buckets) != sorted(buckets) or not buckets:
        raise ValueError(f"bucket_length: buckets {buckets} must be non-empty and ascending")
    i = bisect.bisect_left(buckets, count)
    if i == len(buckets):
        raise ValueError(f"bucket_length: {count} scored tokens exceed the largest bucket {buckets[-1]}")
    return buckets[i]


def gather_scored_tokens(mask: chex.Array, length: int) -> ScoredTokens:
    """Positions where ``mask`` [B, T] (or [N]) is True, in order, padded to ``length``.

    Use: ``h = hidden.reshape(-1, D)[s.index]``, ``y = labels.reshape(-1)[s.index]``, then
    ``token_logprobs(h, w, y, s.valid)``; the gather's gradient scatters back into ``hidden``.
    """
    if mask.dtype != jnp.bool_:
        raise TypeError(f"gather_scored_tokens: mask must be bool, got {mask.dtype}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"gather_scored_tokens: length={length!r} must be a positive int")
    flat = mask.reshape(-1)
    (index,) = jnp.nonzero(flat, size=length, fill_value=0)
    count = jnp.sum(flat, dtype=jnp.int32)
    valid = jnp.arange(length, dtype=jnp.int32) < count
    return ScoredTokens(index.astype(jnp.int32), valid, count)
