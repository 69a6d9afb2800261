"""Persona-stratified subsets: never a file prefix of a persona-sorted benchmark."""
import pytest

from alignx_jax import data


def sorted_benchmark(sizes):
    """Records sorted by persona, as the benchmark files are: sizes[k] records of persona k."""
    return [{"ground_truth_persona": f"p{k}", "prompt": f"{k}-{i}"} for k, n in enumerate(sizes) for i in range(n)]


def personas(records, indices):
    return [records[i]["ground_truth_persona"] for i in indices]


def test_take_evenly_splits_the_limit_across_personas():
    records = sorted_benchmark([300, 300])
    chosen = data.take_evenly(records, 60)
    assert personas(records, chosen).count("p0") == personas(records, chosen).count("p1") == 30
    assert chosen == sorted(chosen) and chosen[:30] == list(range(30)) and chosen[30:] == list(range(300, 330))


def test_take_evenly_gives_a_small_personas_share_to_the_others():
    records = sorted_benchmark([2, 10, 10])
    got = personas(records, data.take_evenly(records, 12))
    assert (got.count("p0"), got.count("p1"), got.count("p2")) == (2, 5, 5)
    assert len(data.take_evenly(records, 100)) == 22


def test_first_per_persona_and_groups():
    records = sorted_benchmark([3, 4])
    assert data.first_per_persona(records, 2) == [0, 1, 3, 4]
    assert data.persona_groups(records) == {"p0": [0, 1, 2], "p1": [3, 4, 5, 6]}


def test_heldout_split_is_seeded_disjoint_and_stratified():
    records = sorted_benchmark([50, 40])
    train, heldout = data.heldout_split(records, 10, seed=3)
    assert sorted(train + heldout) == list(range(90)) and not set(train) & set(heldout)
    assert personas(records, heldout).count("p0") == personas(records, heldout).count("p1") == 10
    assert data.heldout_split(records, 10, seed=3) == (train, heldout)
    assert data.heldout_split(records, 10, seed=4)[1] != heldout


@pytest.mark.parametrize("fn", [data.take_evenly, data.first_per_persona])
def test_negative_counts_are_refused(fn):
    with pytest.raises(ValueError, match="must be >= 0"):
        fn(sorted_benchmark([1]), -1)
