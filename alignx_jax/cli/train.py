"""`alignx train --config configs/NAME.yaml [key=value ...]`: DPO training of a personalized policy.

The config is checked before anything loads (unknown keys name the nearest known one); a rerun of
the same command resumes from the newest good checkpoint. Progress: a live bar on a terminal, one
line per log interval otherwise (CI logs, files).
"""
from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a personalized policy (DPO on packed persona pairs)",
                              description="Train from a YAML config; key=value arguments override its keys "
                                          "(dotted for nested ones: optimizer.lr=1e-4, data.rows=8).")
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=10 out_dir=runs/x")
    p.set_defaults(func=run)


class ConsoleReporter:
    """A rich progress bar with loss, reward accuracy, margin and pairs/s, or plain lines off a terminal."""

    def __init__(self, log_every: int):
        self._log_every = log_every
        self._live = sys.stderr.isatty()
        self._progress = None
        self._started = time.perf_counter()

    def start(self, total: int, completed: int) -> None:
        self._total, self._first = total, completed
        if self._live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(), console=Console(stderr=True))
            self._task = self._progress.add_task("train", total=total, completed=completed, stats="")
            self._progress.start()

    def step(self, step: int, row) -> None:
        stats = (f"loss {row['loss']:.4f}  acc {row['rewards/accuracies']:.2f}  margin {row['rewards/margins']:+.3f}  "
                 f"{row['pairs_per_s']:.2f} pairs/s")
        if "eval_accuracy" in row:
            stats += f"  eval {row['eval_accuracy']:.3f} (worst persona {row['eval_worst_persona_accuracy']:.3f})"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
        elif step % self._log_every == 0 or step == self._total or "eval_accuracy" in row:
            done = step - self._first
            eta = (time.perf_counter() - self._started) / max(done, 1) * (self._total - step)
            print(f"step {step}/{self._total}  {stats}  eta {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def run(args: argparse.Namespace) -> int:
    from alignx_jax.train import load_config, train

    config = load_config(args.config, args.overrides)
    summary = train(config, ConsoleReporter(config.log_every))
    if summary.get("preempted"):
        return 0
    if summary.get("eval_accuracy") is not None:
        print(f"held-out accuracy {summary['eval_accuracy']:.3f} (worst persona "
              f"{summary['eval_worst_persona_accuracy']:.3f}), policy-only {summary['eval_accuracy_logp']:.3f} "
              f"(worst persona {summary['eval_worst_persona_accuracy_logp']:.3f}), n={summary['eval_n']}")
    for group in ("seen", "unseen"):
        if summary.get(f"eval_{group}_accuracy") is not None:
            print(f"  {group} dimensions: {summary[f'eval_{group}_accuracy']:.3f} (worst persona "
                  f"{summary[f'eval_{group}_worst_persona_accuracy']:.3f}), policy-only "
                  f"{summary[f'eval_{group}_accuracy_logp']:.3f} (worst persona "
                  f"{summary[f'eval_{group}_worst_persona_accuracy_logp']:.3f}), n={summary[f'eval_{group}_n']}")
    # A rerun of a finished run resumes past its last step and takes none: no loss this time.
    loss = "" if summary["final_loss"] is None else f"; final loss {summary['final_loss']:.4f}"
    print(f"{summary['steps']} steps in {summary['wall_time_s']:.0f}s{loss}; model in {config.out_dir}/model")
    return 0
