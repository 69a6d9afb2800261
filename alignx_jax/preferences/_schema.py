"""The AlignX record schema and its validation.

A training record (the hub's `JinaLeejnl/AlignX`) has every field below; benchmark records
(P-Soups, PRISM, UF-P-4, AlignX-test) may lack the direction and some history kinds, may carry a
precomputed `profile` and a `ground_truth_persona`, and their history items may lack directions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from alignx_jax.errors import RecordError
from alignx_jax.preferences._space import NUM_DIMENSIONS

PROMPT, CHOSEN, REJECTED = "prompt", "chosen", "rejected"
DIRECTION = "Preference Direction"
DEMOGRAPHICS = "Demographic Information"
UGC = "User-Generated Content"
PAIRS = "Pair-wise Comparative Feedback"
PROFILE = "profile"
GROUND_TRUTH_PERSONA = "ground_truth_persona"

TRAINING_FIELDS = (PROMPT, CHOSEN, REJECTED, DIRECTION, DEMOGRAPHICS, UGC, PAIRS)
UGC_ITEM_FIELDS = (PROMPT, "comment")
PAIR_ITEM_FIELDS = (PROMPT, CHOSEN, REJECTED)
SCHEMAS = ("alignx", "benchmark")


def _fail(where: str, message: str) -> None:
    raise RecordError(f"{where}: {message}")


def _check_text(value: Any, where: str, field: str, *, non_empty: bool) -> None:
    if not isinstance(value, str):
        _fail(where, f"{field!r} must be a string, got {type(value).__name__}")
    if non_empty and not value.strip():
        _fail(where, f"{field!r} is empty")


def _check_direction(value: Any, where: str, field: str) -> None:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        _fail(where, f"{field!r} must be a list of {NUM_DIMENSIONS} numbers, got {type(value).__name__}")
    if len(value) != NUM_DIMENSIONS:
        _fail(where, f"{field!r} has {len(value)} values, expected {NUM_DIMENSIONS}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            _fail(where, f"{field!r}[{i}] is not a number: {v!r}")
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            _fail(where, f"{field!r}[{i}] = {v!r} is outside [0, 1]")


def _check_history(value: Any, where: str, field: str, item_fields: tuple[str, ...], *, directions: bool) -> None:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        _fail(where, f"{field!r} must be a list, got {type(value).__name__}")
    for j, item in enumerate(value):
        item_where = f"{where}: {field!r}[{j}]"
        if not isinstance(item, Mapping):
            raise RecordError(f"{item_where} must be an object, got {type(item).__name__}")
        for name in item_fields:
            if name not in item:
                raise RecordError(f"{item_where}: missing field {name!r}")
            _check_text(item[name], item_where, name, non_empty=False)
        if directions or item.get(DIRECTION) is not None:
            if DIRECTION not in item:
                raise RecordError(f"{item_where}: missing field {DIRECTION!r}")
            _check_direction(item[DIRECTION], item_where, DIRECTION)


def validate_record(record: Any, index: int, *, schema: str = "alignx", source: str | None = None) -> None:
    """Raise `RecordError` naming `source`, `record {index}` and the field if `record` breaks `schema`.

    schema "alignx": every training field is required, history items carry directions.
    schema "benchmark": only prompt/chosen/rejected are required; the other fields are checked
    when present, and history items may omit their direction.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be one of {SCHEMAS}, got {schema!r}")
    where = f"record {index}" if source is None else f"{source}: record {index}"
    if not isinstance(record, Mapping):
        _fail(where, f"must be an object, got {type(record).__name__}")
    required = TRAINING_FIELDS if schema == "alignx" else (PROMPT, CHOSEN, REJECTED)
    for name in required:
        if name not in record:
            _fail(where, f"missing field {name!r}")
    for name in (PROMPT, CHOSEN, REJECTED):
        _check_text(record[name], where, name, non_empty=True)
    if record.get(DIRECTION) is not None or schema == "alignx":
        _check_direction(record[DIRECTION], where, DIRECTION)
    for name in (DEMOGRAPHICS, PROFILE, GROUND_TRUTH_PERSONA):
        if record.get(name) is not None:
            _check_text(record[name], where, name, non_empty=False)
    directions = schema == "alignx"
    if record.get(UGC) is not None or schema == "alignx":
        _check_history(record[UGC], where, UGC, UGC_ITEM_FIELDS, directions=directions)
    if record.get(PAIRS) is not None or schema == "alignx":
        _check_history(record[PAIRS], where, PAIRS, PAIR_ITEM_FIELDS, directions=directions)
