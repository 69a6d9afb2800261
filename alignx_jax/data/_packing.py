"""Tokenize preference pairs and pack them into static-shape batches with a shared prompt.

Token ids of a pair (DESIGN "Token ids for scoring"): the chat-formatted prompt (BOS first, added
when the chat template does not start with it), each response tokenized on its own followed by
EOS. Only response tokens (EOS included) are scored.

Shared-prefix row, one pair (segment s, prompt length P, chosen C, rejected R tokens)::

    tokens     p0 .. pP-1 | c0 .. cC-1     | pP-1  r0 .. rR-1
    positions  0  .. P-1  | P  .. P+C-1    | P-1   P  .. P+R-1
    roles      PROMPT     | CHOSEN         | REJECTED (the copy of pP-1 included)

The rejected block starts with a copy of the prompt's last token at the prompt's last position:
it attends to the prompt's first P-1 tokens and itself, so its hidden state equals that of pP-1,
and the position that predicts r0 is distinct from the one that predicts c0. One label per
position therefore serves both responses: `targets[t] = tokens[t+1]`, and the log-prob of the
token at t+1 is read at position t. `chosen_mask[t]` is True where t+1 holds a chosen token
(t = P-1 .. P+C-2 for this pair), `rejected_mask[t]` where t+1 holds a rejected token (the copy
.. rR-2). Attention: causal within a segment; chosen and rejected each see the prompt and their
own earlier tokens, never each other. Several pairs share a row when they fit (segments 1, 2, ..);
segment 0 is padding.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from alignx_jax.data._rendering import SOFT_SLOT, ChatPrompt, History, chat_text

PAD, PROMPT, CHOSEN, REJECTED = 0, 1, 2, 3
LONG_RESPONSE_POLICIES = ("drop", "truncate")
DEFAULT_SEQ_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair: `prompt` starts with BOS, each response ends with EOS unless truncated.
    `source` is the record's index in its source (-1 when unknown). `slots`: for a prompt rendered
    with soft slots (`data.SOFT_SLOT`), int32 [K], the prompt position of slot k (-1 when a
    left-truncation cut it); None for a plain prompt."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    source: int = -1
    slots: np.ndarray | None = None

    @property
    def packed_length(self) -> int:
        """Tokens the pair takes in a shared-prefix row: P + C + 1 + R."""
        return len(self.prompt) + len(self.chosen) + 1 + len(self.rejected)


@dataclasses.dataclass
class PackingStats:
    """What encoding and packing changed; nothing is cut without being counted here."""

    pairs: int = 0
    history_items_dropped: int = 0
    prompts_left_truncated: int = 0
    prompt_tokens_cut: int = 0
    responses_truncated: int = 0
    pairs_dropped: int = 0

    def add(self, other: PackingStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _prompt_ids(tokenizer: Any, prompt: ChatPrompt) -> list[int]:
    return prompt_ids_and_slots(tokenizer, prompt)[0]


def prompt_ids_and_slots(tokenizer: Any, prompt: ChatPrompt) -> tuple[list[int], list[int] | None]:
    """Prompt ids, and the positions of its soft slots (None when the prompt has no `SOFT_SLOT`).

    The text between slot markers is tokenized piece by piece and each marker becomes one position
    holding the EOS id (a placeholder: the model reads a soft token there, the reference its embedding).
    """
    text = chat_text(tokenizer, prompt)
    bos = tokenizer.bos_token_id
    if SOFT_SLOT not in text:
        ids, slots = _ids(tokenizer, text), None
    else:
        pieces = text.split(SOFT_SLOT)
        ids, slots = _ids(tokenizer, pieces[0]), []
        for piece in pieces[1:]:
            slots.append(len(ids))
            ids += [tokenizer.eos_token_id] + _ids(tokenizer, piece)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
        slots = None if slots is None else [p + 1 for p in slots]
    return ids, slots


def encode_pair(
    tokenizer: Any,
    render: Callable[[History], ChatPrompt],
    history: History,
    chosen: str,
    rejected: str,
    *,
    max_length: int,
    min_prompt_tokens: int = 16,
    on_long_response: str = "drop",
    stats: PackingStats | None = None,
    source: int = -1,
) -> EncodedPair | None:
    """Tokenize one pair so that it fits a shared-prefix row of `max_length` tokens.

    Over-long prompts lose whole history items first (last rendered first), then are
    left-truncated after BOS. Responses that leave fewer than `min_prompt_tokens` for the prompt
    are dropped (None) or truncated from the right, by `on_long_response`; either is counted in
    `stats`.
    """
    if on_long_response not in LONG_RESPONSE_POLICIES:
        raise ValueError(f"on_long_response must be one of {LONG_RESPONSE_POLICIES}, got {on_long_response!r}")
    if max_length < min_prompt_tokens + 3:
        raise ValueError(f"max_length {max_length} leaves no room for {min_prompt_tokens} prompt tokens and two responses")
    stats = stats if stats is not None else PackingStats()
    eos = tokenizer.eos_token_id
    chosen_ids, rejected_ids = _ids(tokenizer, chosen) + [eos], _ids(tokenizer, rejected) + [eos]
    response_budget = max_length - 1 - min_prompt_tokens
    if len(chosen_ids) + len(rejected_ids) > response_budget:
        if on_long_response == "drop":
            stats.pairs_dropped += 1
            return None
        half = response_budget // 2
        cap_chosen = max(half, response_budget - len(rejected_ids))
        cap_rejected = response_budget - min(len(chosen_ids), cap_chosen)
        stats.responses_truncated += int(len(chosen_ids) > cap_chosen) + int(len(rejected_ids) > cap_rejected)
        chosen_ids, rejected_ids = chosen_ids[:cap_chosen], rejected_ids[:cap_rejected]
    prompt_budget = max_length - 1 - len(chosen_ids) - len(rejected_ids)
    prompt_ids, slots = prompt_ids_and_slots(tokenizer, render(history))
    while len(prompt_ids) > prompt_budget and history.num_items:
        history = history.without_last_item()
        stats.history_items_dropped += 1
        prompt_ids, slots = prompt_ids_and_slots(tokenizer, render(history))
    if len(prompt_ids) > prompt_budget:
        cut = len(prompt_ids) - prompt_budget
        prompt_ids = prompt_ids[:1] + prompt_ids[1 + cut :]
        if slots is not None:
            slots = [p - cut if p >= 1 + cut else -1 for p in slots]
        stats.prompts_left_truncated += 1
        stats.prompt_tokens_cut += cut
    stats.pairs += 1
    as_array = lambda ids: np.asarray(ids, dtype=np.int32)  # noqa: E731
    return EncodedPair(as_array(prompt_ids), as_array(chosen_ids), as_array(rejected_ids), source,
                       None if slots is None else as_array(slots))


# The packed batch's arrays by shape: [B, T] per row, [P] per pair slot, and the [B, T] array only
# prompts with soft preference slots carry. Every consumer (the step, the scorer, multi-host
# assembly) reads these lists; none writes its own.
ROW_KEYS = ("tokens", "positions", "segment_ids", "roles", "targets", "chosen_mask", "rejected_mask", "pair_ids")
PAIR_KEYS = ("pair_valid", "pair_source")
OPTIONAL_ROW_KEYS = ("soft_slots",)


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """A static-shape batch; every array is [B, T] except `pair_valid` and `pair_source` [num_pair_slots].

    tokens int32, positions int32 (RoPE positions), segment_ids int32 (pair index within the row
    from 1; 0 = padding), roles int32 (PAD / PROMPT / CHOSEN / REJECTED), targets int32
    (= tokens[t+1] where scored, else 0), chosen_mask / rejected_mask bool (position t scores the
    response token at t+1), pair_ids int32 (index of the pair in the batch, -1 on padding) and
    pair_valid bool (which pair slots hold a pair). `soft_slots` int32 [B, T] only when the prompts
    were rendered with soft slots: the slot index k at a prompt's slot positions, -1 elsewhere
    (None otherwise, and then absent from `as_dict`).
    """

    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    roles: np.ndarray
    targets: np.ndarray
    chosen_mask: np.ndarray
    rejected_mask: np.ndarray
    pair_ids: np.ndarray
    pair_valid: np.ndarray
    pair_source: np.ndarray
    soft_slots: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.tokens.shape

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _soft_slots(pairs: Sequence[EncodedPair], rows: int, seq_len: int) -> np.ndarray | None:
    """-1 filled [rows, T] when any pair has soft slots (filled by `_place_slots`), else None."""
    return np.full((rows, seq_len), -1, np.int32) if any(p.slots is not None for p in pairs) else None


def _place_slots(soft_slots: np.ndarray | None, row: int, start: int, pair: EncodedPair) -> None:
    if soft_slots is not None and pair.slots is not None:
        for k, position in enumerate(pair.slots):
            if position >= 0:
                soft_slots[row, start + position] = k


def _empty(rows: int, seq_len: int) -> dict[str, np.ndarray]:
    z = lambda dtype, fill=0: np.full((rows, seq_len), fill, dtype=dtype)  # noqa: E731
    return dict(
        tokens=z(np.int32), positions=z(np.int32), segment_ids=z(np.int32), roles=z(np.int32),
        targets=z(np.int32), chosen_mask=z(bool), rejected_mask=z(bool), pair_ids=z(np.int32, -1),
    )


def _place(a: dict[str, np.ndarray], row: int, start: int, ids: np.ndarray, positions: np.ndarray,
           role: int, segment: int, pair: int, score_mask: str | None, scored_from: int) -> None:
    """Write one block; positions t in [start+scored_from-1, end-2] score the token at t+1."""
    end = start + len(ids)
    a["tokens"][row, start:end] = ids
    a["positions"][row, start:end] = positions
    a["roles"][row, start:end] = role
    a["segment_ids"][row, start:end] = segment
    a["pair_ids"][row, start:end] = pair
    if score_mask is not None:
        first = start + scored_from - 1
        a["targets"][row, first : end - 1] = a["tokens"][row, first + 1 : end]
        a[score_mask][row, first : end - 1] = True


def pack_rows(
    rows_of_pairs: Sequence[Sequence[EncodedPair]], *, seq_len: int, num_rows: int | None = None,
    num_pair_slots: int | None = None,
) -> PackedBatch:
    """Shared-prefix batch: row i holds the pairs `rows_of_pairs[i]` in order (layout in the module doc)."""
    num_rows = len(rows_of_pairs) if num_rows is None else num_rows
    total = sum(len(r) for r in rows_of_pairs)
    num_pair_slots = total if num_pair_slots is None else num_pair_slots
    if len(rows_of_pairs) > num_rows or total > num_pair_slots:
        raise ValueError(f"{len(rows_of_pairs)} rows / {total} pairs exceed {num_rows} rows / {num_pair_slots} pair slots")
    a = _empty(num_rows, seq_len)
    soft_slots = _soft_slots([p for pairs in rows_of_pairs for p in pairs], num_rows, seq_len)
    source = np.full((num_pair_slots,), -1, np.int32)
    pair = 0
    for row, pairs in enumerate(rows_of_pairs):
        start = 0
        for segment, p in enumerate(pairs, 1):
            if start + p.packed_length > seq_len:
                raise ValueError(f"row {row}: pairs need {start + p.packed_length} tokens, more than seq_len {seq_len}")
            n_p, n_c, n_r = len(p.prompt), len(p.chosen), len(p.rejected)
            _place(a, row, start, p.prompt, np.arange(n_p), PROMPT, segment, pair, None, 0)
            _place_slots(soft_slots, row, start, p)
            # Chosen scoring starts at the prompt's last position, which predicts c0.
            a["targets"][row, start + n_p - 1] = p.chosen[0]
            a["chosen_mask"][row, start + n_p - 1] = True
            _place(a, row, start + n_p, p.chosen, n_p + np.arange(n_c), CHOSEN, segment, pair, "chosen_mask", 1)
            rejected_block = np.concatenate([p.prompt[-1:], p.rejected])
            _place(a, row, start + n_p + n_c, rejected_block, n_p - 1 + np.arange(n_r + 1), REJECTED, segment, pair,
                   "rejected_mask", 1)
            source[pair] = p.source
            start += p.packed_length
            pair += 1
    pair_valid = np.arange(num_pair_slots) < total
    return PackedBatch(**a, pair_valid=pair_valid, pair_source=source, soft_slots=soft_slots)


def pack_two_rows(pairs: Sequence[EncodedPair], *, seq_len: int, num_pair_slots: int | None = None) -> PackedBatch:
    """The plain layout: row i = [prompt_i | chosen_i], row n + i = [prompt_i | rejected_i] (n = slots)."""
    n = len(pairs) if num_pair_slots is None else num_pair_slots
    if len(pairs) > n:
        raise ValueError(f"{len(pairs)} pairs exceed {n} pair slots")
    a = _empty(2 * n, seq_len)
    soft_slots = _soft_slots(pairs, 2 * n, seq_len)
    source = np.full((n,), -1, np.int32)
    for i, p in enumerate(pairs):
        source[i] = p.source
        for row, response, role, mask in ((i, p.chosen, CHOSEN, "chosen_mask"), (n + i, p.rejected, REJECTED, "rejected_mask")):
            ids = np.concatenate([p.prompt, response])
            if len(ids) > seq_len:
                raise ValueError(f"pair {i}: {len(ids)} tokens exceed seq_len {seq_len}")
            _place(a, row, 0, ids, np.arange(len(ids)), role, 1, i, mask, len(p.prompt))
            a["roles"][row, : len(p.prompt)] = PROMPT
            _place_slots(soft_slots, row, 0, p)
    return PackedBatch(**a, pair_valid=np.arange(n) < len(pairs), pair_source=source, soft_slots=soft_slots)


def attention_mask(segment_ids, roles, positions):
    """bool [B, T, T] (query, key): same non-padding segment, key not after query, and either the
    same role or a prompt key before the query block's first position (so rejected, whose block
    starts with its own copy of the last prompt token, sees prompt tokens 0..P-2; chosen sees all).

    Works on numpy or jax arrays (inside jit too); pure function of the batch's int arrays.
    """
    xp = _array_module(segment_ids)
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    role_q, role_k = roles[:, :, None], roles[:, None, :]
    pos_k = positions[:, None, :]
    t = segment_ids.shape[1]
    index = xp.arange(t)
    causal = index[None, :, None] >= index[None, None, :]
    same_segment = (seg_q == seg_k) & (seg_q > 0)
    same_block = same_segment & (role_q == role_k)
    block_start = xp.min(xp.where(same_block, pos_k, np.iinfo(np.int32).max), axis=-1)[:, :, None]
    shared_prefix = (role_k == PROMPT) & (role_q != PROMPT) & (pos_k < block_start)
    return same_segment & causal & ((role_q == role_k) | shared_prefix)


def pair_sums(token_values, mask, pair_ids, num_pair_slots: int):
    """Per-pair sums [num_pair_slots] of `token_values` [B, T] where `mask` [B, T] is True.

    E.g. the summed log-probs of each chosen response: pair_sums(logp, batch.chosen_mask,
    batch.pair_ids, len(batch.pair_valid)). Works on numpy or jax arrays (inside jit too).
    """
    xp = _array_module(token_values)
    ids = xp.where(mask, pair_ids, num_pair_slots).reshape(-1)  # masked-out tokens go to a dropped extra slot
    values = xp.where(mask, token_values, 0).reshape(-1)
    if xp is np:
        return np.bincount(ids, weights=values, minlength=num_pair_slots + 1)[:num_pair_slots].astype(token_values.dtype)
    import jax

    return jax.ops.segment_sum(values, ids, num_segments=num_pair_slots + 1)[:num_pair_slots]


def _array_module(x):
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Static shapes: `rows` per batch, T from `seq_lengths` (smallest that holds the longest row),
    at most `max_pairs_per_row` pairs per row (pair slots = rows * max_pairs_per_row)."""

    rows: int
    seq_lengths: tuple[int, ...] = DEFAULT_SEQ_LENGTHS
    max_pairs_per_row: int = 8

    def __post_init__(self):
        if self.rows < 1 or self.max_pairs_per_row < 1:
            raise ValueError(f"rows and max_pairs_per_row must be >= 1, got {self.rows}, {self.max_pairs_per_row}")
        if not self.seq_lengths or list(self.seq_lengths) != sorted(set(self.seq_lengths)):
            raise ValueError(f"seq_lengths must be strictly increasing, got {self.seq_lengths}")

    @property
    def max_length(self) -> int:
        return self.seq_lengths[-1]

    @property
    def num_pair_slots(self) -> int:
        return self.rows * self.max_pairs_per_row

    def bucket(self, length: int) -> int:
        """The smallest static length that holds `length` tokens."""
        for seq_len in self.seq_lengths:
            if length <= seq_len:
                return seq_len
        raise ValueError(f"{length} tokens exceed the largest static length {self.max_length}")


class RowPacker:
    """Greedy packer: fills rows in order; `add` returns False when the pair must open the next batch."""

    def __init__(self, config: PackingConfig):
        self.config = config
        self.rows: list[list[EncodedPair]] = [[]]
        self.used = [0]

    def add(self, pair: EncodedPair) -> bool:
        cfg = self.config
        if pair.packed_length > cfg.max_length:
            raise ValueError(f"pair of {pair.packed_length} tokens exceeds the largest static length {cfg.max_length}")
        if self.used[-1] + pair.packed_length > cfg.max_length or len(self.rows[-1]) == cfg.max_pairs_per_row:
            if len(self.rows) == cfg.rows:
                return False
            self.rows.append([])
            self.used.append(0)
        self.rows[-1].append(pair)
        self.used[-1] += pair.packed_length
        return True

    def add_all(self, pairs: Sequence[EncodedPair]) -> bool:
        """Adds every pair or none (a unit that must share a batch, e.g. twins); False: none was added."""
        rows, used = [list(r) for r in self.rows], list(self.used)
        if all(self.add(pair) for pair in pairs):
            return True
        self.rows, self.used = rows, used
        return False

    @property
    def empty(self) -> bool:
        return not self.rows[0]

    def batch(self) -> PackedBatch:
        cfg = self.config
        return pack_rows(self.rows, seq_len=cfg.bucket(max(self.used)), num_rows=cfg.rows, num_pair_slots=cfg.num_pair_slots)


def pack_stream(pairs: Iterable[EncodedPair | None], config: PackingConfig) -> Iterator[PackedBatch]:
    """Static-shape batches from a stream of encoded pairs (None entries, dropped pairs, are skipped)."""
    packer = RowPacker(config)
    for pair in pairs:
        if pair is None:
            continue
        if not packer.add(pair):
            yield packer.batch()
            packer = RowPacker(config)
            packer.add(pair)
    if not packer.empty:
        yield packer.batch()
