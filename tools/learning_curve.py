"""Learning curves of training runs: held-out mean and worst persona against pairs trained.

    .venv/bin/python tools/learning_curve.py runs/study/sigmoid_s0 runs/study/sigmoid_s1 \
        [--png curve.png] [--metric paper|policy|reward] [--split all|seen|unseen]

Reads each run's metrics.jsonl (the held-out evaluations every `eval_every` steps, and the pairs of
each step) and summary.json (the start model's policy-only figures, and the last evaluation's per-
persona figures with their 95% bootstrap CIs). Prints one markdown row per run: pairs trained: mean /
worst persona (%) at each evaluation, then the last one's worst persona with its CI. `--png` draws
worst persona (solid) and mean (dashed) against pairs trained, one colour per run. The paper's
metric has no "before" point (the start model is its own reference: every margin is 0, a tie,
scored wrong); the policy-only view starts at the start model's figures. `--metric reward`: DPO's
implicit reward against the start model in the policy's own prompt (runs since it was logged; no
"before" point either). `--split seen|unseen`: only the held-out users of the dimensions training
users mark, or of those none marks (runs with `data.heldout_unseen`: `eval_seen_*` / `eval_unseen_*`,
`per_persona_seen` / `per_persona_unseen`); the paper's metric and the policy-only view only.
"""
from __future__ import annotations

import argparse
import json
import pathlib

# metric: (mean key, worst-persona key, per-persona accuracy, its CI, summary.json's per-persona field)
KEYS = {"paper": ("eval_accuracy", "eval_worst_persona_accuracy", "accuracy", "ci", "per_persona"),
        "policy": ("eval_accuracy_logp", "eval_worst_persona_accuracy_logp", "accuracy_logp", "ci_logp", "per_persona"),
        "reward": ("eval_reward_accuracy", "eval_worst_persona_reward_accuracy", "accuracy", "ci", "per_persona_reward")}
LABELS = {"paper": "paper's metric", "policy": "policy-only", "reward": "reward vs the start model"}
SPLITS = ("all", "seen", "unseen")


def keys(metric: str, split: str) -> tuple[str, str, str, str, str]:
    """KEYS[metric], for the held-out users of one split: eval_accuracy -> eval_unseen_accuracy, and
    per_persona -> per_persona_unseen (the reward view has no per-split figures: `main` refuses it)."""
    if split == "all":
        return KEYS[metric]
    mean_key, worst_key, accuracy, ci, per_persona = KEYS[metric]
    return (mean_key.replace("eval_", f"eval_{split}_", 1), worst_key.replace("eval_", f"eval_{split}_", 1),
            accuracy, ci, f"{per_persona}_{split}")


def curve(run: pathlib.Path, metric: str, split: str = "all") -> tuple[list[tuple[int, float, float]], dict]:
    """[(pairs trained, mean, worst persona)] at each held-out evaluation, and the run's summary.
    metrics.jsonl holds every evaluation, the final one on the last step's row; a run written before
    it did gets its final evaluation from the summary, placed at the summary's own `steps` (so a
    summary older than metrics.jsonl, a resumed run still going, does not take the newest step's place)."""
    from alignx_jax.train.metrics import read_metrics

    mean_key, worst_key, _, _, _ = keys(metric, split)
    summary = json.loads((run / "summary.json").read_text())
    points, pairs, pairs_at = [], 0.0, {}
    if metric == "policy" and f"{mean_key}_before" in summary:
        points.append((0, summary[f"{mean_key}_before"], summary[f"{worst_key}_before"]))
    for row in read_metrics(run):
        pairs += row["pairs"]
        pairs_at[row["step"]] = round(pairs)
        if mean_key in row:
            points.append((round(pairs), row[mean_key], row[worst_key]))
    final = pairs_at.get(summary.get("steps"))
    if summary.get(mean_key) is not None and final is not None and final not in {p for p, _, _ in points}:
        points.append((final, summary[mean_key], summary[worst_key]))
        points.sort(key=lambda point: point[0])
    return points, summary


def worst_with_ci(summary: dict, metric: str, split: str = "all") -> str:
    """The last evaluation's worst persona with its 95% CI, e.g. '60.0 [40, 80]'."""
    _, _, accuracy, ci, per_persona = keys(metric, split)
    if not summary.get(per_persona):
        return "n/a"
    worst = min(summary[per_persona].values(), key=lambda v: v[accuracy])
    low, high = worst[ci]
    return f"{100 * worst[accuracy]:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="training output folders (out_dir)")
    parser.add_argument("--metric", choices=sorted(KEYS), default="paper")
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="the held-out users of seen or of unseen dimensions only (data.heldout_unseen runs)")
    parser.add_argument("--png", type=pathlib.Path, help="draw the curves to this file")
    args = parser.parse_args()
    if args.metric == "reward" and args.split != "all":
        parser.error(f"--metric reward has no seen / unseen figures (--split {args.split})")
    curves = {run: curve(run, args.metric, args.split) for run in args.runs}
    for run, (points, summary) in curves.items():
        cells = "; ".join(f"{pairs}: {100 * mean:.1f} / {100 * worst:.1f}" for pairs, mean, worst in points)
        print(f"| {run} | {cells} | {worst_with_ci(summary, args.metric, args.split)} |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run, (points, _) in curves.items():
            pairs = [p for p, _, _ in points]
            line, = ax.plot(pairs, [w for _, _, w in points], marker="o", label=f"{run.name}: worst persona")
            ax.plot(pairs, [m for _, m, _ in points], linestyle="--", color=line.get_color(), label=f"{run.name}: mean")
        ax.axhline(0.5, color="grey", linewidth=1, linestyle=":", label="chance")
        ax.set_xlabel("pairs trained")
        users = "" if args.split == "all" else f"{args.split} dimensions, "
        ax.set_ylabel(f"held-out accuracy ({users}{LABELS[args.metric]})")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
