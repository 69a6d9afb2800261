"""Persona rendering: the official AlignX prompt layouts, as (system, user) chat messages.

The official code writes Llama-3 header tokens by hand; here the same message *contents* go
through the model's own chat template, so one layout serves SmolLM2, Qwen and Llama. Contents
follow the official scripts character for character (`train/format_data.py`,
`eval/loss_ica.py`, `eval/loss_few_shot.py`, `eval/loss_pba.py`), including the newline that
ends each official system message.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from alignx_jax import preferences as prefs

SYSTEM_ICA_TRAIN = "Generate a task-specific response based on user historical behavior.\n"
SYSTEM_ICA_EVAL = "Generate a task-specific response based on user historical behavior and preferences.\n"
SYSTEM_PBA = "Generate a task-specific response based on user preferences.\n"
UGC_HEADER = "**This person has commented on some posts:**\n\n"
PAIR_HEADER = "**This person has chosen or rejected comments on some posts:**\n\n"
MAX_SAMPLED_ITEMS = 4  # the official training draw: 0..4 UGC items and 0..4 pairs
PROFILE_MODES = ("official", "golden", "precomputed")
# One soft prompt slot (a private-use character no tokenizer sees): `soft_profile(k)` stands where the
# PBA profile text goes, and tokenization turns each of these characters into one slot position whose
# embedding the model replaces with a soft preference token (`data.PackedBatch.soft_slots`).
SOFT_SLOT = "\ue000"


class ChatPrompt(NamedTuple):
    """The system and user message of one rendered prompt."""

    system: str
    user: str


@dataclasses.dataclass(frozen=True)
class History:
    """The persona shown to the model: UGC items, earlier pairs, and a demographic description."""

    ugc: tuple[Mapping[str, Any], ...] = ()
    pairs: tuple[Mapping[str, Any], ...] = ()
    demographics: str = ""

    @property
    def num_items(self) -> int:
        return len(self.ugc) + len(self.pairs)

    def without_last_item(self) -> History:
        """The history less the item rendered last (the last pair, else the last UGC item)."""
        if self.pairs:
            return dataclasses.replace(self, pairs=self.pairs[:-1])
        if self.ugc:
            return dataclasses.replace(self, ugc=self.ugc[:-1])
        raise ValueError("history has no item left to drop")

    def directions(self) -> list:
        """The direction vectors of the items (UGC first, then pairs), as the official PBA rule reads them."""
        items = self.ugc + self.pairs
        missing = [i for i, item in enumerate(items) if item.get(prefs.DIRECTION) is None]
        if missing:
            raise ValueError(f"history items {missing} carry no {prefs.DIRECTION!r}: the official profile needs them")
        return [item[prefs.DIRECTION] for item in items]


def full_history(record: Mapping[str, Any]) -> History:
    """Every history item of a record (evaluation and the few-shot reference use them all)."""
    return History(
        ugc=tuple(record.get(prefs.UGC) or ()),
        pairs=tuple(record.get(prefs.PAIRS) or ()),
        demographics=record.get(prefs.DEMOGRAPHICS) or "",
    )


def sample_history(record: Mapping[str, Any], rng: np.random.Generator) -> History:
    """The official training draw: min(U{0..4}, n) UGC items and min(U{0..4}, n) pairs, sampled
    without replacement; when both counts are 0, up to 4 of each. Deterministic given `rng`."""
    ugc, pairs = tuple(record.get(prefs.UGC) or ()), tuple(record.get(prefs.PAIRS) or ())
    num_ugc = min(int(rng.integers(0, MAX_SAMPLED_ITEMS + 1)), len(ugc))
    num_pairs = min(int(rng.integers(0, MAX_SAMPLED_ITEMS + 1)), len(pairs))
    if not (num_ugc or num_pairs):
        num_ugc, num_pairs = min(MAX_SAMPLED_ITEMS, len(ugc)), min(MAX_SAMPLED_ITEMS, len(pairs))
    def pick(items, n):
        return tuple(items[i] for i in rng.choice(len(items), size=n, replace=False)) if n else ()

    return History(ugc=pick(ugc, num_ugc), pairs=pick(pairs, num_pairs), demographics=record.get(prefs.DEMOGRAPHICS) or "")


def ugc_section(history: History) -> str:
    """`**This person has commented on some posts:**` and the numbered items; '' when there are none."""
    if not history.ugc:
        return ""
    items = "".join(f"{i}. *Post:*\n{it['prompt']}\n\n*Comment:*\n{it['comment']}\n\n" for i, it in enumerate(history.ugc, 1))
    return UGC_HEADER + items


def pair_section(history: History) -> str:
    """`**This person has chosen or rejected comments on some posts:**` and the items; '' when none."""
    if not history.pairs:
        return ""
    items = "".join(
        f"{i}. *Post:*\n{it['prompt']}\n\n*Chosen:*\n{it['chosen']}\n\n*Rejected:*\n{it['rejected']}\n\n"
        for i, it in enumerate(history.pairs, 1)
    )
    return PAIR_HEADER + items


def ica_train_prompt(prompt: str, history: History) -> ChatPrompt:
    """ICA training layout (`format_data.py`): no `**Post:**` header, no demographics."""
    user = f"***Task***\n\n{prompt}\n\n***Historical Behavior***\n\n{ugc_section(history)}{pair_section(history)}\n\n***Response:***\n\n"
    return ChatPrompt(SYSTEM_ICA_TRAIN, user)


def ica_eval_prompt(prompt: str, history: History) -> ChatPrompt:
    """ICA evaluation layout (`loss_ica.py`), also the few-shot reference prompt (`loss_few_shot.py`):
    `**Post:**` header, UGC then pairs then the demographic text."""
    user = (
        f"***Task***\n\n**Post:**\n{prompt}\n\n***Historical Behavior and User Preferences***\n\n"
        f"{ugc_section(history)}{pair_section(history)}{history.demographics}\n\n***Response:***\n\n"
    )
    return ChatPrompt(SYSTEM_ICA_EVAL, user)


reference_prompt = ica_eval_prompt


def pba_prompt(prompt: str, profile: str, *, evaluation: bool) -> ChatPrompt:
    """PBA layout: `{prompt}\\n\\n` as the task in training, `**Post:**\\n{prompt}\\n\\n` in evaluation."""
    task = f"**Post:**\n{prompt}\n\n" if evaluation else f"{prompt}\n\n"
    return ChatPrompt(SYSTEM_PBA, f"***Task***\n\n{task}***User Preferences***\n\n{profile}\n\n***Response:***\n\n")


def soft_profile(num_slots: int) -> str:
    """The PBA `{profile}` for soft conditioning: `num_slots` slot markers, each one model input
    position that receives a soft preference token instead of a token embedding."""
    if num_slots < 1:
        raise ValueError(f"soft conditioning needs at least one slot, got {num_slots}")
    return SOFT_SLOT * num_slots


def record_profile(record: Mapping[str, Any], history: History, mode: str) -> str:
    """The PBA `{profile}`: "official" from the history's directions (mean, 0.6/0.4, fallback),
    "golden" from the record's own direction, "precomputed" the record's `profile` field."""
    if mode == "official":
        return prefs.official_profile(history.directions())
    if mode == "golden":
        if record.get(prefs.DIRECTION) is None:
            raise ValueError(f"golden profile needs the record's {prefs.DIRECTION!r}")
        return prefs.golden_profile(record[prefs.DIRECTION])
    if mode == "precomputed":
        if record.get(prefs.PROFILE) is None:
            raise ValueError(f"precomputed profile needs the record's {prefs.PROFILE!r} field")
        return record[prefs.PROFILE]
    raise ValueError(f"profile mode must be one of {PROFILE_MODES}, got {mode!r}")


def chat_text(tokenizer: Any, prompt: ChatPrompt) -> str:
    """The prompt through the tokenizer's chat template, ending with the assistant turn's header."""
    messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
