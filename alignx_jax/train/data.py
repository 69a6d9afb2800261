"""Training and held-out records from the config, and packed host batches turned into global arrays.

Held-out records never train: synthetic held-out users are other users (another seed), and a file's
held-out records are a seeded draw of `heldout_per_persona` records of each persona, so the held-out
set holds every persona of the file (DESIGN.md, "Personas, not averages"). Held-out users of unseen
dimensions (`data.heldout_unseen`) come last; their personas are the run's unseen personas.

Multi-host: each process decodes only its share of the training records (`build_splits(share=)`,
a `ProcessShare`) and packs them (`packed_batches` shards by `jax.process_index()`); the processes
agree on the static shapes (the longest row length and scored-token count of the step, one small
all-gather) and each contributes its rows to the global [B, T] arrays
(`jax.make_array_from_process_local_data`). Pair ids are offset by the process's pair slots so that
every pair keeps a unique id in the global batch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alignx_jax import data, kernels
from alignx_jax.errors import InputError
from alignx_jax.models import scoring
from alignx_jax.train.config import DataConfig, SyntheticUsers, style_dimensions


class ProcessShare(Sequence):
    """The training records as one sequence of which this process holds its share: positions `index`,
    `index + count`, ... of `total` (the records `data.packed_batches` reads on this process). The
    other positions were never decoded here; reading one is an error."""

    def __init__(self, records: Sequence[dict], *, total: int, index: int, count: int):
        if len(records) != len(range(index, total, count)):
            raise ValueError(f"share {index} of {count} over {total} records holds {len(range(index, total, count))}, "
                             f"got {len(records)}")
        self.own, self.total, self.index, self.count = list(records), total, index, count

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(self.total))]
        position = int(position) + (self.total if position < 0 else 0)
        if not 0 <= position < self.total:
            raise IndexError(f"training record {position} is out of range ({self.total} records)")
        if (position - self.index) % self.count:
            raise LookupError(f"training record {position} belongs to process {position % self.count}'s share, "
                              f"not to this process's ({self.index} of {self.count})")
        return self.own[(position - self.index) // self.count]


@dataclasses.dataclass(frozen=True)
class Splits:
    train: Sequence[dict]  # a list, or this process's `ProcessShare` of it
    heldout: list[dict]
    unseen_personas: frozenset[str] = frozenset()  # the personas (`data.persona_key`) of data.heldout_unseen

    @property
    def own_train(self) -> list[dict]:
        """The training records this process decoded (all of them in one process)."""
        return self.train.own if isinstance(self.train, ProcessShare) else list(self.train)


def _synthetic(users: SyntheticUsers, seed: int, name: str) -> list[dict]:
    if not users.users:
        return []
    return data.synthetic_records(users.users, seed=seed, records_per_user=users.records_per_user,
                                  history_items=users.history_items, dimensions=style_dimensions(users, name))


def _targets(config: DataConfig, records: list[dict], where: Callable[[int], str]) -> list[dict]:
    """The training records' targets as the config asks: as they are, or profile-first. `where(i)`
    names record i in an error."""
    if not config.profile_first:
        return records
    out = []
    for position, record in enumerate(records):
        try:
            out.append(data.profile_first(record))
        except ValueError as error:
            raise InputError(f"config key 'data.profile_first': {where(position)}: {error}") from None
    return out


def build_splits(config: DataConfig, seed: int, *, share: tuple[int, int] = (0, 1)) -> Splits:
    """The training and held-out records the config names (files are read and validated here).

    `share` (index, count): this process decodes only the training records at positions index,
    index + count, ... (a `ProcessShare`; count 1: a plain list of all). Synthetic users are made on
    every process, held-out records are read whole, and a parquet file's held-out draw and `limit`
    read only its persona columns (`data.RecordFile`)."""
    index, count = share
    train_seed = seed if config.synthetic.seed is None else config.synthetic.seed
    heldout_seed = train_seed + 1 if config.heldout_synthetic.seed is None else config.heldout_synthetic.seed
    if config.synthetic.users and config.heldout_synthetic.users and train_seed == heldout_seed:
        raise InputError(f"config keys 'data.synthetic.seed' and 'data.heldout_synthetic.seed' are both "
                         f"{train_seed}: held-out users would be training users")
    unseen_seed = train_seed + 2 if config.heldout_unseen.seed is None else config.heldout_unseen.seed
    synthetic = _synthetic(config.synthetic, train_seed, "data.synthetic")
    heldout = _synthetic(config.heldout_synthetic, heldout_seed, "data.heldout_synthetic")
    total = len(synthetic)
    own = _targets(config, synthetic[index::count], lambda i: f"data.synthetic record {index + i * count}")
    for file in config.files:
        source = data.RecordFile(file.path)
        if not len(source):
            raise InputError(f"{file.path}: holds no records")
        personas = source.personas() if file.heldout_per_persona or file.limit is not None else None
        train_ids, heldout_ids = (data.heldout_split(personas, file.heldout_per_persona, seed=seed) if personas
                                  else (list(range(len(source))), []))
        if file.limit is not None:
            train_ids = [train_ids[i] for i in data.take_evenly([personas[i] for i in train_ids], file.limit)]
        first = (index - total) % count  # this file's first training record in this process's share
        ids = train_ids[first::count]
        own += _targets(config, source.read(ids), lambda i, ids=ids, path=file.path: f"{path}: record {ids[i]}")
        total += len(train_ids)
        heldout += source.read(heldout_ids)
    if not total:
        raise InputError("the config's data leaves no training records (every record is held out)")
    if total < count:
        raise InputError(f"the config's data holds {total} training records, fewer than the {count} processes "
                         f"that each read a share of them")
    unseen = _synthetic(config.heldout_unseen, unseen_seed, "data.heldout_unseen")
    unseen_personas = frozenset(data.persona_key(r) for r in unseen)
    both = sorted(unseen_personas & {data.persona_key(r) for r in heldout})
    if both:
        raise InputError(f"held-out persona {both[0]!r} is both a user of unseen dimensions (data.heldout_unseen) "
                         f"and of another held-out set: mark them on other dimensions")
    train = own if count == 1 else ProcessShare(own, total=total, index=index, count=count)
    return Splits(train, heldout + unseen, unseen_personas)


def packing_config(config: DataConfig, processes: int = 1) -> data.PackingConfig:
    """This process's share of the batch: `rows / processes` rows (rows must divide)."""
    if config.rows % processes:
        raise InputError(f"config key 'data.rows' = {config.rows} does not divide over {processes} processes")
    return data.PackingConfig(rows=config.rows // processes, seq_lengths=config.seq_lengths,
                              max_pairs_per_row=config.max_pairs_per_row)


def prompt_format(config: DataConfig, *, evaluation: bool = False, history: str = "sampled") -> data.PromptFormat:
    return data.PromptFormat(kind=config.prompt, profile=config.profile, evaluation=evaluation, history=history)


def check_records_fit(records: Sequence[Mapping[str, Any]], *, tokenizer, config: DataConfig, seed: int,
                      sample: int = 64) -> None:
    """Refuse a dataset whose records cannot fit the largest static length (else the endless training
    stream would drop every pair and never yield a batch): encode a sample and require one to fit."""
    fmt = prompt_format(config)
    stats = data.PackingStats()
    for index in range(min(sample, len(records))):
        pair, pair_stats = data.encode_record(records[index], index, tokenizer=tokenizer, prompt_format=fmt, seed=seed,
                                              max_length=config.seq_lengths[-1], on_long_response=config.on_long_response)
        stats.add(pair_stats)
        if pair is not None:
            return
    raise InputError(f"all {stats.pairs_dropped} sampled training records are too long for data.seq_lengths "
                     f"(largest {config.seq_lengths[-1]} tokens): their chosen + rejected responses leave no room "
                     f"for the prompt; raise data.seq_lengths or set data.on_long_response: truncate")


def check_units_fit(records: Sequence[Mapping[str, Any]], units: Sequence[Sequence[int]], *, tokenizer,
                    config: DataConfig, seed: int, sample: int = 32) -> None:
    """Refuse, before training, twin units that one batch cannot hold (the packer would stop mid-run):
    encode the first `sample` units of two or more records and pack each into an empty batch."""
    fmt, packing = prompt_format(config), packing_config(config)
    for unit in [u for u in units if len(u) > 1][:sample]:
        pairs = [data.encode_record(records[i], i, tokenizer=tokenizer, prompt_format=fmt, seed=seed,
                                    max_length=config.seq_lengths[-1], on_long_response=config.on_long_response)[0]
                 for i in unit]
        pairs = [pair for pair in pairs if pair is not None]
        if not data.unit_fits(pairs, packing):
            raise data.unit_too_long(pairs, packing)


def default_buckets(max_tokens: int, smallest: int = 64) -> tuple[int, ...]:
    """Powers of two from `smallest` up to (and including) `max_tokens`: a step compiles one shape per bucket."""
    buckets = [smallest]
    while buckets[-1] < max_tokens:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets[:-1]) + (max_tokens,) if buckets[-1] != max_tokens else tuple(buckets)


def scored_buckets(configured: Sequence[int], max_tokens: int) -> tuple[int, ...]:
    """The step's scored-token buckets: the configured ones below `max_tokens` (rows x T, the most a
    batch can score) then `max_tokens` itself, so a batch past the largest configured bucket compiles
    the full shape instead of failing; none configured: `default_buckets(max_tokens)`."""
    if not configured:
        return default_buckets(max_tokens)
    return tuple(b for b in configured if b < max_tokens) + (max_tokens,)


def pad_rows(batch: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """A host batch with its [B, T] arrays padded to T = `length` (padding: segment 0, pair id -1)."""
    out = dict(batch)
    t = batch["tokens"].shape[1]
    if length < t:
        raise ValueError(f"cannot pad rows of length {t} to {length}")
    for key in data.ROW_KEYS + tuple(k for k in data.OPTIONAL_ROW_KEYS if k in batch):
        fill = -1 if key in ("pair_ids", "soft_slots") else 0
        out[key] = np.pad(batch[key], ((0, 0), (0, length - t)), constant_values=fill)
    return out


def all_max(values: Sequence[int]) -> list[int]:
    """Elementwise max over processes (identity in one process)."""
    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
    return np.max(np.asarray(gathered).reshape(jax.process_count(), -1), axis=0).tolist()


def to_host(array: jax.Array) -> np.ndarray:
    """A (possibly multi-host sharded) device array, whole, as numpy on every process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def assemble(micro_batches: Sequence[Mapping[str, np.ndarray]], *, buckets: tuple[int, ...],
             row_sharding: jax.sharding.Sharding, pair_sharding: jax.sharding.Sharding,
             extra: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, jax.Array], int]:
    """Global [A, B, T] device arrays (and [A, P] pair arrays) from this process's host micro-batches,
    plus the static scored-token length of the step (the bucket of the largest micro-batch).

    `extra`: more per-pair arrays [A, P_local, ...] (precomputed reference log-probs, a bridge's
    persona arrays), split over the pair axis.
    """
    length = max(b["tokens"].shape[1] for b in micro_batches)
    # The LM head runs on each device's own rows (models/scoring.py): the length must hold the fullest
    # device's scored tokens times the devices, not just the batch's total.
    global_rows = len(micro_batches[0]["tokens"]) * jax.process_count()
    blocks = len({index[1].indices(global_rows)[0]
                  for index in row_sharding.devices_indices_map((1, global_rows, 1)).values()})
    local_blocks = max(blocks // jax.process_count(), 1)
    scored = max(scoring.scored_token_count(b, local_blocks) for b in micro_batches)
    length, scored = all_max([length, scored])
    if jax.process_count() > 1:  # every process's local count, not the global sum, bounds its rows' share
        scored *= jax.process_count()
    scored_length = kernels.bucket_length(scored, buckets)
    local_pairs = len(micro_batches[0]["pair_valid"])
    stacked = {}
    row_keys = data.ROW_KEYS + tuple(k for k in data.OPTIONAL_ROW_KEYS if k in micro_batches[0])
    for key in row_keys + data.PAIR_KEYS:
        values = np.stack([pad_rows(b, length)[key] if key in row_keys else b[key] for b in micro_batches])
        if key == "pair_ids":
            values = np.where(values >= 0, values + jax.process_index() * local_pairs, -1).astype(np.int32)
        stacked[key] = values
    stacked.update(extra or {})
    arrays = {}
    for key, values in stacked.items():
        sharding = row_sharding if key in row_keys else pair_sharding
        arrays[key] = jax.make_array_from_process_local_data(sharding, values)
    return arrays, scored_length
