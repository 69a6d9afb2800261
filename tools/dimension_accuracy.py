"""Held-out accuracy of synthetic users per preference dimension and side: which styles a model reads.

    .venv/bin/python tools/dimension_accuracy.py runs/study/unseen_s0 [more runs or score files] \
        [--metric paper|policy|start]

Reads a training run's heldout_scores.jsonl, an `alignx eval` folder's scores.jsonl, or such a file.
A synthetic pair differs along 1-2 of its user's marked dimensions (`data.response_styles` reads
which from the two texts; the chosen response shows the user's side), and a record counts once for
each. Per dimension, prints for each side of the user n, accuracy and its 95% bootstrap CI, and the
two sides' sum. On mirror-paired users (every pair scored under both signs of the user), a model that
ignores the user is right on exactly one twin of each pair, so its sides sum to 100%, however lopsided
(100 / 0 is a fixed preference for one side); a model that reads the dimension on every record sums
to 200%. Records along which no synthetic style differs (P-Soups, other data) are skipped.
`--metric`: the paper's metric (reward against the reference), the policy-only view, or the start
model's policy-only view (training runs: its `start_*` log-probs).
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

SCORE_FILES = ("heldout_scores.jsonl", "scores.jsonl")
METRICS = ("paper", "policy", "start")
ROW_KEYS = ("chosen", "rejected", "policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")


def read_scores(path: pathlib.Path) -> list[dict]:
    """The score rows of a run folder (its heldout_scores.jsonl or scores.jsonl) or of a .jsonl file
    (`evaluation.read_rows`: a truncated last row, a killed run's, is dropped; a damaged line is an error)."""
    from alignx_jax import evaluation

    if path.is_dir():
        found = [path / name for name in SCORE_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"{path}: no {' or '.join(SCORE_FILES)} in this folder")
        path = found[0]
    elif not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    rows = evaluation.read_rows(path)
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"{path}: row {number} needs {', '.join(missing)}")
    return rows


def contrasts(row: dict) -> list[tuple[int, bool]]:
    """(dimension index, the user's side: positive?) for each synthetic style the pair differs along."""
    from alignx_jax import data

    chosen, rejected = data.response_styles(row["chosen"]), data.response_styles(row["rejected"])
    return [(dim, side) for dim, side in chosen.items() if dim in rejected and rejected[dim] != side]


def correct(rows: list[dict], metric: str) -> np.ndarray:
    """bool [n]: the record is scored right under `metric` (a tie is wrong)."""
    from alignx_jax import evaluation

    if metric == "paper":
        return evaluation.correct(rows)
    if metric == "start":
        rows = [dict(r, policy_chosen_logp=r["start_chosen_logp"], policy_rejected_logp=r["start_rejected_logp"])
                for r in rows]
    return evaluation.correct_logp(rows)


def by_dimension(rows: list[dict], metric: str) -> dict[int, dict[bool, np.ndarray]]:
    """{dimension: {side: bool [records of that side]}}, dimensions in first-seen order."""
    table: dict[int, dict[bool, list]] = {}
    for row, ok in zip(rows, correct(rows, metric)):
        for dim, side in contrasts(row):
            table.setdefault(dim, {True: [], False: []})[side].append(bool(ok))
    return {dim: {side: np.asarray(oks, bool) for side, oks in sides.items()} for dim, sides in table.items()}


def cell(oks: np.ndarray) -> str:
    """'n: accuracy [95% CI]' in %, or '0' for a side with no record."""
    from alignx_jax import evaluation

    if oks.size == 0:
        return "0"
    low, high = evaluation.bootstrap_ci(oks.astype(np.float64))
    return f"{oks.size}: {100 * oks.mean():.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def table(rows: list[dict], metric: str) -> list[str]:
    """Markdown rows: dimension | positive side | negative side | sum of the sides' accuracies (%; '-'
    unless both sides have records)."""
    from alignx_jax import preferences as prefs

    dims = prefs.dimensions()
    lines = []
    for dim, sides in sorted(by_dimension(rows, metric).items()):
        both = all(oks.size for oks in sides.values())
        total = f"{sum(100 * oks.mean() for oks in sides.values()):.0f}" if both else "-"
        lines.append(f"| {dims[dim].positive} / {dims[dim].negative} | {cell(sides[True])} | {cell(sides[False])} "
                     f"| {total} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", nargs="+", type=pathlib.Path,
                        help="training output folders, `alignx eval` folders or score files (.jsonl)")
    parser.add_argument("--metric", choices=METRICS, default="paper")
    args = parser.parse_args()
    for path in args.scores:
        try:
            rows = read_scores(path)
        except ValueError as error:
            parser.error(str(error))
        if args.metric == "start" and rows and "start_chosen_logp" not in rows[0]:
            parser.error(f"{path}: no start_* log-probs (a training run's held-out scores have them)")
        print(f"{path} ({args.metric})\n| dimension: positive / negative side | positive side: n: accuracy "
              "[95% CI] | negative side | sum |\n|---|---|---|---|")
        print("\n".join(table(rows, args.metric)))


if __name__ == "__main__":
    main()
