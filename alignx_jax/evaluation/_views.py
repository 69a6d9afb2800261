"""Views of a training run's held-out scores beside the summed one: the start model as the policy
("before") and the per-token policy-only view, grouped by where the records came from.

The per-token view divides each response's log-probs by its scored tokens (the packer's count: the
text's ids plus EOS), so `accuracy_logp` compares log π(chosen)/|chosen| with log π(rejected)/|rejected|:
the policy-only view without the sums' cost per extra token (it has a length prior of its own).
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.evaluation import _metrics

SIDES = ("chosen", "rejected")


def scored_tokens(tokenizer: Any, text: str) -> int:
    """The scored tokens of a response: its own ids plus EOS (what `data.encode_pair` scores)."""
    return len(tokenizer.encode(text, add_special_tokens=False)) + 1


def per_token(row: Mapping[str, Any], lengths: Mapping[str, int]) -> dict:
    """The score row with every log-prob divided by its response's scored tokens (`lengths[side]`)."""
    return dict(row, **{f"{model}_{side}_logp": row[f"{model}_{side}_logp"] / lengths[side]
                        for model in ("policy", "ref") for side in SIDES})


def group_reports(train_dir: str | os.PathLike, beta: float, tokenizer: Any) -> dict[str, dict[str, dict]]:
    """{"synthetic" | "psoups": {"before" | "after" | "before_per_token" | "after_per_token": report}}
    from a training run's held-out scores (`heldout.json` and `heldout_scores.jsonl` of its out_dir).

    "before" is the start model as the policy (policy-only view; the paper's metric is a tie there);
    records with a `ground_truth_persona` form the "psoups" group, the others "synthetic"."""
    train_dir = pathlib.Path(train_dir)
    records, _ = data.load_records(train_dir / "heldout.json")
    rows = [json.loads(line) for line in (train_dir / "heldout_scores.jsonl").read_text().splitlines()]
    groups: dict[str, dict[str, list]] = {}
    for row in rows:
        name = "psoups" if records[row["index"]].get(prefs.GROUND_TRUTH_PERSONA) else "synthetic"
        before = dict(row, policy_chosen_logp=row["start_chosen_logp"], policy_rejected_logp=row["start_rejected_logp"])
        lengths = {side: scored_tokens(tokenizer, row[side]) for side in SIDES}
        group = groups.setdefault(name, {"before": [], "after": [], "before_per_token": [], "after_per_token": []})
        for when, r in (("before", before), ("after", row)):
            group[when].append(r)
            group[f"{when}_per_token"].append(per_token(r, lengths))
    return {name: {when: _metrics.summarize(rs, beta=beta) for when, rs in g.items()} for name, g in groups.items()}
