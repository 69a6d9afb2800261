"""Win / tie / loss: both orders must agree for a win; the report's worst persona is the table's minimum."""
import pytest

from alignx_jax import evaluation
from alignx_jax.errors import InputError
from alignx_jax.evaluation import _judge


@pytest.mark.parametrize("reply, verdict", [("A", "A"), (" b.", "B"), ("**A**", "A"), ("'B' is better", "B"),
                                            ("Both", "tie"), ("", "tie"), ("Answer: A", "tie")])
def test_parse_verdict(reply, verdict):
    assert _judge.parse_verdict(reply) == verdict


def test_a_win_needs_both_orders():
    assert _judge.combine("A", "B") == "win"  # A first and preferred; then A second and preferred
    assert _judge.combine("B", "A") == "loss"
    assert _judge.combine("A", "A") == "tie"  # the judge always takes the first position
    assert _judge.combine("tie", "B") == "tie"


class FirstLover:
    """A judge with a pure position bias: every pair must come out a tie."""

    name = "first"

    def prefer(self, prompts):
        return ["A"] * len(prompts)


def test_position_bias_cancels_and_the_summary_counts_per_persona():
    rows = [{"index": i, "persona": "p" if i < 3 else "q", "post": f"x{i}", "response": f"r{i}"} for i in range(5)]
    pairs = _judge.pair_generations(rows, [dict(r, response="other") for r in rows])
    judged = evaluation.judge_pairs(pairs, FirstLover())
    assert [j["outcome"] for j in judged] == ["tie"] * 5
    report = evaluation.summarize_judgments(
        [dict(j, outcome=o) for j, o in zip(judged, ["win", "win", "loss", "tie", "loss"])])
    assert (report["win"], report["tie"], report["loss"], report["n"]) == (2, 1, 2, 5)
    assert report["win_rate"] == pytest.approx(2.5 / 5)
    assert report["per_persona"]["p"]["win_rate"] == pytest.approx(2 / 3)
    assert report["worst_persona"] == "q" and report["worst_persona_win_rate"] == pytest.approx(0.25)


def test_generations_of_different_data_are_refused():
    a = [{"index": 0, "post": "hello", "response": "x"}]
    b = [{"index": 0, "post": "other", "response": "y"}]
    with pytest.raises(InputError, match="different posts for record 0"):
        _judge.pair_generations(a, b)
    assert _judge.pair_generations(a, [{"index": 1, "post": "z", "response": "y"}]) == []
