"""Win rates: a judge compares two models' answers to the same posts for the same users.

Each pair is judged twice, in both orders, so a judge's preference for the first (or second)
position cancels: A wins when the judge prefers A in both orders, loses when it prefers B in both,
and anything else is a tie.

Judges: `LocalJudge` (a local model, offline; the embedded SmolLM2 by default) reads the next-token
logits of "A" and "B" after the judge prompt; `HttpJudge` asks an OpenAI-compatible
`/chat/completions` endpoint (URL, key and model given by the caller, e.g. from the environment;
nothing of them is written anywhere).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import data
from alignx_jax.errors import InputError
from alignx_jax.evaluation import _generation
from alignx_jax.models import llama

JUDGE_SYSTEM = "You are a careful judge of how well responses fit a particular user.\n"
OUTCOMES = ("win", "tie", "loss")


def judge_prompt(post: str, persona: str, first: str, second: str) -> data.ChatPrompt:
    """The question put to a judge: which of two responses better fits this user."""
    user = (f"***User***\n\n{persona or '(no description)'}\n\n***Post***\n\n{post}\n\n"
            f"***Response A***\n\n{first}\n\n***Response B***\n\n{second}\n\n"
            "Which response better fits this user's preferences? Answer with one letter: A or B.")
    return data.ChatPrompt(JUDGE_SYSTEM, user)


class Judge(Protocol):
    name: str

    def prefer(self, prompts: Sequence[data.ChatPrompt]) -> list[str]:
        """"A", "B" or "tie" for each judge prompt."""


class LocalJudge:
    """A local causal LM as judge: the verdict is whichever of the tokens "A" and "B" has the
    larger next-token logit after the prompt (equal logits: "tie")."""

    def __init__(self, params: Any, config: llama.LlamaConfig, tokenizer: Any, *, name: str = "local",
                 batch_size: int = 8, width_step: int = 128):
        self.params, self.config, self.tokenizer, self.name = params, config, tokenizer, name
        self.batch_size, self.width_step = batch_size, width_step
        self.choices = [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in ("A", "B")]
        if self.choices[0] == self.choices[1]:
            raise ValueError("the judge's tokenizer gives 'A' and 'B' the same token")

    def prefer(self, prompts: Sequence[data.ChatPrompt]) -> list[str]:
        verdicts = []
        for start in range(0, len(prompts), self.batch_size):
            ids = [_generation.prompt_ids(self.tokenizer, p) for p in prompts[start:start + self.batch_size]]
            width = -(-max(map(len, ids)) // self.width_step) * self.width_step
            tokens = np.zeros((len(ids), width), np.int32)  # right padding: a causal row never sees it
            for row, p in enumerate(ids):
                tokens[row, :len(p)] = p
            last = np.array([len(p) - 1 for p in ids], np.int32)
            logits = np.asarray(_choice_logits(self.params, jnp.asarray(tokens), jnp.asarray(last),
                                               jnp.asarray(self.choices), config=self.config))
            verdicts += ["A" if a > b else "B" if b > a else "tie" for a, b in logits]
        return verdicts


def _choice_logits_impl(params, tokens, last, choices, config):
    """Logits [B, 2] of the two answer tokens at each row's last prompt position."""
    hidden = llama.forward(params, tokens, config, return_hidden=True)
    h = hidden[jnp.arange(hidden.shape[0]), last].astype(jnp.float32)
    w = llama.lm_head_weight(params, config)[:, choices].astype(jnp.float32)
    return h @ w


_choice_logits = jax.jit(_choice_logits_impl, static_argnames=("config",))


class HttpJudge:
    """An OpenAI-compatible chat-completions endpoint as judge (temperature 0, a few tokens)."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(f"the judge URL must be http(s)://host[:port]/..., got a {parsed.scheme or 'schemeless'} URL")
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
        self.model, self.timeout, self.name = model, timeout, f"http:{model}"
        self._api_key = api_key
        self._host = parsed.netloc

    def _ask(self, prompt: data.ChatPrompt) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 4, "messages": [
            {"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
            text = reply["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as error:
            raise InputError(f"judge endpoint at {self._host} answered HTTP {error.code} ({error.reason})") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise InputError(f"judge endpoint at {self._host} unreachable ({getattr(error, 'reason', error)})") from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(f"judge endpoint at {self._host} did not answer in the chat-completions format") from None
        return parse_verdict(text)

    def prefer(self, prompts: Sequence[data.ChatPrompt]) -> list[str]:
        return [self._ask(p) for p in prompts]


def parse_verdict(text: str) -> str:
    """"A" or "B" when the reply starts with that letter (after spaces, quotes, asterisks), else "tie"."""
    head = (text or "").strip().lstrip("*\"'`(").upper()
    return head[0] if head[:1] in ("A", "B") and (len(head) == 1 or not head[1].isalpha()) else "tie"


def combine(first_order: str, second_order: str) -> str:
    """A's outcome from the verdicts of (A first, B second) and (B first, A second)."""
    if first_order == "A" and second_order == "B":
        return "win"
    if first_order == "B" and second_order == "A":
        return "loss"
    return "tie"


def pair_generations(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], *,
                     name_a: str = "A", name_b: str = "B") -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """The (a, b) rows of the records both files answered, by index; refused when the files answer
    different posts for the same index (generated from different data)."""
    by_index = {r["index"]: r for r in rows_b}
    pairs = []
    for a in sorted(rows_a, key=lambda r: r["index"]):
        b = by_index.get(a["index"])
        if b is None:
            continue
        if a.get("post") != b.get("post"):
            raise InputError(f"{name_a} and {name_b} answer different posts for record {a['index']}: "
                             f"they were generated from different data")
        pairs.append((a, b))
    return pairs


def judge_pairs(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], judge: Judge) -> list[dict]:
    """One judgment row per pair: index, persona, verdict_ab, verdict_ba, outcome (A's win/tie/loss)."""
    ab = [judge_prompt(a["post"], a.get("persona_description", ""), a["response"], b["response"]) for a, b in pairs]
    ba = [judge_prompt(a["post"], a.get("persona_description", ""), b["response"], a["response"]) for a, b in pairs]
    verdicts = judge.prefer(ab + ba)
    rows = []
    for i, (a, _) in enumerate(pairs):
        first, second = verdicts[i], verdicts[len(pairs) + i]
        rows.append({"index": a["index"], "persona": a.get("persona", ""), "verdict_ab": first, "verdict_ba": second,
                     "outcome": combine(first, second)})
    return rows


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in OUTCOMES}
    return {"n": n, **counts, "win_rate": (counts["win"] + 0.5 * counts["tie"]) / n if n else float("nan")}


def summarize_judgments(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """win / tie / loss of A against B, overall and per persona, with the win rate (win + tie / 2) / n
    and the worst persona's win rate beside the mean."""
    per_persona: dict[str, list] = {}
    for row in rows:
        per_persona.setdefault(row.get("persona", ""), []).append(row)
    table = {k: _counts(v) for k, v in per_persona.items()}
    report = {**_counts(rows), "per_persona": table}
    if table:
        worst = min(table, key=lambda k: table[k]["win_rate"])
        report.update(worst_persona=worst, worst_persona_win_rate=table[worst]["win_rate"])
    return report
