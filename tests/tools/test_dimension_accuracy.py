"""tools/dimension_accuracy.py on hand-written score rows: each record counts once for every synthetic
style its two responses differ along, on the chosen response's side; records along which no style
differs are skipped; the two sides' accuracies sum to 100% for a fixed preference."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BODY = "About a rainy weekend: go for it, but keep it simple."
HUMOUR = "Worst case, you get a funny story out of it, and honestly that is half the point."
WARM, COLD = "What a lovely thing to ask about, thank you for sharing!", "Fine, here is the answer."


def _row(chosen, rejected, paper_right, policy_right, start_right=True):
    """A score row whose paper's metric, policy-only view and start-model view are right or wrong as asked."""
    sign = lambda right: 1.0 if right else -1.0  # noqa: E731
    return {"persona": "p", "chosen": chosen, "rejected": rejected,
            "policy_chosen_logp": -10.0 + sign(policy_right), "policy_rejected_logp": -10.0,
            # reference: chosen -10 + policy sign - paper sign * 2, so the log-ratio margin has the paper's sign
            "ref_chosen_logp": -10.0 + sign(policy_right) - 2.0 * sign(paper_right), "ref_rejected_logp": -10.0,
            "start_chosen_logp": -10.0 + sign(start_right), "start_rejected_logp": -10.0}


def _scores(tmp_path):
    with_humour = f"{BODY} {HUMOUR}"
    rows = [
        _row(with_humour, BODY, paper_right=True, policy_right=False),         # likes humour: right
        _row(BODY, with_humour, paper_right=False, policy_right=False),        # its mirror twin: wrong
        _row(f"{WARM} {with_humour}", f"{COLD} {BODY}", paper_right=True, policy_right=True,
             start_right=False),                                               # warm and humour: right
        _row("A plain answer.", "Another plain answer.", paper_right=False, policy_right=False),  # no style
    ]
    (tmp_path / "heldout_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _run(*args):
    command = [sys.executable, str(ROOT / "tools" / "dimension_accuracy.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def test_each_contrasted_style_counts_on_the_chosen_side(tmp_path):
    run = _scores(tmp_path)
    out = _run(run)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"{run} (paper)"
    assert lines[3:] == [
        "| High Agreeableness / Low Agreeableness | 1: 100.0 [100, 100] | 0 | - |",
        "| Likes humor / Dislikes humor | 2: 100.0 [100, 100] | 1: 0.0 [0, 0] | 100 |",
    ]
    policy = _run(run / "heldout_scores.jsonl", "--metric", "policy").stdout.strip().splitlines()
    assert policy[3:] == [
        "| High Agreeableness / Low Agreeableness | 1: 100.0 [100, 100] | 0 | - |",
        "| Likes humor / Dislikes humor | 2: 50.0 [0, 100] | 1: 0.0 [0, 0] | 50 |",
    ]
    start = _run(run, "--metric", "start").stdout.strip().splitlines()
    assert start[3:] == [
        "| High Agreeableness / Low Agreeableness | 1: 0.0 [0, 0] | 0 | - |",
        "| Likes humor / Dislikes humor | 2: 50.0 [0, 100] | 1: 100.0 [100, 100] | 150 |",
    ]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path):
    empty = _run(tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.strip().splitlines()[-1].endswith(f"{tmp_path}: no heldout_scores.jsonl or scores.jsonl in this folder")
    rows = tmp_path / "scores.jsonl"
    rows.write_text(json.dumps({k: v for k, v in _row(BODY, BODY, True, True).items() if not k.startswith("start_")}) + "\n")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"chosen": "a"\n' + rows.read_text())
    assert _run(damaged).stderr.strip().splitlines()[-1].startswith(f"dimension_accuracy.py: error: {damaged}: line 1 is not a JSON row")
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"chosen": "a", "rejected": "b", "policy_chosen_logp": 0.0}) + "\n")
    assert _run(partial).stderr.strip().splitlines()[-1].endswith(
        f"{partial}: row 1 needs policy_rejected_logp, ref_chosen_logp, ref_rejected_logp")
    no_start = _run(rows, "--metric", "start")
    assert no_start.returncode == 2
    assert no_start.stderr.strip().splitlines()[-1].endswith("no start_* log-probs (a training run's held-out scores have them)")
