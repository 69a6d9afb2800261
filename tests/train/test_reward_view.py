"""The held-out reward view: DPO's implicit reward against the start model in the policy's own prompt,
beside the paper's metric (whose reference reads the few-shot prompt), on hand-made score rows."""
import numpy as np
import pytest

from alignx_jax import evaluation
from alignx_jax.train import export

# persona, policy (chosen, rejected), few-shot reference (chosen, rejected), start model in the policy's prompt
ROWS = [("a", (-10, -12), (-5, -9), (-9, -9)),    # paper: -5 vs -3 wrong;  reward: -1 vs -3 right
        ("a", (-20, -18), (-6, -6), (-25, -20)),  # paper: -14 vs -12 wrong; reward: 5 vs 2 right
        ("b", (-7, -9), (-7, -8), (-6, -10)),     # paper: 0 vs -1 right;   reward: -1 vs 1 wrong
        ("b", (-30, -31), (-10, -10), (-30, -31))]  # paper: -20 vs -21 right; reward: 0 vs 0, a tie: wrong


def _rows():
    return [{"index": i, "persona": persona, "chosen": "c", "rejected": "r",
             "policy_chosen_logp": float(p[0]), "policy_rejected_logp": float(p[1]),
             "ref_chosen_logp": float(r[0]), "ref_rejected_logp": float(r[1]),
             "start_chosen_logp": float(s[0]), "start_rejected_logp": float(s[1])}
            for i, (persona, p, r, s) in enumerate(ROWS)]


def test_the_reward_view_takes_the_start_model_in_the_policys_prompt_as_reference():
    rows = _rows()
    policy = np.array([row[1] for row in ROWS], float)
    start = np.array([row[3] for row in ROWS], float)
    right = (policy[:, 0] - start[:, 0]) > (policy[:, 1] - start[:, 1])  # a tie is wrong, as in the paper's metric
    np.testing.assert_array_equal(right, [True, True, False, False])
    reward = export.reward_report(rows, beta=0.1)
    assert reward["accuracy"] == pytest.approx(right.mean())
    assert {p: s["accuracy"] for p, s in reward["per_persona"].items()} == {"a": 1.0, "b": 0.0}
    assert reward["worst_persona_accuracy"] == 0.0
    paper = evaluation.summarize(rows, beta=0.1)
    assert {p: s["accuracy"] for p, s in paper["per_persona"].items()} == {"a": 0.0, "b": 1.0}
    entry = export.evaluation_entry(7, rows, paper, reward, frozenset(), beta=0.1)
    assert (entry["eval_accuracy"], entry["eval_reward_accuracy"], entry["eval_worst_persona_reward_accuracy"]) == \
        (0.5, 0.5, 0.0)
    assert rows == _rows()  # the view copies the rows
