"""The views of a training run's held-out scores (`evaluation.group_reports`): the synthetic and
P-Soups groups, the start model as the "before" policy, and the per-token policy-only view (log-probs
over the packer's token counts), checked on hand-made scores where the sum and per-token views disagree."""
import json

import pytest

from alignx_jax import data, evaluation, preferences


class WordTokenizer:
    """One token per word: the packer scores a response's ids plus EOS, so "a b c" counts 4 tokens."""

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return text.split()


def _row(index, record, *, policy, start):
    """A held-out score row; `policy` / `start`: (chosen, rejected) log-probs; the reference is the start."""
    return {"index": index, "persona": record["persona"], "chosen": "a b c", "rejected": "a",
            "policy_chosen_logp": policy[0], "policy_rejected_logp": policy[1],
            "ref_chosen_logp": start[0], "ref_rejected_logp": start[1],
            "start_chosen_logp": start[0], "start_rejected_logp": start[1]}


@pytest.fixture
def train_dir(tmp_path):
    records = data.synthetic_records(2, seed=0, records_per_user=1, history_items=1)
    records.append(dict(records[0], **{preferences.GROUND_TRUTH_PERSONA: "Be friendly."}))
    data.write_records(records, tmp_path / "heldout.json")
    personas = [{"persona": "A"}, {"persona": "B"}, {"persona": "Be friendly."}]
    rows = [
        # chosen 4 tokens, rejected 2. After: sum -8 < -6 (wrong), per token -2 > -3 (right).
        _row(0, personas[0], policy=(-8.0, -6.0), start=(-12.0, -4.0)),  # start: -3 < -2 per token (wrong)
        # After: sum -5 > -6 (right), per token -1.25 > -3 (right); start: -4 > -10 (right), -1 > -5.
        _row(1, personas[1], policy=(-5.0, -6.0), start=(-4.0, -10.0)),
        _row(2, personas[2], policy=(-1.0, -9.0), start=(-9.0, -1.0)),
    ]
    (tmp_path / "heldout_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_group_reports_split_by_source_and_add_the_per_token_view(train_dir):
    groups = evaluation.group_reports(train_dir, 0.1, WordTokenizer())
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


def test_per_token_divides_every_logp_by_its_side_length():
    row = {"policy_chosen_logp": -8.0, "policy_rejected_logp": -6.0, "ref_chosen_logp": -4.0, "ref_rejected_logp": -2.0}
    out = evaluation.per_token(row, {"chosen": 4, "rejected": 2})
    assert out == {"policy_chosen_logp": -2.0, "policy_rejected_logp": -3.0, "ref_chosen_logp": -1.0,
                   "ref_rejected_logp": -1.0}
    assert evaluation.scored_tokens(WordTokenizer(), "a b c") == 4  # three words + EOS
