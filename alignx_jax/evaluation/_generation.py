"""Generation for win-rate studies: each record's persona prompt -> a sampled answer.

The paper samples with temperature 0.9, top-k 10, top-p 0.95 and up to 512 new tokens
(`PAPER_SAMPLING`). Prompts are batched by length and left-padded to a bucketed width, so a run
compiles a few shapes; the decoder is `models.decoding.generate` (KV cache, stops at EOS).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.evaluation import _modes
from alignx_jax.models import decoding

PAPER_SAMPLING = decoding.Sampling(max_new_tokens=512, temperature=0.9, top_k=10, top_p=0.95)
WIDTH_STEP = 128  # prompts are left-padded to a multiple of this many tokens
MAX_PROMPT_TOKENS = 8192 - 512 - 1  # the official prompt budget (left-truncated after BOS beyond it)


def prompt_ids(tokenizer: Any, chat: data.ChatPrompt | Sequence[Mapping[str, str]], *,
               max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of a chat prompt (a `ChatPrompt` or a list of messages) ending with the assistant
    header: BOS first (added when the template does not start with it), left-truncated after BOS
    to `max_tokens` as the official code does."""
    if isinstance(chat, data.ChatPrompt):
        text = data.chat_text(tokenizer, chat)
    else:
        text = tokenizer.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if len(ids) > max_tokens:
        ids = ids[:1] + ids[len(ids) - max_tokens + 1:]
    return ids


def generate_ids(params: Any, config: Any, prompts: Sequence[Sequence[int]], *,
                 sampling: decoding.Sampling = PAPER_SAMPLING, seed: int = 0,
                 width_step: int = WIDTH_STEP) -> list[list[int]]:
    """The new token ids of each prompt (EOS included when reached), decoded in one batch."""
    return decoding.generate_ids(params, prompts, jax.random.key(seed), config=config, sampling=sampling,
                                 width_step=width_step)


def persona_description(record: Mapping[str, Any]) -> str:
    """A short text of who the user is, for a judge: the benchmark's ground-truth persona, else its
    profile, else the golden profile of the record's direction, else ''."""
    if record.get(prefs.GROUND_TRUTH_PERSONA):
        return record[prefs.GROUND_TRUTH_PERSONA]
    if record.get(prefs.PROFILE):
        return record[prefs.PROFILE]
    if record.get(prefs.DIRECTION) is not None:
        return prefs.golden_profile(record[prefs.DIRECTION])
    return ""


def iter_generations(
    records: Sequence[Mapping[str, Any]],
    *,
    model: tuple[Any, Any],
    tokenizer: Any,
    mode: str | _modes.EvalMode = "ica",
    history: int | None = None,
    persona_items: str = "mixed",
    indices: Sequence[int] | None = None,
    skip: Iterable[int] = (),
    sampling: decoding.Sampling = PAPER_SAMPLING,
    batch_size: int = 8,
    seed: int = 0,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
) -> Iterator[list[dict]]:
    """Answer each record's post as the policy sees it (the mode's prompt with the persona); yields
    the rows of each batch: index, persona, persona_description, post, prompt (the rendered chat
    text), response, response_tokens, finished (EOS reached)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mode = _modes.resolve_mode(mode)
    params, config = model
    indices = range(len(records)) if indices is None else indices
    skip = set(skip)
    kept = [(record, int(index)) for record, index in zip(records, indices) if int(index) not in skip]
    shown = [_modes.persona_history(record, items=persona_items, history=history) for record, _ in kept]
    mode.prepare([record for record, _ in kept], shown)
    todo = []
    for (record, index), history_shown in zip(kept, shown):
        chat = mode.policy_render(record, index)(history_shown)
        todo.append((prompt_ids(tokenizer, chat, max_tokens=max_prompt_tokens), index, record, chat))
    todo.sort(key=lambda item: (-len(item[0]), item[1]))  # similar lengths share a batch
    eos = set(config.eos_token_ids)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        prompts = [item[0] for item in batch]
        prompts += [prompts[0]] * (batch_size - len(prompts))  # a short last batch keeps the compiled shape
        outputs = generate_ids(params, config, prompts, sampling=sampling,
                               seed=seed * 1_000_003 + min(item[1] for item in batch))
        rows = []
        for (ids, index, record, chat), new in zip(batch, outputs):
            finished = bool(new) and new[-1] in eos
            rows.append({
                "index": index,
                "persona": data.persona_key(record),
                "persona_description": persona_description(record),
                "post": record[prefs.PROMPT],
                "prompt": data.chat_text(tokenizer, chat),
                "response": tokenizer.decode(new[:-1] if finished else new, skip_special_tokens=True),
                "response_tokens": len(new),
                "finished": finished,
            })
        yield rows
