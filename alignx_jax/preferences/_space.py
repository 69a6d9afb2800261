"""The 90-dimensional AlignX preference space and the official direction <-> profile-text rule.

A direction vector has one value per dimension: 1 = the positive label, 0 = the negative label,
0.5 = neutral. A profile is the comma-separated list of the marked labels in dimension order
(`Young, High Openness, Likes science`), as the official `get_profile.py` writes it.

The labels (the official `features_persona` list) are read at run time from
`$ALIGNX_PREFERENCE_DIMENSIONS`, else `../shared/data/preference_dimensions.json` beside the checkout
(`{"dimensions": [{"index", "positive", "negative"}, ...]}`); without either, every dimension is named
by its index (`dimension 16: positive`), which keeps vectors, profiles and round trips exact.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from alignx_jax.errors import InputError, read_json

NUM_DIMENSIONS = 90
POSITIVE, NEUTRAL, NEGATIVE = 1.0, 0.5, 0.0
VOCABULARY_ENV = "ALIGNX_PREFERENCE_DIMENSIONS"
OFFICIAL_THRESHOLDS = (0.6, 0.4)  # get_profile.py: mean >= 0.6 marks the positive label, <= 0.4 the negative


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One preference dimension: its index in every direction vector and its two labels."""

    index: int
    positive: str
    negative: str


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """A mean direction value >= `positive` marks the positive label, <= `negative` the negative one."""

    positive: float
    negative: float


def vocabulary_path() -> pathlib.Path | None:
    """The labels file: `$ALIGNX_PREFERENCE_DIMENSIONS` (must exist), else the shared one beside the
    checkout when present, else None (index-named dimensions)."""
    if os.environ.get(VOCABULARY_ENV):
        path = pathlib.Path(os.environ[VOCABULARY_ENV])
        if not path.is_file():
            raise InputError(f"{VOCABULARY_ENV}={path}: no such file")
        return path
    shared = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "preference_dimensions.json"
    return shared if shared.is_file() else None


@functools.cache
def _load() -> tuple[tuple[Dimension, ...], Thresholds]:
    thresholds = Thresholds(*OFFICIAL_THRESHOLDS)
    path = vocabulary_path()
    if path is None:
        return tuple(Dimension(i, f"dimension {i}: positive", f"dimension {i}: negative") for i in range(NUM_DIMENSIONS)), thresholds
    entries = read_json(path)
    entries = entries.get("dimensions") if isinstance(entries, dict) else None
    try:
        dims = tuple(Dimension(int(e["index"]), str(e["positive"]), str(e["negative"])) for e in entries)
    except (TypeError, KeyError, ValueError):
        raise InputError(f"{path}: expected {{\"dimensions\": [{{\"index\", \"positive\", \"negative\"}}, ...]}}") from None
    if [d.index for d in dims] != list(range(NUM_DIMENSIONS)):
        raise InputError(f"{path}: expected dimensions 0..{NUM_DIMENSIONS - 1} in order, got {len(dims)} entries")
    return dims, thresholds


def dimensions() -> tuple[Dimension, ...]:
    """The 90 dimensions, in vector order."""
    return _load()[0]


def thresholds() -> Thresholds:
    """The official thresholds (0.6 / 0.4)."""
    return _load()[1]


@functools.cache
def _label_table() -> dict[str, tuple[int, float]]:
    table = {}
    for d in dimensions():
        table[d.positive] = (d.index, POSITIVE)
        table[d.negative] = (d.index, NEGATIVE)
    return table


def lookup(label: str) -> tuple[Dimension, float]:
    """The dimension a label names, and the direction value it stands for (1.0 or 0.0).

    With the official labels:
    >>> lookup("Likes science")[0].index, lookup("Older")[1]
    (47, 0.0)
    """
    try:
        index, value = _label_table()[label]
    except KeyError:
        raise InputError(f"unknown preference label {label!r}") from None
    return dimensions()[index], value


def _as_direction(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (NUM_DIMENSIONS,):
        raise ValueError(f"{name} must have shape ({NUM_DIMENSIONS},), got {array.shape}")
    return array


def profile_text(direction: Sequence[float] | np.ndarray) -> str:
    """Labels of the dimensions marked exactly 1 (positive) or 0 (negative), joined by ', '.

    This is the official `trans_persona`: values other than 0 and 1 are neutral and omitted.
    """
    direction = _as_direction(direction, "direction")
    dims = dimensions()
    labels = [dims[i].positive if v == POSITIVE else dims[i].negative for i, v in enumerate(direction) if v in (0.0, 1.0)]
    return ", ".join(labels)


def parse_profile(text: str) -> np.ndarray:
    """Inverse of `profile_text`: a direction vector (0.5 where no label is given).

    Labels may contain commas ('Prefers avoidance, mediation, compromise to handle conflict'), so
    the text is read by longest known label at each place, not by splitting on ', '.
    """
    direction = np.full((NUM_DIMENSIONS,), NEUTRAL)
    labels = sorted(_label_table(), key=len, reverse=True)
    position = 0
    while position < len(text):
        match = next(
            (lab for lab in labels if text.startswith(lab, position) and text[position + len(lab) :][:2] in ("", ", ")),
            None,
        )
        if match is None:
            raise InputError(f"profile text has an unknown label at character {position}: {text[position:position + 60]!r}")
        dim, value = lookup(match)
        if direction[dim.index] != NEUTRAL:
            raise InputError(f"profile text names dimension {dim.index} ({dim.positive} / {dim.negative}) twice")
        direction[dim.index] = value
        position += len(match) + 2
    return direction


def binarize(mean_direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """1 where the mean is >= 0.6, 0 where it is <= 0.4, 0.5 otherwise (float64 comparison)."""
    mean = _as_direction(mean_direction, "mean direction")
    t = thresholds()
    return np.where(mean >= t.positive, POSITIVE, np.where(mean <= t.negative, NEGATIVE, NEUTRAL))


def official_profile_direction(history_directions: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The official PBA rule (`get_profile.py`): mean of the history items' directions, thresholded.

    The mean is taken in float32 as the official torch code does, then compared as a Python float,
    so a mean of exactly 2/5 (0.4000000059 in float32) stays neutral. Fallback when nothing is
    marked: if 1 - max(mean) < min(mean) every dimension whose mean equals the max becomes
    positive, otherwise every dimension whose mean equals the min becomes negative.
    """
    stacked = np.asarray(history_directions, dtype=np.float32)
    if stacked.ndim != 2 or stacked.shape[1] != NUM_DIMENSIONS or stacked.shape[0] == 0:
        raise ValueError(f"history directions must have shape (n >= 1, {NUM_DIMENSIONS}), got {stacked.shape}")
    mean = stacked.sum(axis=0, dtype=np.float32) / np.float32(stacked.shape[0])
    marked = binarize(mean.astype(np.float64))
    if np.any(marked != NEUTRAL):
        return marked
    high, low = mean.max(), mean.min()
    fallback = np.full((NUM_DIMENSIONS,), NEUTRAL)
    if np.float32(1.0) - high < low:
        fallback[mean == high] = POSITIVE
    else:
        fallback[mean == low] = NEGATIVE
    return fallback


def official_profile(history_directions: Sequence[Sequence[float]] | np.ndarray) -> str:
    """Profile text of `official_profile_direction` (the official PBA `{profile}`)."""
    return profile_text(official_profile_direction(history_directions))


def golden_profile(direction: Sequence[float] | np.ndarray) -> str:
    """Profile text from a record's own (true) direction, thresholded without fallback."""
    return profile_text(binarize(direction))
