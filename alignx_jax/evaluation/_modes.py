"""Evaluation modes: what the policy and the reference see of a record's persona.

The reference reads the official few-shot prompt (`data.reference_prompt`, the ICA evaluation
layout) with the persona's history: the paper's metric. With `reference_prompt="policy"` it reads the
policy's own prompt instead: DPO's implicit reward against the start model, the reward view that
training reports (`eval_reward_accuracy`), which does not credit the reference with what it reads
from a history the policy is not shown. A mode renders the policy's prompt:

- `ica`: the history as text, in the ICA evaluation layout (`layout="eval"`, the official
  `loss_ica.py`; identical to the reference prompt, so one packed batch serves both models) or in
  the training layout (`layout="train"`, the layout the model was trained on).
- `pba_text`: a profile of preference labels in the PBA evaluation layout (`loss_pba.py`,
  `layout="eval"`) or in the PBA training layout (`layout="train"`).
- `pba_soft`: a policy trained with a preference bridge (`alignx train` with a `bridge:` section,
  saved as `<model>/bridge/`) reads the bridge's output for the shown history: soft preference
  tokens in the PBA layout's profile slots (it overrides `EvalMode.score_policy`, which the scoring
  loop calls with the batch's records and shown histories), or, for a text-conditioned bridge, the
  MAP profile text.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError

PERSONA_ITEMS = ("ugc", "pair", "demo", "mixed")
MODE_NAMES = ("ica", "pba_text", "pba_soft")
TEXT_MODES = ("ica", "pba_text")
POLICY_LAYOUTS = ("eval", "train")  # the policy prompt's layouts, of ICA and of PBA text
REFERENCE_PROMPTS = ("few_shot", "policy")  # what the reference reads: the paper's prompt, or the policy's
PROFILE_SOURCES = ("auto", "official", "golden", "precomputed", "learned")
PROFILE_BATCH = 32  # shown histories per bridge pass of the "learned" profile source

Render = Callable[[data.History], data.ChatPrompt]


def persona_history(record: Mapping[str, Any], *, items: str = "mixed", history: int | None = None) -> data.History:
    """The persona shown for a record: the item kinds of `items` ("ugc" comments, "pair" earlier
    choices, "demo" the demographic text, "mixed" all three), at most `history` UGC + pair items.

    The cap takes UGC items and pairs alternately (the first UGC item, the first pair, the second
    UGC item, ...), so a small history still mixes both kinds; None keeps every item. The
    demographic text is not an item and is not capped.
    """
    if items not in PERSONA_ITEMS:
        raise ValueError(f"persona items must be one of {PERSONA_ITEMS}, got {items!r}")
    if history is not None and history < 0:
        raise ValueError(f"history must be >= 0 items, got {history}")
    full = data.full_history(record)
    ugc = full.ugc if items in ("ugc", "mixed") else ()
    pairs = full.pairs if items in ("pair", "mixed") else ()
    demographics = full.demographics if items in ("demo", "mixed") else ""
    if history is not None:
        num_ugc = num_pairs = 0
        while num_ugc + num_pairs < history and (num_ugc < len(ugc) or num_pairs < len(pairs)):
            if num_ugc < len(ugc) and (num_ugc <= num_pairs or num_pairs == len(pairs)):
                num_ugc += 1
            else:
                num_pairs += 1
        ugc, pairs = ugc[:num_ugc], pairs[:num_pairs]
    return data.History(ugc=tuple(ugc), pairs=tuple(pairs), demographics=demographics)


def item_types(history: data.History) -> str:
    """The kinds of persona items a rendered history holds: "ugc+pair+demo", "pair", ..., or "none"."""
    kinds = [name for name, present in (("ugc", history.ugc), ("pair", history.pairs), ("demo", history.demographics))
             if present]
    return "+".join(kinds) or "none"


@dataclasses.dataclass(frozen=True)
class EvalMode:
    """How the policy's prompt is rendered; the reference's is the few-shot prompt for every mode,
    or (`reference_prompt="policy"`) the policy's own."""

    name: str
    reference_prompt: str = "few_shot"

    def __post_init__(self):
        if self.reference_prompt not in REFERENCE_PROMPTS:
            raise ValueError(f"reference_prompt must be one of {REFERENCE_PROMPTS}, got {self.reference_prompt!r}")

    @property
    def shares_reference_prompt(self) -> bool:
        """True when the policy prompt is the reference prompt, so one packed batch serves both."""
        return self.reference_prompt == "policy"

    def policy_render(self, record: Mapping[str, Any], index: int) -> Render:
        raise NotImplementedError

    def reference_render(self, record: Mapping[str, Any], index: int) -> Render:
        if self.reference_prompt == "policy":
            return self.policy_render(record, index)
        prompt = record[prefs.PROMPT]
        return lambda history: data.reference_prompt(prompt, history)

    def prepare(self, records: Sequence[Mapping[str, Any]], histories: Sequence[data.History]) -> None:
        """Work for a chunk of records before they are rendered one by one (their shown `histories`):
        a learned profile source runs its bridge over them in batches here. No work by default."""
        del records, histories

    def score_policy(self, score: Callable[..., Any], params: Any, config: Any, arrays: Mapping[str, Any],
                     records: list[Mapping[str, Any]], histories: list[data.History] | None = None, **kwargs) -> Any:
        """The policy's `PairLogprobs` of a packed batch. Text modes call the shared scorer as is;
        a soft mode adds its inputs (from `records` and `histories`, the batch's shown personas)."""
        del records, histories
        return score(params, config, arrays, **kwargs)


@dataclasses.dataclass(frozen=True)
class IcaMode(EvalMode):
    name: str = "ica"
    layout: str = "eval"

    def __post_init__(self):
        super().__post_init__()
        if self.layout not in POLICY_LAYOUTS:
            raise ValueError(f"ICA layout must be one of {POLICY_LAYOUTS}, got {self.layout!r}")

    @property
    def shares_reference_prompt(self) -> bool:
        return self.layout == "eval" or self.reference_prompt == "policy"

    def policy_render(self, record: Mapping[str, Any], index: int) -> Render:
        prompt = record[prefs.PROMPT]
        layout = data.ica_eval_prompt if self.layout == "eval" else data.ica_train_prompt
        return lambda history: layout(prompt, history)


@dataclasses.dataclass(frozen=True)
class PbaTextMode(EvalMode):
    """`profile`: "precomputed" (the benchmark's `profile` field), "official" (the official rule over
    the shown history's direction vectors), "golden" (the record's own direction: an upper bound,
    the paper's "PBA with the true preference directions"), "learned" (the MAP labels of a learned
    preference bridge, `bridge`, reading the shown history), "auto" (precomputed when the record has
    a `profile`, else official). `layout`: the PBA evaluation layout ("eval") or the training one
    ("train", the layout `alignx train` renders PBA records in)."""

    name: str = "pba_text"
    profile: str = "auto"
    layout: str = "eval"
    bridge: Any = dataclasses.field(default=None, compare=False)
    # "learned": the profiles `prepare` computed for the current chunk, id(history) -> (history, text).
    _profiles: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.profile not in PROFILE_SOURCES:
            raise ValueError(f"profile source must be one of {PROFILE_SOURCES}, got {self.profile!r}")
        if self.layout not in POLICY_LAYOUTS:
            raise ValueError(f"PBA layout must be one of {POLICY_LAYOUTS}, got {self.layout!r}")
        if (self.profile == "learned") != (self.bridge is not None):
            raise InputError("profile source 'learned' goes with a preference bridge, and a bridge with it: "
                             "PbaTextMode(profile='learned', "
                             "bridge=bridge.PersonaBridge(bridge.load(folder), tokenizer))")

    def prepare(self, records: Sequence[Mapping[str, Any]], histories: Sequence[data.History]) -> None:
        """Profile source "learned": the MAP profiles of `histories`, PROFILE_BATCH at a time (one compiled
        shape: the last batch is padded with its first history), for `profile_text` to look up."""
        if self.profile != "learned":
            return
        from alignx_jax import bridge

        self._profiles.clear()
        for start in range(0, len(histories), PROFILE_BATCH):
            part, part_records = list(histories[start:start + PROFILE_BATCH]), list(records[start:start + PROFILE_BATCH])
            pad = PROFILE_BATCH - len(part)
            dists = self.bridge.distributions(part + part[:1] * pad, part_records + part_records[:1] * pad)
            for history, dist in zip(part, dists):
                self._profiles[id(history)] = (history, bridge.map_profile(dist))

    def profile_text(self, record: Mapping[str, Any], history: data.History, index: int) -> str:
        source = self.profile
        if source == "learned":
            from alignx_jax import bridge

            prepared = self._profiles.get(id(history))
            if prepared is not None and prepared[0] is history:
                return prepared[1]
            return bridge.map_profile(self.bridge.distributions([history], [record])[0])
        if source == "auto":
            source = "precomputed" if record.get(prefs.PROFILE) else "official"
        try:
            return data.record_profile(record, history, source)
        except ValueError as error:
            raise InputError(f"record {index}: --mode pba_text with profile {source!r}: {error}") from None

    def policy_render(self, record: Mapping[str, Any], index: int) -> Render:
        prompt = record[prefs.PROMPT]
        # The profile is drawn from the whole shown history, once: shortening the history to fit a
        # row (the reference prompt's concern) leaves the policy's profile as it is.
        cache: dict[str, str] = {}

        def render(history: data.History) -> data.ChatPrompt:
            if "profile" not in cache:
                cache["profile"] = self.profile_text(record, history, index)
            return data.pba_prompt(prompt, cache["profile"], evaluation=self.layout == "eval")

        return render


@dataclasses.dataclass(frozen=True, eq=False)
class PbaSoftMode(EvalMode):
    """The policy conditioned by its own preference bridge (`bridge.PersonaBridge`) on the shown
    history, in the PBA evaluation layout: soft tokens in the profile's slots, or (a text-conditioned
    bridge) the MAP profile text."""

    name: str = "pba_soft"
    bridge: Any = None

    def __post_init__(self):
        super().__post_init__()
        if self.bridge is None:
            raise InputError("mode pba_soft needs the policy's preference bridge: "
                             "PbaSoftMode(bridge=bridge.PersonaBridge(bridge.load(policy_folder), tokenizer))")
        if self.bridge.soft and self.reference_prompt == "policy":
            raise InputError("mode pba_soft with soft tokens: the reference cannot read the policy's prompt (its "
                             "soft tokens come from the policy's bridge); score it against the few-shot prompt")
        # A text-conditioned bridge: the policy reads its MAP profile text, as pba_text's learned source.
        object.__setattr__(self, "_text", None if self.bridge.soft else PbaTextMode(profile="learned",
                                                                                      bridge=self.bridge))

    def prepare(self, records: Sequence[Mapping[str, Any]], histories: Sequence[data.History]) -> None:
        if self._text is not None:
            self._text.prepare(records, histories)

    def policy_render(self, record: Mapping[str, Any], index: int) -> Render:
        prompt = record[prefs.PROMPT]
        if self._text is not None:
            return self._text.policy_render(record, index)
        text = data.soft_profile(self.bridge.num_slots)
        return lambda history: data.pba_prompt(prompt, text, evaluation=True)

    def score_policy(self, score, params, config, arrays, records, histories=None, **kwargs):
        if not self.bridge.soft:
            return score(params, config, arrays, **kwargs)
        import numpy as np

        tokens = self.bridge.soft_tokens(self.bridge.distributions(histories, records))
        num_pairs = kwargs.get("num_rows", arrays["pair_ids"].shape[0])
        padded = np.zeros((num_pairs, *tokens.shape[1:]), np.float32)
        padded[:len(tokens)] = tokens
        return score(params, config, arrays, soft_tokens=padded, **kwargs)


def resolve_mode(mode: str | EvalMode, *, layout: str = "eval", profile: str = "auto", bridge: Any = None,
                 reference_prompt: str = "few_shot") -> EvalMode:
    """An `EvalMode` from its name ("ica", "pba_text"; `bridge` a `bridge.PersonaBridge` for the
    profile source "learned"); an `EvalMode` passes through."""
    if isinstance(mode, EvalMode):
        return mode
    if mode == "ica":
        return IcaMode(layout=layout, reference_prompt=reference_prompt)
    if mode == "pba_text":
        return PbaTextMode(profile=profile, bridge=bridge, layout=layout, reference_prompt=reference_prompt)
    if mode == "pba_soft":
        raise InputError("mode pba_soft needs the policy's preference bridge: pass "
                         "evaluation.PbaSoftMode(bridge=bridge.PersonaBridge(bridge.load(policy), tokenizer))")
    raise InputError(f"unknown evaluation mode {mode!r}, expected one of {MODE_NAMES}")
