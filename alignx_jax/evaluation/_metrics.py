"""Alignment accuracy (the paper's metric), its policy-only view, bootstrap intervals, breakdowns.

For a pair (chosen y_w, rejected y_l) of prompt x shown with persona p, the implicit reward of a
response under the policy pi and the reference pi_ref (the base model with the few-shot persona
prompt) is

    r(y) = beta * (log pi(y | x, p) - log pi_ref(y | x, p_ref))

with log-probs summed over the response tokens and EOS. The pair is correct when
r(y_w) > r(y_l); a tie is wrong. `accuracy_logp` is the policy-only view log pi(y_w) > log pi(y_l)
(how an untrained model is scored; a tie is wrong too).

Benchmarks are sorted by persona, so every mean comes with its worst persona (DESIGN "Personas,
not averages"): `worst_persona_accuracy` is the lowest per-persona accuracy.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_BETA = 0.1  # the paper's and the official evaluation's beta
NUM_BOOTSTRAP = 1000
CI_LEVEL = 0.95
# The keys every score row carries (scores.jsonl); summarize reads the first group of them.
LOGP_KEYS = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")


def reward_margins(rows: Sequence[Mapping[str, Any]], *, beta: float = DEFAULT_BETA) -> np.ndarray:
    """r(chosen) - r(rejected) per row, float64 [n].

    The log-ratio difference is formed before beta multiplies it, so identical policy and
    reference log-probs give exactly 0 (a tie, counted wrong).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (the reward's scale), got {beta}")
    logp = _logps(rows)
    return beta * ((logp[:, 0] - logp[:, 2]) - (logp[:, 1] - logp[:, 3]))


def correct(rows: Sequence[Mapping[str, Any]], *, beta: float = DEFAULT_BETA) -> np.ndarray:
    """bool [n]: r(chosen) > r(rejected) (a tie is wrong)."""
    return reward_margins(rows, beta=beta) > 0


def correct_logp(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """bool [n]: log pi(chosen) > log pi(rejected), the policy-only view (a tie is wrong)."""
    logp = _logps(rows)
    return logp[:, 0] > logp[:, 1]


def bootstrap_ci(values: np.ndarray, *, num_samples: int = NUM_BOOTSTRAP, level: float = CI_LEVEL,
                 seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [lo, hi] of the mean of `values` (0/1 for an accuracy).

    Seeded, so the same rows in the same order give the same interval (a resumed run's report
    equals an uninterrupted one's). An empty input gives [nan, nan].
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(num_samples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def group_stats(rows: Sequence[Mapping[str, Any]], *, beta: float = DEFAULT_BETA,
                num_bootstrap: int = NUM_BOOTSTRAP) -> dict[str, Any]:
    """n, accuracy, accuracy_logp, their 95% bootstrap intervals (None when `num_bootstrap` is 0)
    and the mean reward margin."""
    if not rows:
        raise ValueError("group_stats needs at least one score row")
    ok, ok_logp = correct(rows, beta=beta), correct_logp(rows)
    ci = (lambda v: bootstrap_ci(v, num_samples=num_bootstrap)) if num_bootstrap > 0 else (lambda v: None)
    return {
        "n": len(rows),
        "accuracy": float(ok.mean()),
        "accuracy_logp": float(ok_logp.mean()),
        "ci": ci(ok),
        "ci_logp": ci(ok_logp),
        "reward_margin": float(reward_margins(rows, beta=beta).mean()),
    }


def breakdown(rows: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any], *,
              beta: float = DEFAULT_BETA, num_bootstrap: int = NUM_BOOTSTRAP,
              with_worst_persona: bool = True) -> dict[str, dict[str, Any]]:
    """`group_stats` of the rows grouped by `key(row)` (keys as strings, in first-seen order);
    each group also carries its own worst persona unless `with_worst_persona` is False."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(str(key(row)), []).append(row)
    out = {}
    for name, members in groups.items():
        stats = group_stats(members, beta=beta, num_bootstrap=num_bootstrap)
        if with_worst_persona:
            stats.update(worst_persona(breakdown(members, _persona, beta=beta, num_bootstrap=0,
                                                 with_worst_persona=False)))
        out[name] = stats
    return out


def worst_persona(per_persona: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The lowest per-persona accuracy and accuracy_logp, and which personas they belong to
    (the first in table order on a tie)."""
    names = list(per_persona)
    worst = min(names, key=lambda k: per_persona[k]["accuracy"])
    worst_logp = min(names, key=lambda k: per_persona[k]["accuracy_logp"])
    return {
        "worst_persona": worst,
        "worst_persona_accuracy": per_persona[worst]["accuracy"],
        "worst_persona_logp": worst_logp,
        "worst_persona_accuracy_logp": per_persona[worst_logp]["accuracy_logp"],
    }


def summarize(rows: Iterable[Mapping[str, Any]], *, beta: float = DEFAULT_BETA,
              num_bootstrap: int = NUM_BOOTSTRAP) -> dict[str, Any]:
    """The report of a list of score rows (the dicts `score_records` returns / scores.jsonl holds).

    Returns a dict with `accuracy`, `accuracy_logp`, `ci`, `ci_logp` (95% bootstrap), `n`,
    `reward_margin`, `worst_persona`, `worst_persona_accuracy`, `worst_persona_logp`,
    `worst_persona_accuracy_logp`, `beta`, and the breakdowns `per_persona`, `per_item_type` and
    `per_history_size` ({key: {n, accuracy, accuracy_logp, ci, ci_logp, reward_margin, ...}};
    item-type and history-size groups carry their own worst persona; a breakdown is {} when the
    rows lack its key, `item_types` / `history_size`).

    Rows are sorted by (index, history) first, so the result does not depend on the order in
    which they were scored. When the rows hold several history settings (a `history=[0, 2, 8]`
    sweep), the headline figures and `per_persona` / `per_item_type` use the largest setting
    (None, every item, counts as the largest) and `per_history_size` shows every size.
    """
    rows = sorted(rows, key=row_order)
    if not rows:
        raise ValueError("summarize needs at least one score row")
    settings = {_history_setting(r) for r in rows}
    headline_setting = max(settings)
    headline = [r for r in rows if _history_setting(r) == headline_setting]
    per_persona = breakdown(headline, _persona, beta=beta, num_bootstrap=num_bootstrap, with_worst_persona=False)
    report = {"beta": beta, **group_stats(headline, beta=beta, num_bootstrap=num_bootstrap), **worst_persona(per_persona)}
    report["per_persona"] = per_persona
    # Rows from elsewhere (the trainer's held-out rows) may lack these keys: their breakdowns are empty.
    typed = [r for r in headline if "item_types" in r]
    report["per_item_type"] = breakdown(typed, lambda r: r["item_types"], beta=beta, num_bootstrap=num_bootstrap)
    sized = sorted((r for r in rows if "history_size" in r), key=lambda r: (r["history_size"], row_order(r)))
    report["per_history_size"] = breakdown(sized, lambda r: r["history_size"], beta=beta, num_bootstrap=num_bootstrap)
    if len(settings) > 1:
        report["history_settings"] = ["all" if s == float("inf") else int(s) for s in sorted(settings)]
    return report


def _persona(row: Mapping[str, Any]) -> str:
    return row.get("persona", "")


def _history_setting(row: Mapping[str, Any]) -> float:
    cap = row.get("history")
    return float("inf") if cap is None else float(cap)


def row_order(row: Mapping[str, Any]) -> tuple:
    return (row.get("index", 0), _history_setting(row))


def _logps(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    try:
        logp = np.array([[row[k] for k in LOGP_KEYS] for row in rows], dtype=np.float64).reshape(-1, 4)
    except KeyError as error:
        raise ValueError(f"score rows need the keys {LOGP_KEYS}; one lacks {error}") from None
    return logp
