"""tools/learning_curve.py on a hand-written run folder: pairs trained are the running sum of each
step's pairs, the policy-only curve starts at the start model, the last cell carries the worst
persona's CI."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path):
    rows = [{"step": 1, "pairs": 4.0}, {"step": 2, "pairs": 3.0, "eval_accuracy": 0.6, "eval_worst_persona_accuracy": 0.4,
                                         "eval_accuracy_logp": 0.65, "eval_worst_persona_accuracy_logp": 0.45},
            {"step": 3, "pairs": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    persona = lambda a, lo, hi: {"n": 20, "accuracy": a, "accuracy_logp": a + 0.05, "ci": [lo, hi],  # noqa: E731
                                 "ci_logp": [lo + 0.05, hi + 0.05]}
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps": 3, "eval_accuracy": 0.7, "eval_worst_persona_accuracy": 0.5, "eval_accuracy_logp": 0.75,
        "eval_worst_persona_accuracy_logp": 0.55, "eval_accuracy_logp_before": 0.6,
        "eval_worst_persona_accuracy_logp_before": 0.3,
        "per_persona": {"a": persona(0.9, 0.75, 1.0), "b": persona(0.5, 0.3, 0.7)}}))
    return tmp_path


def _table(run, *flags):
    command = [sys.executable, str(ROOT / "tools" / "learning_curve.py"), str(run), *flags]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_paper_metric_curve_has_no_start_point(tmp_path):
    run = _run(tmp_path)
    assert _table(run) == f"| {run} | 7: 60.0 / 40.0; 11: 70.0 / 50.0 | 50.0 [30, 70] |"


def test_policy_only_curve_starts_at_the_start_model(tmp_path):
    run = _run(tmp_path)
    png = tmp_path / "curve.png"
    table = _table(run, "--metric", "policy", "--png", str(png))
    assert table == f"| {run} | 0: 60.0 / 30.0; 7: 65.0 / 45.0; 11: 75.0 / 55.0 | 55.0 [35, 75] |"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_older_summary_sits_at_its_own_step(tmp_path):
    """A resumed run still going: metrics.jsonl has passed the step its summary.json was written at."""
    run = _run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "steps": 1}))
    assert _table(run) == f"| {run} | 4: 70.0 / 50.0; 7: 60.0 / 40.0 | 50.0 [30, 70] |"


def test_reward_curve_reads_its_own_keys_and_per_persona_field(tmp_path):
    run = _run(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[1].update(eval_reward_accuracy=0.8, eval_worst_persona_reward_accuracy=0.65)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({
        **summary, "eval_reward_accuracy": 0.85, "eval_worst_persona_reward_accuracy": 0.7,
        "per_persona_reward": {"a": {"accuracy": 1.0, "ci": [1.0, 1.0]}, "b": {"accuracy": 0.7, "ci": [0.5, 0.9]}}}))
    assert _table(run, "--metric", "reward") == f"| {run} | 7: 80.0 / 65.0; 11: 85.0 / 70.0 | 70.0 [50, 90] |"
    (run / "summary.json").write_text(json.dumps(summary))  # a run from before the reward view was logged
    assert _table(run, "--metric", "reward") == f"| {run} | 7: 80.0 / 65.0 | n/a |"


def test_unseen_split_reads_the_unseen_users_keys_and_per_persona_field(tmp_path):
    run = _run(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[1].update(eval_unseen_accuracy=0.55, eval_unseen_worst_persona_accuracy=0.35,
                   eval_unseen_accuracy_logp=0.5, eval_unseen_worst_persona_accuracy_logp=0.25)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({
        **summary, "eval_unseen_accuracy": 0.8, "eval_unseen_worst_persona_accuracy": 0.7,
        "eval_unseen_accuracy_logp": 0.75, "eval_unseen_worst_persona_accuracy_logp": 0.6,
        "eval_unseen_accuracy_logp_before": 0.45, "eval_unseen_worst_persona_accuracy_logp_before": 0.2,
        "per_persona_unseen": {"c": {"accuracy": 0.7, "accuracy_logp": 0.6, "ci": [0.5, 0.9], "ci_logp": [0.4, 0.8]},
                               "d": {"accuracy": 0.9, "accuracy_logp": 0.9, "ci": [0.75, 1.0], "ci_logp": [0.75, 1.0]}}}))
    assert _table(run, "--split", "unseen") == f"| {run} | 7: 55.0 / 35.0; 11: 80.0 / 70.0 | 70.0 [50, 90] |"
    assert _table(run, "--split", "unseen", "--metric", "policy") == \
        f"| {run} | 0: 45.0 / 20.0; 7: 50.0 / 25.0; 11: 75.0 / 60.0 | 60.0 [40, 80] |"
    assert _table(run) == f"| {run} | 7: 60.0 / 40.0; 11: 70.0 / 50.0 | 50.0 [30, 70] |"  # all held-out users
    refused = subprocess.run([sys.executable, str(ROOT / "tools" / "learning_curve.py"), str(run), "--split", "seen",
                              "--metric", "reward"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].endswith("--metric reward has no seen / unseen figures (--split seen)")
