"""Which records an evaluation scores: stratified by persona, never a file prefix.

Benchmark files are sorted by persona (P-Soups: 300 "friendly" records, then 300 "unfriendly"),
so the first N records are one persona. `select_indices` takes records evenly across personas
(`data.persona_key`), the first ones of each persona in file order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alignx_jax import data


def persona_groups(records: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Record indices per persona key, personas in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(data.persona_key(record), []).append(index)
    return groups


def select_indices(records: Sequence[Mapping[str, Any]], *, limit: int | None = None,
                   per_persona: int | None = None) -> list[int]:
    """Indices (ascending) of the records to score.

    per_persona: the first N records of each persona. limit: N records in all, split as evenly as
    the personas allow (N // k each, the remainder to the first personas; a persona with fewer
    records gives its unused share to the others). Both: per_persona first, then the limit.
    Neither: every record.
    """
    for name, value in (("limit", limit), ("per_persona", per_persona)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    groups = persona_groups(records)
    if per_persona is not None:
        groups = {k: v[:per_persona] for k, v in groups.items()}
    if limit is not None:
        quotas = even_quotas({k: len(v) for k, v in groups.items()}, limit)
        groups = {k: v[: quotas[k]] for k, v in groups.items()}
    return sorted(i for members in groups.values() for i in members)


def even_quotas(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """How many of each group to take for `total` in all, as even as the group sizes allow
    (water-filling: a small group takes all it has, the rest is shared by the others)."""
    quotas = dict.fromkeys(sizes, 0)
    remaining = min(total, sum(sizes.values()))
    open_groups = [k for k in sizes if sizes[k] > 0]
    while remaining > 0 and open_groups:
        share, extra = divmod(remaining, len(open_groups))
        for position, key in enumerate(open_groups):
            take = min(share + (1 if position < extra else 0), sizes[key] - quotas[key])
            quotas[key] += take
            remaining -= take
        open_groups = [k for k in open_groups if quotas[k] < sizes[k]]
    return quotas
