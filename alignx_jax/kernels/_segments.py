"""Per-response sums of per-token values, outside the kernel so every loss shares one kernel."""
import chex
import jax
import jax.numpy as jnp


def segment_sum(values: chex.Array, segment_ids: chex.Array, num_segments: int) -> chex.Array:
    """``out[s] = sum_{t : segment_ids[t] == s} values[t]`` for ``s`` in [0, num_segments).

    Tokens whose id is outside [0, num_segments) (e.g. -1 for prompt or padding) are dropped.
    For a packed batch, give each (row, response) its own id, e.g. ``row * responses_per_row + k``.

    Args:
      values: float [N] per-token values (log-probs, or ``valid`` as float to count tokens).
      segment_ids: int [N].
      num_segments: static number of segments.

    Returns:
      [num_segments], ``values``' dtype.
    """
    if values.ndim != 1 or values.shape != segment_ids.shape:
        raise ValueError(f"segment_sum: values {values.shape} and segment_ids {segment_ids.shape} must be equal 1-D shapes")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise TypeError(f"segment_sum: segment_ids must be integers, got {segment_ids.dtype}")
    if not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"segment_sum: num_segments={num_segments!r} must be a positive int")
    return jax.ops.segment_sum(values, segment_ids, num_segments=num_segments)
