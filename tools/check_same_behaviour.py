"""Same inputs, same outputs as a base commit: `alignx train` writes the same metrics.jsonl losses
and `alignx eval` the same scores.jsonl (log-probs equal within 1e-6) as the code of `--base`.

    python tools/check_same_behaviour.py                      # base 6ce6984 (before the one-home-per-concept layout)
    python tools/check_same_behaviour.py --base <commit> --work /tmp/same

It exports the base commit (`git archive`) beside this checkout, makes one start model (a tiny
random-init Llama saved as our folder, by the base code), then runs in each tree, in fresh
processes on one CPU device: `alignx train` of a small ICA config from that start model (frozen
reference, held-out users, an evaluation mid-run), and `alignx eval` of the base run's trained
model against the start model on the base run's heldout.json. Prints each comparison; exits 1 on
a difference.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = "6ce6984"  # main before "one home per concept above the model"
TOLERANCE = 1e-6
LOSS_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "grad_norm",
             "eval_accuracy", "eval_accuracy_logp")
LOGP_KEYS = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")

ALIGNX = "import sys; from alignx_jax.cli import main; sys.exit(main(sys.argv[1:]))"
START_MODEL = """
import sys
from alignx_jax import interop
from alignx_jax.models import llama
import jax
config = llama.preset("tiny", vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=1)
params = llama.init_params(config, jax.random.key(3))
interop.save_native(params, config, sys.argv[1], tokenizer=interop.load_tokenizer("smollm2-135m-instruct"))
"""


def config_yaml(start: pathlib.Path, out_dir: pathlib.Path) -> str:
    return json.dumps({  # JSON is YAML
        "seed": 0, "steps": 6, "checkpoint_every": 3, "log_every": 1, "eval_every": 3, "out_dir": str(out_dir),
        "model": {"name": str(start)},
        "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1},
                 "heldout_synthetic": {"users": 4, "records_per_user": 3, "history_items": 2},
                 "rows": 4, "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [2048]},
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
    })


LABELS = ROOT.parent / "shared" / "data" / "preference_dimensions.json"


def run(tree: pathlib.Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device in both trees
    env.update(PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    if LABELS.is_file() and "ALIGNX_PREFERENCE_DIMENSIONS" not in env:  # the exported tree has no ../shared
        env["ALIGNX_PREFERENCE_DIMENSIONS"] = str(LABELS)
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args[:4])} failed:\n{done.stderr[-3000:]}")


def rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--work", type=pathlib.Path, default=None)
    args = parser.parse_args()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="same_behaviour_"))
    work.mkdir(parents=True, exist_ok=True)
    base_tree = work / "base_tree"
    if not base_tree.exists():
        archive = work / "base.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), args.base], check=True)
        base_tree.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(base_tree)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"base {args.base} ({base_tree}) vs this checkout (HEAD {head}, working tree as is) in {work}")
    start = work / "start_model"
    if not start.exists():
        run(base_tree, ["-c", START_MODEL, str(start)])
    trees = {"base": base_tree, "head": ROOT}
    for name, tree in trees.items():
        out = work / name
        out.mkdir(exist_ok=True)
        (out / "config.yaml").write_text(config_yaml(start, out / "train"))
        if not (out / "train" / "summary.json").exists():
            run(tree, ["-c", ALIGNX, "train", "--config", str(out / "config.yaml")])
    for name, tree in trees.items():  # the same inputs for both: the base run's model and held-out file
        if not (work / name / "eval" / "report.json").exists():
            run(tree, ["-c", ALIGNX, "eval", "--policy", str(work / "base" / "train" / "model"),
                       "--reference", str(start), "--data", str(work / "base" / "train" / "heldout.json"),
                       "--mode", "ica", "--out", str(work / name / "eval")])
    failures = []
    base_metrics, head_metrics = (rows(work / n / "train" / "metrics.jsonl") for n in trees)
    if [r["step"] for r in base_metrics] != [r["step"] for r in head_metrics]:
        failures.append("metrics.jsonl: different steps")
    for a, b in zip(base_metrics, head_metrics):
        for key in LOSS_KEYS:
            if (key in a or key in b) and not close(a.get(key), b.get(key)):
                failures.append(f"metrics.jsonl step {a['step']} {key}: {a.get(key)} vs {b.get(key)}")
    print(f"metrics.jsonl: {len(base_metrics)} steps, keys {', '.join(k for k in LOSS_KEYS if k in base_metrics[0])}")
    base_scores, head_scores = ({(r["index"], r["history"]): r for r in rows(work / n / "eval" / "scores.jsonl")}
                                for n in trees)
    if sorted(base_scores) != sorted(head_scores):
        failures.append("scores.jsonl: different records")
    worst = 0.0
    for key, a in base_scores.items():
        b = head_scores.get(key, {})
        for field in LOGP_KEYS:
            worst = max(worst, abs(a[field] - b.get(field, float("inf"))))
            if not close(a[field], b.get(field)):
                failures.append(f"scores.jsonl record {key}: {field} {a[field]} vs {b.get(field)}")
        for field in ("policy_prompt", "reference_prompt", "chosen_tokens", "rejected_tokens", "correct"):
            if a.get(field) != b.get(field):
                failures.append(f"scores.jsonl record {key}: {field} differs")
    print(f"scores.jsonl: {len(base_scores)} records, largest |log-prob difference| {worst:.3g}")
    base_summary, head_summary = (json.loads((work / n / "train" / "summary.json").read_text()) for n in trees)
    for key in ("final_loss", "eval_accuracy", "eval_accuracy_logp", "eval_worst_persona_accuracy"):
        if not close(base_summary[key], head_summary[key]):
            failures.append(f"summary.json {key}: {base_summary[key]} vs {head_summary[key]}")
    for line in failures:
        print("DIFFERENT:", line)
    print("same behaviour" if not failures else f"{len(failures)} differences")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
