"""Grain pipeline: records -> seeded shuffle -> per-host shard -> persona prompt + tokens -> packed batches.

Deterministic: the shuffle depends only on the seed (each epoch reshuffled), and the persona
draw of a record depends only on (seed, the record's source index). The iterator's state
(`get_state` / `set_state`) is a small dict, so a restored iterator yields exactly the batches
that were still to come.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from alignx_jax import preferences as prefs
from alignx_jax.data import _rendering as rendering
from alignx_jax.data._packing import EncodedPair, PackingConfig, PackingStats, RowPacker, encode_pair
from alignx_jax.errors import InputError

PERSONA_KINDS = ("ica", "pba")
HISTORY_MODES = ("sampled", "full")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """Which official layout renders the persona.

    kind "ica" (history as text) or "pba" (a profile of preference labels); `evaluation` picks the
    evaluation layout (`**Post:**` header; ICA adds demographics); `history` "sampled" is the
    official training draw, "full" every item (evaluation, few-shot reference); `profile` is the
    PBA profile source ("official", "golden", "precomputed"). `soft_tokens` K > 0 (kind "pba"
    only): the profile is K soft slots (`soft_profile`) instead of text, for a policy conditioned by
    soft preference tokens (the pairs carry `slots`, the batches `soft_slots`).
    """

    kind: str = "ica"
    evaluation: bool = False
    history: str = "sampled"
    profile: str = "official"
    soft_tokens: int = 0

    def __post_init__(self):
        if self.kind not in PERSONA_KINDS:
            raise ValueError(f"kind must be one of {PERSONA_KINDS}, got {self.kind!r}")
        if self.history not in HISTORY_MODES:
            raise ValueError(f"history must be one of {HISTORY_MODES}, got {self.history!r}")
        if self.profile not in rendering.PROFILE_MODES:
            raise ValueError(f"profile must be one of {rendering.PROFILE_MODES}, got {self.profile!r}")
        if self.soft_tokens < 0 or (self.soft_tokens and self.kind != "pba"):
            raise ValueError(f"soft_tokens must be >= 0, and > 0 only with kind 'pba'; got {self.soft_tokens} "
                             f"with kind {self.kind!r}")

    def persona(
        self, record: Mapping[str, Any], rng: np.random.Generator
    ) -> tuple[rendering.History, Callable[[rendering.History], rendering.ChatPrompt]]:
        """The history to render and the renderer (history -> prompt) for one record."""
        if self.history == "sampled":
            history = rendering.sample_history(record, rng)
        else:
            history = rendering.full_history(record)
        prompt = record[prefs.PROMPT]
        if self.kind == "pba":
            profile = (rendering.soft_profile(self.soft_tokens) if self.soft_tokens
                       else rendering.record_profile(record, history, self.profile))
            text = rendering.pba_prompt(prompt, profile, evaluation=self.evaluation)
            # The profile is fixed once drawn: there is no history left to shorten.
            return rendering.History(), lambda _: text
        layout = rendering.ica_eval_prompt if self.evaluation else rendering.ica_train_prompt
        return history, lambda h: layout(prompt, h)


def unit_fits(pairs: Sequence[EncodedPair], config: PackingConfig) -> bool:
    """Do `pairs` (a unit, packed whole) fit one empty batch?"""
    return RowPacker(config).add_all(pairs)


def unit_too_long(pairs: Sequence[EncodedPair], config: PackingConfig) -> InputError:
    """The error for a unit that no batch holds, naming its records and the config keys to change."""
    return InputError(f"records {[p.source for p in pairs]} (a twin unit, packed whole) need "
                      f"{[p.packed_length for p in pairs]} tokens, more than one batch holds ({config.rows} rows of "
                      f"{config.max_length} tokens, {config.max_pairs_per_row} pairs per row): raise "
                      f"data.max_pairs_per_row, data.rows or data.seq_lengths, or set data.twins: false")


def encode_record(
    record: Mapping[str, Any],
    index: int,
    *,
    tokenizer: Any,
    prompt_format: PromptFormat,
    seed: int,
    max_length: int,
    min_prompt_tokens: int = 16,
    on_long_response: str = "drop",
) -> tuple[EncodedPair | None, PackingStats]:
    """Render and tokenize one record; the persona draw is seeded by (seed, source index)."""
    stats = PackingStats()
    history, render = prompt_format.persona(record, np.random.default_rng([seed, index]))
    pair = encode_pair(
        tokenizer, render, history, record[prefs.CHOSEN], record[prefs.REJECTED], max_length=max_length,
        min_prompt_tokens=min_prompt_tokens, on_long_response=on_long_response, stats=stats, source=index,
    )
    return pair, stats


class _PackedBatchIterator(grain.DatasetIterator):
    """Packs encoded pairs into batches; its state is the parent's state before the first pair of
    the next batch, plus the running counters."""

    def __init__(self, parent: grain.DatasetIterator, config: PackingConfig):
        super().__init__(parent)
        self._config = config
        self._pending: tuple[dict, tuple[EncodedPair | None, PackingStats]] | None = None
        self.stats = PackingStats()

    def __next__(self):
        packer = RowPacker(self._config)
        while True:
            if self._pending is not None:
                state_before, item = self._pending
                self._pending = None
            else:
                state_before = self._parent.get_state()
                try:
                    item = next(self._parent)
                except StopIteration:
                    break
            encoded = item if isinstance(item, list) else [item]  # a unit (list) is packed whole
            pairs = [pair for pair, _ in encoded if pair is not None]
            if pairs and not packer.add_all(pairs):
                if packer.empty:
                    raise unit_too_long(pairs, self._config)
                self._pending = (state_before, item)
                break
            for _, stats in encoded:
                self.stats.add(stats)
        if packer.empty:
            raise StopIteration
        return packer.batch()

    def get_state(self) -> dict[str, Any]:
        parent = self._pending[0] if self._pending is not None else self._parent.get_state()
        return {"parent": parent, "stats": dataclasses.asdict(self.stats)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._pending = None
        self.stats = PackingStats(**state["stats"])


class PackedBatchDataset(grain.IterDataset):
    """`IterDataset` of `PackedBatch` from an `IterDataset` of `(EncodedPair | None, PackingStats)`."""

    def __init__(self, parent: grain.IterDataset, config: PackingConfig):
        super().__init__(parent)
        self._config = config

    def __iter__(self) -> _PackedBatchIterator:
        return _PackedBatchIterator(self._parent.__iter__(), self._config)


def packed_batches(
    records: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    config: PackingConfig,
    prompt_format: PromptFormat = PromptFormat(),
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    min_prompt_tokens: int = 16,
    on_long_response: str = "drop",
    read_options: grain.ReadOptions | None = None,
    units: Sequence[Sequence[int]] | None = None,
) -> PackedBatchDataset:
    """The training/evaluation input pipeline over any random-access sequence of records (a list,
    or `tfds_records(...)` over the TFDS array_record files).

    Host `shard_index` of `shard_count` (default: `jax.process_index()` of `jax.process_count()`)
    reads the records at positions `shard_index`, `shard_index + shard_count`, ... (its share, the
    same for every seed: `train.data.build_splits` reads only those) in its own shuffled order, so
    hosts see disjoint records.
    `iter(dataset)` gives a checkpointable iterator; its `.stats` count every cut and drop.
    `units` (e.g. `twin_units(records)`): groups of record positions, each shuffled, sharded and packed
    as one (its pairs always share a batch); None: every record is its own unit (the original order).
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, {shard_count})")
    encode = lambda index, record: encode_record(  # noqa: E731
        record, index, tokenizer=tokenizer, prompt_format=prompt_format, seed=seed, max_length=config.max_length,
        min_prompt_tokens=min_prompt_tokens, on_long_response=on_long_response,
    )
    # Positions, not map_with_index: after `repeat` that index counts on past the end (epoch 2's records
    # would be records n.., their persona draws and cached reference values another record's).
    if units is None:
        dataset = grain.MapDataset.range(len(records))[shard_index::shard_count]
        item = lambda index: encode(index, records[index])  # noqa: E731
    else:
        dataset = grain.MapDataset.source([tuple(int(i) for i in unit) for unit in units])[shard_index::shard_count]
        item = lambda unit: [encode(index, records[index]) for index in unit]  # noqa: E731
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    return PackedBatchDataset(dataset.map(item).to_iter_dataset(read_options), config)
