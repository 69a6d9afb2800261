"""The views of a training run's held-out scores (`evaluation.group_reports`): the synthetic and
P-Soups groups, the start model as the "before" policy, and the per-token policy-only view (log-probs
over the packer's token counts), checked on hand-made scores where the sum and per-token views disagree."""
from alignx_jax import evaluation


def test_group_reports_split_by_source_and_add_the_per_token_view(heldout_run_dir, word_tokenizer):
    groups = evaluation.group_reports(heldout_run_dir, 0.1, word_tokenizer)
    assert sorted(groups) == ["psoups", "synthetic"]
    synthetic = groups["synthetic"]
    assert synthetic["before"]["n"] == synthetic["after"]["n"] == 2
    per_persona = lambda report: {p: s["accuracy_logp"] for p, s in report["per_persona"].items()}  # noqa: E731
    assert per_persona(synthetic["before"]) == {"A": 0.0, "B": 1.0}
    assert per_persona(synthetic["after"]) == {"A": 0.0, "B": 1.0}
    assert per_persona(synthetic["before_per_token"]) == {"A": 0.0, "B": 1.0}
    assert per_persona(synthetic["after_per_token"]) == {"A": 1.0, "B": 1.0}
    assert synthetic["after"]["per_persona"]["A"]["accuracy"] == 1.0  # paper's metric: (-8 + 12) > (-6 + 4)
    assert synthetic["after_per_token"]["per_persona"]["A"]["accuracy"] == 1.0  # (-2 + 3) > (-3 + 2)
    assert groups["psoups"]["after"]["n"] == 1 and groups["psoups"]["after_per_token"]["accuracy_logp"] == 1.0


def test_per_token_divides_every_logp_by_its_side_length(word_tokenizer):
    row = {"policy_chosen_logp": -8.0, "policy_rejected_logp": -6.0, "ref_chosen_logp": -4.0, "ref_rejected_logp": -2.0}
    out = evaluation.per_token(row, {"chosen": 4, "rejected": 2})
    assert out == {"policy_chosen_logp": -2.0, "policy_rejected_logp": -3.0, "ref_chosen_logp": -1.0,
                   "ref_rejected_logp": -1.0}
    assert evaluation.scored_tokens(word_tokenizer, "a b c") == 4  # three words + EOS
