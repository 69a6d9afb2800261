"""One scoring service: the trainer's held-out figures equal `alignx eval` of the same checkpoint on
the run's `heldout.json` (the policy: out_dir/model; the reference: the start model), per record and
per persona. Both score through `evaluation.PairScorer` with the same prompts (the official
evaluation layout, every history item, the same token budget: 2048 holds every held-out persona
whole), so they may differ only by float summation order. With LoRA on the top layer only, the
trainer scores its policy above the base layer's kept output (`PairScorer.trunk`), and `alignx eval`
runs the exported merged model whole: the same figures again. The held-out users of dimensions no
training user marks (data.heldout_unseen) have their own figures (eval_unseen_*, eval_seen_*)."""
import json

import numpy as np
import pytest

from alignx_jax import cli, data, evaluation, interop
from alignx_jax import preferences as prefs
from alignx_jax.train import config_from_dict, train

MODEL = {"preset": "tiny", "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64}}
FINE_TUNING = {"full": {"num_layers": 1, "keys": {}},
               "lora_top_layer": {"num_layers": 2, "keys": {"reference": "lora", "lora": {"rank": 4, "layers": 1},
                                                            "optimizer": {"lr": 3e-2, "warmup_steps": 1}}}}
SEEN, UNSEEN = [16, 5, 6, 73], ["High Extraversion", 74, 60]  # by index or label; UNSEEN = 3, 74, 60


# Full fine-tuning re-checks the same scoring path without the trunk cache: in the slow set (~40 s).
@pytest.fixture(scope="module", params=[pytest.param("full", marks=pytest.mark.slow), "lora_top_layer"])
def trained(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("heldout_eval")
    tuning = FINE_TUNING[request.param]
    model = dict(MODEL, overrides=dict(MODEL["overrides"], num_layers=tuning["num_layers"]))
    params, config = interop.load_model(interop.RANDOM, seed=3, **model)
    start = root / "start"
    interop.save_native(params, config, start, tokenizer=interop.load_tokenizer(interop.EMBEDDED_ALIAS))
    out = root / "run"
    summary = train(config_from_dict({
        "seed": 0, "steps": 3, "checkpoint_every": 3, "eval_every": 2, "out_dir": str(out),
        "model": {"name": str(start)},
        "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1, "dimensions": SEEN},
                 "heldout_synthetic": {"users": 4, "records_per_user": 3, "history_items": 2, "dimensions": SEEN},
                 "heldout_unseen": {"users": 4, "records_per_user": 2, "history_items": 2, "dimensions": UNSEEN},
                 "rows": 4, "seq_lengths": [2048], "max_pairs_per_row": 1},
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"layout": "evaluation", "history": "full"}, **tuning["keys"],
    }))
    folder = root / "eval"
    assert cli.main(["eval", "--policy", str(out / "model"), "--reference", str(start), "--data",
                     str(out / "heldout.json"), "--mode", "ica", "--max-length", "2048", "--out", str(folder)]) == 0
    return folder, out, summary


def test_trainer_heldout_figures_equal_alignx_eval(trained):
    folder, out, summary = trained
    ours = {row["index"]: row for row in evaluation.read_rows(out / "heldout_scores.jsonl")}
    theirs = {row["index"]: row for row in evaluation.read_rows(folder / "scores.jsonl")}
    assert sorted(ours) == sorted(theirs) and len(ours) == summary["eval_n"] == 12 + 8
    assert not any(row["truncated"] for row in theirs.values())
    keys = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
    got = np.array([[ours[i][k] for k in keys] for i in sorted(ours)])
    want = np.array([[theirs[i][k] for k in keys] for i in sorted(ours)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert [ours[i]["persona"] for i in sorted(ours)] == [theirs[i]["persona"] for i in sorted(ours)]
    report = json.loads((folder / "report.json").read_text())
    assert summary["eval_accuracy"] == report["accuracy"]
    assert summary["eval_accuracy_logp"] == report["accuracy_logp"]
    assert summary["eval_worst_persona_accuracy"] == report["worst_persona_accuracy"]
    assert {p: s["accuracy"] for p, s in summary["per_persona"].items()} == \
        {p: s["accuracy"] for p, s in report["per_persona"].items()}
    # The policy's prompt is the reference's (the evaluation layout) and the start model the reference:
    # DPO's implicit-reward view is the paper's metric here, record for record.
    for row in ours.values():
        assert (row["start_chosen_logp"], row["start_rejected_logp"]) == (row["ref_chosen_logp"], row["ref_rejected_logp"])
    assert summary["eval_reward_accuracy"] == summary["eval_accuracy"]
    assert summary["per_persona_reward"] == summary["per_persona"]
    assert summary["eval_accuracy_before"] == 0.0  # the start model against itself: every margin a tie


def test_seen_and_unseen_figures_equal_alignx_eval_of_their_records(trained):
    folder, out, summary = trained
    records, _ = data.load_records(out / "heldout.json")
    theirs = evaluation.read_rows(folder / "scores.jsonl")
    unseen = {3, 74, 60}
    for group, members in (("seen", lambda marks: not marks & unseen), ("unseen", lambda marks: marks <= unseen)):
        rows = [row for row in theirs if members({i for i, v in enumerate(records[row["index"]][prefs.DIRECTION])
                                                  if v != prefs.NEUTRAL})]
        report = evaluation.summarize(rows, beta=0.1)
        assert summary[f"eval_{group}_n"] == report["n"] == {"seen": 12, "unseen": 8}[group]
        for key in ("accuracy", "accuracy_logp", "worst_persona_accuracy", "worst_persona_accuracy_logp"):
            assert summary[f"eval_{group}_{key}"] == report[key], (group, key)
        assert {p: (s["accuracy"], s["accuracy_logp"]) for p, s in summary[f"per_persona_{group}"].items()} == \
            {p: (s["accuracy"], s["accuracy_logp"]) for p, s in report["per_persona"].items()}
        assert summary[f"eval_{group}_accuracy_logp_before"] is not None
    # The evaluation at step 2 splits the same way: the two groups make up the whole set's figures.
    (interval,) = summary["eval_history"]
    assert interval["step"] == 2 and interval["eval_seen_n"] == 12 and interval["eval_unseen_n"] == 8
    for key in ("accuracy", "accuracy_logp"):
        assert (12 * interval[f"eval_seen_{key}"] + 8 * interval[f"eval_unseen_{key}"]) / 20 == \
            pytest.approx(interval[f"eval_{key}"])
        assert interval[f"eval_worst_persona_{key}"] == min(interval[f"eval_seen_worst_persona_{key}"],
                                                             interval[f"eval_unseen_worst_persona_{key}"])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in logged if "eval_seen_accuracy" in r][0]["eval_seen_accuracy"] == interval["eval_seen_accuracy"]
    assert set(summary["per_persona_seen"]).isdisjoint(summary["per_persona_unseen"])
    assert set(summary["per_persona_seen"]) | set(summary["per_persona_unseen"]) == set(summary["per_persona"])
