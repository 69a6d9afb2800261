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
                state_before, (pair, stats) = self._pending
                self._pending = None
            else:
                state_before = self._parent.get_state()
                try:
                    pair, stats = next(self._parent)
                except StopIteration:
                    break
            if pair is not None and not packer.add(pair):
                self._pending = (state_before, (pair, stats))
                break
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
) -> PackedBatchDataset:
    """The training/evaluation input pipeline over any random-access sequence of records (a list,
    or `tfds_records(...)` over the TFDS array_record files).

    Host `shard_index` of `shard_count` (default: `jax.process_index()` of `jax.process_count()`)
    reads the records at positions `shard_index`, `shard_index + shard_count`, ... (its share, the
    same for every seed: `train.data.build_splits` reads only those) in its own shuffled order, so
    hosts see disjoint records.
    `iter(dataset)` gives a checkpointable iterator; its `.stats` count every cut and drop.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, {shard_count})")
    dataset = grain.MapDataset.source(records)
    dataset = dataset.map_with_index(lambda index, record: (index, record))[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    encode = lambda item: encode_record(  # noqa: E731
        item[1], item[0], tokenizer=tokenizer, prompt_format=prompt_format, seed=seed, max_length=config.max_length,
        min_prompt_tokens=min_prompt_tokens, on_long_response=on_long_response,
    )
    return PackedBatchDataset(dataset.map(encode).to_iter_dataset(read_options), config)
