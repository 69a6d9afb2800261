"""Twin pairs: records that hold the same post and the same two responses with opposite labels
(two users who disagree: synthetic mirror twins, P-Soups personas on a shared prompt).

Training both twins in one step gives a persona-blind shift no net gradient; `twin_units` groups
the records into units that the pipeline shuffles and packs whole (`packed_batches(units=...)`), and
`twin_slots` tells the step which pair slot of a batch is which slot's twin.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alignx_jax import preferences as prefs


def twin_units(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, ...]]:
    """Record positions grouped into units: (i, j) for twins, (i,) for a record without one.

    Records sharing a post and an unordered response pair are matched in file order, the k-th of one
    label order with the k-th of the other; the rest stay single. Units are ordered by their first
    position, so the whole is a permutation of range(len(records))."""
    sides: dict[tuple, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for index, record in enumerate(records):
        chosen, rejected = record[prefs.CHOSEN], record[prefs.REJECTED]
        if chosen == rejected:
            continue
        key = (record[prefs.PROMPT], min(chosen, rejected), max(chosen, rejected))
        sides[key][chosen > rejected].append(index)
    partner: dict[int, int] = {}
    for first, second in sides.values():
        for i, j in zip(first, second, strict=False):
            partner[i], partner[j] = j, i
    units = []
    for index in range(len(records)):
        other = partner.get(index)
        if other is None:
            units.append((index,))
        elif index < other:
            units.append((index, other))
    return units


def twin_of(units: Sequence[Sequence[int]], num_records: int) -> np.ndarray:
    """int32 [num_records]: each record's twin position, -1 for none."""
    out = np.full((num_records,), -1, np.int32)
    for unit in units:
        if len(unit) == 2:
            out[unit[0]], out[unit[1]] = unit[1], unit[0]
    return out


def twin_slots(pair_source: np.ndarray, twins: np.ndarray) -> np.ndarray:
    """int32 [P]: for each pair slot of a batch, the slot holding its twin record, -1 when the twin is
    not in this batch (or the slot is empty). `pair_source` [P]: the slots' record positions (-1: empty);
    `twins`: `twin_of(...)`."""
    slot_of = {int(source): slot for slot, source in enumerate(pair_source) if source >= 0}
    out = np.full(pair_source.shape, -1, np.int32)
    for slot, source in enumerate(pair_source):
        if source >= 0 and twins[source] >= 0:
            out[slot] = slot_of.get(int(twins[source]), -1)
    return out
