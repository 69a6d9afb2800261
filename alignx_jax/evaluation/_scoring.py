"""The scoring loop: records -> persona prompts -> shared-prefix packed rows -> per-pair log-probs.

Each record becomes one pair row `[prompt | chosen | rejected]` (the prompt runs once for both
responses; `data.encode_pair` gives the token ids: prompt ids, each response's own ids, EOS). Pairs
are sorted by length within a chunk of records and batched `rows` at a time, the row length
bucketed (`seq_lengths`) and the rows per batch bounded by `batch_tokens`, so a run compiles a
few shapes. The policy and the reference are scored on the same packed batch when their prompts
are the same (ICA evaluation layout = the few-shot reference prompt); both go through the one
scoring service, `PairScorer` (on a mesh, forward only, scored tokens only).

`score_records` works in memory; `evaluate_to_folder` (what `alignx eval` runs) adds the files.
Nothing here touches a file.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.evaluation import _metrics, _modes
from alignx_jax.evaluation._scorer import PairScorer

# Row lengths: fine steps where benchmark prompts live (a few hundred to a few thousand tokens),
# coarser above; the largest is the official 8192-token budget.
EVAL_SEQ_LENGTHS = (128, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 6144, 8192)
DEFAULT_ROWS = 8
DEFAULT_BATCH_TOKENS = 8192
CHUNK_RECORDS = 512  # records encoded and length-sorted together (a progress step never waits for more)

Model = tuple[Any, Any]  # (params, LlamaConfig)

@dataclasses.dataclass
class _Encoded:
    """One (record, history setting) ready to pack: its pairs and the row it will become."""

    position: int  # in the chunk
    policy: data.EncodedPair
    reference: data.EncodedPair
    record: Mapping[str, Any]
    row: dict
    history: data.History | None = None  # the persona the policy's prompt shows

    @property
    def length(self) -> int:
        return max(self.policy.packed_length, self.reference.packed_length)


class _Capture:
    """Wraps a renderer and remembers the last history and prompt it rendered (encode_pair renders
    again after dropping history items to fit, so the last call is the prompt that was tokenized)."""

    def __init__(self, render: _modes.Render):
        self.render, self.history, self.prompt = render, None, None

    def __call__(self, history: data.History) -> data.ChatPrompt:
        self.history, self.prompt = history, self.render(history)
        return self.prompt


def _histories(history: int | Sequence[int] | None) -> list[int | None]:
    if history is None or isinstance(history, (int, np.integer)):
        settings = [history]
    else:
        settings = list(dict.fromkeys(history))
        if not settings:
            raise ValueError("history: give None, an int or a non-empty list of ints")
    for cap in settings:
        if cap is not None and (not isinstance(cap, (int, np.integer)) or cap < 0):
            raise ValueError(f"history settings must be ints >= 0 (or None for every item), got {cap!r}")
    return [None if cap is None else int(cap) for cap in settings]


def _encode(record: Mapping[str, Any], index: int, cap: int | None, position: int, history: data.History, *,
            mode: _modes.EvalMode, tokenizer: Any, reference_tokenizer: Any, max_length: int) -> _Encoded:
    chosen, rejected = record[prefs.CHOSEN], record[prefs.REJECTED]

    def encode(tok, render):
        stats = data.PackingStats()
        pair = data.encode_pair(tok, render, history, chosen, rejected, max_length=max_length,
                                on_long_response="truncate", stats=stats, source=position)
        return pair, stats

    policy_render = _Capture(mode.policy_render(record, index))
    policy, policy_stats = encode(tokenizer, policy_render)
    if mode.shares_reference_prompt and reference_tokenizer is tokenizer:
        reference, reference_stats, reference_render = policy, policy_stats, policy_render
    else:
        reference_render = _Capture(mode.reference_render(record, index))
        reference, reference_stats = encode(reference_tokenizer, reference_render)
    shown = reference_render.history  # the policy's history is the same unless its prompt had to drop items
    row = {
        "index": index,
        "persona": data.persona_key(record),
        "history": cap,
        "history_size": policy_render.history.num_items,
        "item_types": _modes.item_types(policy_render.history),
        "policy_prompt": data.chat_text(tokenizer, policy_render.prompt),
        "reference_prompt": data.chat_text(reference_tokenizer, reference_render.prompt),
        "reference_history_size": shown.num_items,
        "chosen": chosen,
        "rejected": rejected,
        "truncated": bool(policy_stats.history_items_dropped or policy_stats.prompts_left_truncated
                          or policy_stats.responses_truncated or reference_stats.history_items_dropped
                          or reference_stats.prompts_left_truncated or reference_stats.responses_truncated),
    }
    return _Encoded(position, policy, reference, record, row, policy_render.history)


def _rows_for(seq_len: int, rows: int, batch_tokens: int, scorer: PairScorer) -> int:
    return scorer.rows_for(min(rows, batch_tokens // seq_len))


def _pack(pairs: list[data.EncodedPair], seq_lengths: tuple[int, ...], num_rows: int) -> dict:
    seq_len = data.PackingConfig(rows=num_rows, seq_lengths=seq_lengths).bucket(max(p.packed_length for p in pairs))
    arrays = data.pack_rows([[p] for p in pairs], seq_len=seq_len, num_rows=num_rows, num_pair_slots=num_rows).as_dict()
    return {k: arrays[k] for k in data.ROW_KEYS + data.OPTIONAL_ROW_KEYS if k in arrays}


def _same_model(policy: Model, reference: Model) -> bool:
    return reference is policy or (reference[0] is policy[0] and reference[1] == policy[1])


def iter_scores(
    records: Sequence[Mapping[str, Any]],
    *,
    policy: Model,
    reference: Model,
    tokenizer: Any,
    reference_tokenizer: Any = None,
    mode: str | _modes.EvalMode = "ica",
    beta: float = _metrics.DEFAULT_BETA,
    history: int | Sequence[int] | None = None,
    persona_items: str = "mixed",
    indices: Sequence[int] | None = None,
    skip: Iterable[tuple[int, int | None]] = (),
    rows: int = DEFAULT_ROWS,
    seq_lengths: Sequence[int] = EVAL_SEQ_LENGTHS,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_records: int = CHUNK_RECORDS,
    mesh: jax.sharding.Mesh | None = None,
    kernel_impl: str = "auto",
) -> Iterator[list[dict]]:
    """Score records batch by batch; yields the score rows of each batch as soon as it is done.

    Arguments as `score_records`, plus `skip`: (index, history setting) pairs already scored (a
    resumed run), and `chunk_records`: how many records are encoded and length-sorted together.
    """
    mode = _modes.resolve_mode(mode)
    if persona_items not in _modes.PERSONA_ITEMS:
        raise ValueError(f"persona_items must be one of {_modes.PERSONA_ITEMS}, got {persona_items!r}")
    seq_lengths = tuple(seq_lengths)
    if rows < 1 or batch_tokens < 1 or chunk_records < 1:
        raise ValueError(f"rows, batch_tokens and chunk_records must be >= 1, got {rows}, {batch_tokens}, {chunk_records}")
    if indices is None:
        indices = range(len(records))
    elif len(indices) != len(records):
        raise ValueError(f"indices has {len(indices)} entries for {len(records)} records")
    reference_tokenizer = tokenizer if reference_tokenizer is None else reference_tokenizer
    skip = set(skip)
    work = [(record, int(index), cap) for cap in _histories(history) for record, index in zip(records, indices)
            if (int(index), cap) not in skip]
    same_model = _same_model(policy, reference)
    scorer = PairScorer(mesh, kernel_impl=kernel_impl)
    policy = (scorer.place(*policy), policy[1])
    reference = policy if same_model else (scorer.place(*reference), reference[1])
    score = lambda params, config, arrays, num_rows, soft_tokens=None: scorer(  # noqa: E731
        params, config, arrays, num_pairs=num_rows, soft_tokens=soft_tokens)
    for start in range(0, len(work), chunk_records):
        part = work[start:start + chunk_records]
        histories = [_modes.persona_history(record, items=persona_items, history=cap) for record, _, cap in part]
        mode.prepare([record for record, _, _ in part], histories)
        chunk = [_encode(record, index, cap, position, history, mode=mode, tokenizer=tokenizer,
                         reference_tokenizer=reference_tokenizer, max_length=seq_lengths[-1])
                 for position, ((record, index, cap), history) in enumerate(zip(part, histories))]
        # Longest first: the largest shape (and any out-of-memory) shows up at once, and each batch
        # holds pairs of similar length, so little of it is padding.
        chunk.sort(key=lambda e: (-e.length, e.position))
        i = 0
        while i < len(chunk):
            seq_len = data.PackingConfig(rows=1, seq_lengths=seq_lengths).bucket(chunk[i].length)
            num_rows = _rows_for(seq_len, rows, batch_tokens, scorer)
            left = len(chunk) - i
            if left < num_rows:  # the last batch: a power of two of rows, not a full batch of empty ones
                num_rows = min(num_rows, scorer.rows_for(1 << (left - 1).bit_length()))
            group = chunk[i:i + num_rows]
            i += num_rows
            policy_arrays = _pack([e.policy for e in group], seq_lengths, num_rows)
            group_records = [e.record for e in group]
            pol = mode.score_policy(score, policy[0], policy[1], policy_arrays, group_records,
                                    histories=[e.history for e in group], num_rows=num_rows)
            shared_prompt = all(e.reference is e.policy for e in group)
            if same_model and shared_prompt:
                ref = pol
            elif shared_prompt:
                ref = score(reference[0], reference[1], policy_arrays, num_rows)
            else:
                ref = score(reference[0], reference[1], _pack([e.reference for e in group], seq_lengths, num_rows),
                            num_rows)
            out = []
            for slot, e in enumerate(group):
                row = dict(e.row)
                row.update(
                    policy_chosen_logp=float(pol.chosen[slot]), policy_rejected_logp=float(pol.rejected[slot]),
                    ref_chosen_logp=float(ref.chosen[slot]), ref_rejected_logp=float(ref.rejected[slot]),
                    chosen_tokens=int(pol.chosen_tokens[slot]), rejected_tokens=int(pol.rejected_tokens[slot]),
                )
                row["reward_chosen"] = beta * (row["policy_chosen_logp"] - row["ref_chosen_logp"])
                row["reward_rejected"] = beta * (row["policy_rejected_logp"] - row["ref_rejected_logp"])
                row["correct"] = bool(_metrics.correct([row], beta=beta)[0])
                row["correct_logp"] = bool(_metrics.correct_logp([row])[0])
                out.append(row)
            yield out


def score_records(
    records: Sequence[Mapping[str, Any]],
    *,
    policy: Model,
    reference: Model,
    tokenizer: Any,
    reference_tokenizer: Any = None,
    mode: str | _modes.EvalMode = "ica",
    beta: float = _metrics.DEFAULT_BETA,
    history: int | Sequence[int] | None = None,
    persona_items: str = "mixed",
    indices: Sequence[int] | None = None,
    rows: int = DEFAULT_ROWS,
    seq_lengths: Sequence[int] = EVAL_SEQ_LENGTHS,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    mesh: jax.sharding.Mesh | None = None,
    kernel_impl: str = "auto",
    progress: Callable[[int], Any] | None = None,
) -> list[dict]:
    """Score each record's (chosen, rejected) under the policy and the reference, in memory.

    Args:
      records: AlignX records (validated: `data.load_records`), any order.
      policy, reference: (params, LlamaConfig) each. The same tuple (or the same params and config)
        is scored once: its rewards are then all 0 (ties) and only `accuracy_logp` means anything.
      tokenizer: the policy's tokenizer (a transformers tokenizer, or any object with `encode`,
        `apply_chat_template`, `bos_token_id` and `eos_token_id`); reference_tokenizer defaults to it.
      mode: "ica" | "pba_text" | an `EvalMode` (what the policy's prompt shows of the persona;
        the reference gets the few-shot ICA prompt, or the policy's own with the mode's
        `reference_prompt="policy"`).
      beta: the reward scale of the per-row `reward_*` and `correct` fields.
      history: at most this many UGC + pair items per persona (None: all); a list scores each
        record once per setting (a robustness sweep; `summarize` breaks it down by history size).
      persona_items: "ugc" | "pair" | "demo" | "mixed" (every kind the record has).
      indices: the record numbers written to the rows (default 0..n-1), e.g. file positions.
      rows, seq_lengths, batch_tokens: at most `rows` pairs and `batch_tokens` tokens per batch,
        row lengths from `seq_lengths` (the largest is the per-pair token budget; longer prompts
        lose history items, then are left-truncated, and the row says `truncated`).
      mesh: a ('data', 'fsdp', 'tensor') mesh (`models.sharding.make_mesh`; default: every device
        on 'fsdp', as training): the batch rows split over (data, fsdp), rounded up to a multiple of
        them; params are laid out by the model's sharding rules (`PairScorer`).
      progress: called with the number of records each finished batch scored.

    Returns:
      One dict per (record, history setting), sorted by (index, history), with the scores.jsonl
      keys: index, persona, history, history_size, item_types, policy_prompt, reference_prompt
      (the rendered chat texts), reference_history_size, chosen, rejected, truncated,
      policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp (summed
      response log-probs with EOS), chosen_tokens, rejected_tokens, reward_chosen,
      reward_rejected, correct (r(chosen) > r(rejected)), correct_logp.
    """
    out = []
    for batch_rows in iter_scores(records, policy=policy, reference=reference, tokenizer=tokenizer,
                                  reference_tokenizer=reference_tokenizer, mode=mode, beta=beta, history=history,
                                  persona_items=persona_items, indices=indices, rows=rows, seq_lengths=seq_lengths,
                                  batch_tokens=batch_tokens, mesh=mesh, kernel_impl=kernel_impl):
        out.extend(batch_rows)
        if progress is not None:
            progress(len(batch_rows))
    return sorted(out, key=_metrics.row_order)
