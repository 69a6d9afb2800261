"""Which records an evaluation scores: stratified by persona, never a file prefix.

Benchmark files are sorted by persona (P-Soups: 300 "friendly" records, then 300 "unfriendly"),
so the first N records are one persona. The stratification itself is the data layer's
(`data.take_evenly`, `data.first_per_persona`), shared with the trainer's held-out splits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alignx_jax import data


def select_indices(records: Sequence[Mapping[str, Any]], *, limit: int | None = None,
                   per_persona: int | None = None) -> list[int]:
    """Indices (ascending) of the records to score.

    per_persona: the first N records of each persona. limit: N records in all, split as evenly as
    the personas allow (round robin over the personas, each persona's records in file order; a
    persona with fewer records leaves its share to the others). Both: per_persona first, then the
    limit. Neither: every record.
    """
    for name, value in (("limit", limit), ("per_persona", per_persona)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    indices = list(range(len(records)))
    if per_persona is not None:
        indices = data.first_per_persona(records, per_persona)
    if limit is not None:
        subset = [records[i] for i in indices]
        indices = [indices[i] for i in data.take_evenly(subset, limit)]
    return indices
