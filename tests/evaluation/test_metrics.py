"""Accuracy math: closed forms, ties counted wrong, worst persona = min of the table, bootstrap CIs."""
import numpy as np
import pytest

from alignx_jax import evaluation


def row(pc, pr, rc, rr, persona="a", index=0, **extra):
    return {"policy_chosen_logp": pc, "policy_rejected_logp": pr, "ref_chosen_logp": rc, "ref_rejected_logp": rr,
            "persona": persona, "index": index, **extra}


def test_hand_computed_accuracy_with_a_tie_counted_wrong():
    beta = 0.1
    rows = [
        row(-10.0, -12.0, -11.0, -11.0, index=0),  # r_w - r_l = 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2 > 0: correct
        row(-10.0, -12.0, -9.0, -13.0, index=1),   # 0.1 * ((-1) - (1)) = -0.2: wrong (though log p_w > log p_l)
        row(-5.0, -5.0, -7.0, -7.0, index=2),      # 0.1 * (2 - 2) = 0: a tie, wrong; log p tie, wrong too
        row(-8.0, -6.0, -9.0, -4.0, index=3),      # 0.1 * (1 - (-2)) = 0.3: correct; log p_w < log p_l
    ]
    np.testing.assert_allclose(evaluation.reward_margins(rows, beta=beta), [0.2, -0.2, 0.0, 0.3], atol=1e-12)
    assert evaluation.correct(rows, beta=beta).tolist() == [True, False, False, True]
    assert evaluation.correct_logp(rows).tolist() == [True, True, False, False]
    report = evaluation.summarize(rows, beta=beta)
    assert report["n"] == 4 and report["accuracy"] == 0.5 and report["accuracy_logp"] == 0.5


def test_beta_only_scales_the_margin():
    rows = [row(-1.0, -3.0, -2.0, -2.5, index=i) for i in range(3)]
    np.testing.assert_allclose(evaluation.reward_margins(rows, beta=0.5), 5 * evaluation.reward_margins(rows, beta=0.1))
    with pytest.raises(ValueError, match="beta"):
        evaluation.reward_margins(rows, beta=0.0)


def test_worst_persona_is_the_minimum_of_the_per_persona_table():
    rng = np.random.default_rng(0)
    rows = [row(*rng.normal(size=4), persona=f"p{i % 3}", index=i, history_size=i % 2, item_types="pair")
            for i in range(60)]
    report = evaluation.summarize(rows)
    table = report["per_persona"]
    assert sum(v["n"] for v in table.values()) == 60
    assert report["worst_persona_accuracy"] == min(v["accuracy"] for v in table.values())
    assert report["worst_persona_accuracy_logp"] == min(v["accuracy_logp"] for v in table.values())
    assert table[report["worst_persona"]]["accuracy"] == report["worst_persona_accuracy"]
    for group in list(report["per_item_type"].values()) + list(report["per_history_size"].values()):
        assert "worst_persona_accuracy" in group and group["worst_persona_accuracy"] <= group["accuracy"] + 1e-12
    assert set(report["per_history_size"]) == {"0", "1"}


def test_report_does_not_depend_on_row_order():
    rng = np.random.default_rng(1)
    rows = [row(*rng.normal(size=4), persona=f"p{i % 2}", index=i) for i in range(40)]
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    assert evaluation.summarize(rows) == evaluation.summarize(shuffled)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    small = np.array([1, 0] * 10, float)
    large = np.array([1, 0] * 500, float)
    lo, hi = evaluation.bootstrap_ci(small)
    assert lo < 0.5 < hi
    lo2, hi2 = evaluation.bootstrap_ci(large)
    assert lo < lo2 < 0.5 < hi2 < hi
    assert evaluation.bootstrap_ci(np.ones(7)) == [1.0, 1.0]
    # Binomial standard error: 1.96 * sqrt(0.25 / 1000) = 0.031, the bootstrap half-width is close.
    assert abs((hi2 - lo2) / 2 - 1.96 * np.sqrt(0.25 / 1000)) < 0.006


def test_history_sweep_headline_uses_the_largest_setting():
    rows = ([row(-1.0, -2.0, -1.0, -1.0, index=i, history=None, history_size=4) for i in range(4)]
            + [row(-2.0, -1.0, -1.0, -1.0, index=i, history=0, history_size=0) for i in range(4)])
    report = evaluation.summarize(rows)
    assert report["n"] == 4 and report["accuracy"] == 1.0
    assert report["per_history_size"]["0"]["accuracy"] == 0.0 and report["per_history_size"]["4"]["accuracy"] == 1.0
    assert report["history_settings"] == [0, "all"]


def test_rows_without_breakdown_keys_give_empty_breakdowns():
    rows = [row(-1.0, -2.0, -1.5, -1.5, persona=f"p{i % 2}", index=i) for i in range(4)]
    report = evaluation.summarize(rows)
    assert report["per_item_type"] == {} and report["per_history_size"] == {}
    assert report["accuracy"] == 1.0 and set(report["per_persona"]) == {"p0", "p1"}
