"""Subsets stratified by persona: benchmark files are sorted by persona, so a file prefix is one persona.

Every function returns record indices (ascending, so file order is kept) and groups records by
`persona_key` (the `ground_truth_persona`, else the golden profile of the direction). Each takes the
records, or their persona keys as strings (`RecordFile.personas()`: a parquet source's persona
columns, read without decoding the records).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alignx_jax.data._sources import persona_key


def persona_groups(records: Sequence[Mapping[str, Any] | str]) -> dict[str, list[int]]:
    """persona -> indices of its records, personas in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record if isinstance(record, str) else persona_key(record), []).append(index)
    return groups


def take_evenly(records: Sequence[Mapping[str, Any] | str], limit: int) -> list[int]:
    """`limit` records spread as evenly as possible over the personas (round robin, each persona's
    records in file order); a persona with too few records leaves its share to the others."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    queues = [list(reversed(indices)) for indices in persona_groups(records).values()]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    return sorted(chosen)


def first_per_persona(records: Sequence[Mapping[str, Any] | str], count: int) -> list[int]:
    """The first `count` records of each persona."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return sorted(i for indices in persona_groups(records).values() for i in indices[:count])


def heldout_split(records: Sequence[Mapping[str, Any] | str], per_persona: int, *, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded draw of `per_persona` records of each persona is held out
    (all of a persona's records when it has fewer), the rest train."""
    if per_persona < 0:
        raise ValueError(f"per_persona must be >= 0, got {per_persona}")
    rng = np.random.default_rng(seed)
    heldout = set()
    for indices in persona_groups(records).values():
        heldout.update(rng.permutation(indices)[:per_persona].tolist())
    return [i for i in range(len(records)) if i not in heldout], sorted(heldout)
