"""Stratified selection: a limit takes personas evenly, never a file prefix."""
import pytest

from alignx_jax import evaluation


def records(sizes):
    return [{"ground_truth_persona": name, "prompt": "p", "chosen": "c", "rejected": "r"}
            for name, n in sizes.items() for _ in range(n)]


def test_limit_60_on_a_persona_sorted_file_takes_30_of_each():
    recs = records({"friendly": 300, "unfriendly": 300})
    chosen = evaluation.select_indices(recs, limit=60)
    assert chosen == list(range(30)) + list(range(300, 330))


def test_uneven_personas_share_what_a_small_one_cannot_use():
    recs = records({"a": 2, "b": 50, "c": 50})
    chosen = evaluation.select_indices(recs, limit=31)
    counts = {k: sum(recs[i]["ground_truth_persona"] == k for i in chosen) for k in "abc"}
    assert counts == {"a": 2, "b": 15, "c": 14}
    assert len(evaluation.select_indices(recs, limit=1000)) == 102


def test_per_persona_takes_the_first_n_of_each():
    recs = records({"a": 5, "b": 5})
    assert evaluation.select_indices(recs, per_persona=2) == [0, 1, 5, 6]
    assert evaluation.select_indices(recs, per_persona=2, limit=3) == [0, 1, 5]
    assert evaluation.select_indices(recs) == list(range(10))
    with pytest.raises(ValueError, match="limit"):
        evaluation.select_indices(recs, limit=0)
