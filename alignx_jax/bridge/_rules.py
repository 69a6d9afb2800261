"""Preference distributions: the three classes per dimension, the official and golden rules as
one-hot distributions, the MAP profile, edits, and soft preference tokens.

A distribution is float32 [..., 90, 3] over the classes (negative, neutral, positive) of each
dimension, i.e. the direction values (0, 0.5, 1) of `preferences`.
"""
from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import preferences as prefs

NUM_CLASSES = 3
NEGATIVE, NEUTRAL, POSITIVE = 0, 1, 2  # class indices
CLASS_VALUES = (prefs.NEGATIVE, prefs.NEUTRAL, prefs.POSITIVE)  # direction value of each class


def _float32_bounds() -> tuple[np.float32, np.float32]:
    """float32 thresholds equivalent to the official float64 comparisons of a float32 mean m:
    m >= 0.6  <=>  m >= the smallest float32 >= 0.6;  m <= 0.4  <=>  m <= the largest float32 <= 0.4."""
    t = prefs.thresholds()
    positive, negative = np.float32(t.positive), np.float32(t.negative)
    if float(positive) < t.positive:
        positive = np.nextafter(positive, np.float32(np.inf))
    if float(negative) > t.negative:
        negative = np.nextafter(negative, np.float32(-np.inf))
    return positive, negative


def direction_classes(direction: chex.Array) -> chex.Array:
    """Class indices int32 [..., 90] of a direction whose values are 0 / 0.5 / 1 (others: neutral)."""
    direction = jnp.asarray(direction)
    return jnp.where(direction == prefs.POSITIVE, POSITIVE, jnp.where(direction == prefs.NEGATIVE, NEGATIVE, NEUTRAL)
                     ).astype(jnp.int32)


def direction_distribution(direction: chex.Array) -> chex.Array:
    """One-hot distribution [..., 90, 3] of a direction with values 0 / 0.5 / 1."""
    return jax.nn.one_hot(direction_classes(direction), NUM_CLASSES, dtype=jnp.float32)


def official_direction(item_directions: chex.Array, item_mask: chex.Array) -> chex.Array:
    """The official PBA rule (`get_profile.py`) on a padded batch of histories, exactly.

    Args:
      item_directions: float [B, M, 90], the history items' direction vectors (padded).
      item_mask: bool [B, M], which items are real.

    Returns float32 [B, 90] with values 0 / 0.5 / 1:

        mean_d = (sum_m x_md) / n          float32, summed item by item as the official code does
        1 where mean_d >= 0.6, 0 where mean_d <= 0.4 (comparisons of the float32 mean with the
        float64 thresholds, done with their exact float32 equivalents), 0.5 elsewhere;
        nothing marked: if 1 - max(mean) < min(mean), every d with mean_d == max becomes 1,
        otherwise every d with mean_d == min becomes 0.

    A history with no item (n = 0) gives all-neutral (the official rule needs n >= 1).
    Pure and jit/vmap-able; `preferences.official_profile_direction` is the host version.
    """
    chex.assert_rank(item_directions, 3)
    chex.assert_shape(item_mask, item_directions.shape[:2])
    x = jnp.where(item_mask[..., None], item_directions.astype(jnp.float32), jnp.float32(0.0))
    count = jnp.broadcast_to(item_mask[..., None], x.shape).astype(jnp.float32)

    # Sequential sums (m = 0, 1, ...), the order of numpy's axis-0 reduction: the same float32 bits.
    # The count is carried per element, not broadcast from [B]: XLA rewrites x / broadcast(n) as
    # x * (1 / n), which is not the correctly rounded quotient the official code computes.
    def add(carry, rows):
        return (carry[0] + rows[0], carry[1] + rows[1]), None

    zeros = jnp.zeros(x.shape[::2], jnp.float32)
    (total, n), _ = jax.lax.scan(add, (zeros, zeros), (jnp.swapaxes(x, 0, 1), jnp.swapaxes(count, 0, 1)))
    mean = total / jnp.maximum(n, 1.0)
    upper, lower = _float32_bounds()
    marked = jnp.where(mean >= upper, prefs.POSITIVE, jnp.where(mean <= lower, prefs.NEGATIVE, prefs.NEUTRAL))
    high, low = jnp.max(mean, axis=-1, keepdims=True), jnp.min(mean, axis=-1, keepdims=True)
    fallback = jnp.where(jnp.float32(1.0) - high < low, jnp.where(mean == high, prefs.POSITIVE, prefs.NEUTRAL),
                         jnp.where(mean == low, prefs.NEGATIVE, prefs.NEUTRAL))
    any_marked = jnp.any(marked != prefs.NEUTRAL, axis=-1, keepdims=True)
    out = jnp.where(any_marked, marked, fallback)
    return jnp.where(n > 0, out, prefs.NEUTRAL).astype(jnp.float32)


def official_distribution(item_directions: chex.Array, item_mask: chex.Array) -> chex.Array:
    """One-hot [B, 90, 3] of `official_direction` (the `official` bridge mode)."""
    return direction_distribution(official_direction(item_directions, item_mask))


def golden_distribution(direction: np.ndarray) -> np.ndarray:
    """One-hot [..., 90, 3] of a record's own direction thresholded without fallback (the `golden`
    mode). On the host, in float64, so it equals `preferences.golden_profile` exactly."""
    direction = np.asarray(direction, np.float64)
    binarized = np.apply_along_axis(prefs.binarize, -1, direction) if direction.ndim > 1 else prefs.binarize(direction)
    return np.asarray(direction_distribution(binarized))


def map_direction(distribution: chex.Array) -> chex.Array:
    """The most probable class of each dimension as a direction [..., 90] (0 / 0.5 / 1)."""
    return jnp.asarray(CLASS_VALUES, jnp.float32)[jnp.argmax(distribution, axis=-1)]


def map_profile(distribution: np.ndarray) -> str:
    """The official text profile (`preferences.profile_text`) of one distribution's MAP direction [90, 3]."""
    return prefs.profile_text(np.asarray(map_direction(jnp.asarray(distribution))))


def set_preferences(distribution: chex.Array, dims: chex.Array, values: chex.Array) -> chex.Array:
    """Set dimensions to a direction: distribution [..., 90, 3] with dimension dims[i] (int [E])
    replaced by the one-hot of values[i] (0 / 0.5 / 1). Pure (a user's edit, or a flip)."""
    dims = jnp.asarray(dims, jnp.int32)
    edited = direction_distribution(jnp.asarray(values, jnp.float32))  # [E, 3]
    return distribution.at[..., dims, :].set(jnp.broadcast_to(edited, distribution.shape[:-2] + edited.shape))


def edits_from_labels(settings: Mapping[str, str]) -> tuple[list[int], list[float]]:
    """{"Concise communication style": "positive", ...} -> (dims, values) for `set_preferences`.

    A name is either label of a dimension; "positive" / "negative" / "neutral" refer to that label
    (so "Verbose communication style=positive" is the negative side of dimension 'Concise ...').
    """
    dims, values = [], []
    for label, setting in settings.items():
        dim, label_value = prefs.lookup(label)
        if setting == "neutral":
            value = prefs.NEUTRAL
        elif setting in ("positive", "negative"):
            value = label_value if setting == "positive" else 1.0 - label_value
        else:
            raise ValueError(f"preference {label!r}: setting must be positive, negative or neutral, got {setting!r}")
        dims.append(dim.index)
        values.append(value)
    return dims, values


SOFT_SELECTIONS = ("sum", "top_dimensions")


def soft_tokens(table: chex.Array, distribution: chex.Array, select: str = "sum") -> chex.Array:
    """Soft preference tokens [B, K, D] from a learned (dimension, direction) table [K, 90, 3, D] and
    distributions [B, 90, 3].

    sum: token k = sum over (d, c) of p[b, d, c] * table[k, d, c]; every dimension in every token.
    top_dimensions: token k = sum over c of p[b, d_k, c] * table[k, d_k, c], d_k the dimension with
    the k-th largest marked probability 1 - p[b, d, neutral]: one dimension per token, as one label
    of the profile text (which d_k is chosen is not differentiated; p and the table are).
    """
    chex.assert_rank([table, distribution], [4, 3])
    distribution = distribution.astype(table.dtype)
    if select == "sum":
        return jnp.einsum("bdc,kdce->bke", distribution, table)
    if select != "top_dimensions":
        raise ValueError(f"soft token selection must be one of {SOFT_SELECTIONS}, got {select!r}")
    num_tokens = table.shape[0]
    _, dims = jax.lax.top_k(1.0 - distribution[..., NEUTRAL], num_tokens)  # [B, K]
    weights = jnp.take_along_axis(distribution, dims[..., None], axis=1)  # [B, K, 3]
    entries = table[jnp.arange(num_tokens)[None, :], dims]  # [B, K, 3, D]
    return jnp.einsum("bkc,bkce->bke", weights, entries)
