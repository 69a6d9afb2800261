"""One scoring service: the trainer's held-out figures equal `alignx eval` of the same checkpoint on
the run's `heldout.json` (the policy: out_dir/model; the reference: the start model), per record and
per persona. Both score through `evaluation.PairScorer` with the same prompts (the official
evaluation layout, every history item, the same token budget: 2048 holds every held-out persona
whole), so they may differ only by float summation order. With LoRA on the top layer only, the
trainer scores its policy above the base layer's kept output (`PairScorer.trunk`), and `alignx eval`
runs the exported merged model whole: the same figures again."""
import json

import numpy as np
import pytest

from alignx_jax import cli, evaluation, interop
from alignx_jax.train import config_from_dict, train

MODEL = {"preset": "tiny", "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64}}
FINE_TUNING = {"full": {"num_layers": 1, "keys": {}},
               "lora_top_layer": {"num_layers": 2, "keys": {"reference": "lora", "lora": {"rank": 4, "layers": 1},
                                                            "optimizer": {"lr": 3e-2, "warmup_steps": 1}}}}


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
        "seed": 0, "steps": 3, "checkpoint_every": 3, "out_dir": str(out), "model": {"name": str(start)},
        "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1},
                 "heldout_synthetic": {"users": 4, "records_per_user": 3, "history_items": 2},
                 "rows": 4, "seq_lengths": [2048], "max_pairs_per_row": 1},
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"layout": "evaluation", "history": "full"}, **tuning["keys"],
    }))
    return root, start, out, summary


def test_trainer_heldout_figures_equal_alignx_eval(trained):
    root, start, out, summary = trained
    folder = root / "eval"
    assert cli.main(["eval", "--policy", str(out / "model"), "--reference", str(start), "--data",
                     str(out / "heldout.json"), "--mode", "ica", "--max-length", "2048", "--out", str(folder)]) == 0
    ours = {row["index"]: row for row in evaluation.read_rows(out / "heldout_scores.jsonl")}
    theirs = {row["index"]: row for row in evaluation.read_rows(folder / "scores.jsonl")}
    assert sorted(ours) == sorted(theirs) and len(ours) == summary["eval_n"] == 12
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
