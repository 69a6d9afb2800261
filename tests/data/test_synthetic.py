"""Synthetic users: exact schema, deterministic, learnable with the persona, 50% without it."""
import collections
import re

import numpy as np
import pytest

from alignx_jax import data
from alignx_jax import preferences as prefs


@pytest.fixture(scope="module")
def records():
    return data.synthetic_records(40, seed=0, records_per_user=4, history_items=6)


def test_schema_count_and_determinism(records):
    assert len(records) == 160
    for i, record in enumerate(records):
        prefs.validate_record(record, i)  # the strict training schema
        assert list(record) == list(prefs.TRAINING_FIELDS)
        assert record["chosen"] != record["rejected"]
    assert data.synthetic_records(40, seed=0, records_per_user=4, history_items=6) == records
    assert data.synthetic_records(40, seed=1, records_per_user=4, history_items=6) != records
    assert len(data.synthetic_records(3, seed=0, records_per_user=2)) == 6


def test_directions_are_sparse_and_history_reveals_them(records):
    for record in records:
        marked = [v for v in record["Preference Direction"] if v != 0.5]
        assert 2 <= len(marked) <= 4 and set(marked) <= {0.0, 1.0}
        history = record["User-Generated Content"] + record["Pair-wise Comparative Feedback"]
        # The official PBA profile of the full history is the user's true profile.
        assert prefs.official_profile([h["Preference Direction"] for h in history]) == prefs.golden_profile(record["Preference Direction"])


def test_mirror_users_make_a_persona_blind_scorer_score_exactly_half(records):
    choices = collections.Counter()
    for r in records:
        choices[(r["prompt"], r["chosen"], r["rejected"])] += 1
    for (prompt, chosen, rejected), n in choices.items():
        assert choices[(prompt, rejected, chosen)] == n  # the opposite user chose the other one
    longer_wins = [len(r["chosen"]) > len(r["rejected"]) for r in records if len(r["chosen"]) != len(r["rejected"])]
    assert sum(longer_wins) * 2 == len(longer_wins)


def sentences(text):
    return {s for s in re.split(r"(?<=[.!?])\s+", text) if s and not s.startswith("About ")}


def test_persona_makes_the_choice_learnable(records):
    # A persona-aware scorer: prefer the response whose style sentences the user's own comments share.
    correct = 0
    for r in records:
        own = set().union(*(sentences(u["comment"]) for u in r["User-Generated Content"]))
        chosen, rejected = sentences(r["chosen"]), sentences(r["rejected"])
        correct += len(chosen & own) - len(chosen - own) > len(rejected & own) - len(rejected - own)
    assert correct / len(records) > 0.85


def test_bad_arguments():
    with pytest.raises(ValueError, match="need num_users >= 0, records_per_user >= 1"):
        data.synthetic_records(2, seed=0, records_per_user=0)


def test_response_styles_reads_back_every_applied_style():
    from alignx_jax.data import _synthetic

    rng = np.random.default_rng(0)
    indices = [style.index for style in _synthetic.STYLES]
    for _ in range(200):
        settings = {i: bool(rng.integers(2)) for i in indices if rng.random() < 0.6}
        text = _synthetic._response("a rainy weekend", settings)
        read = _synthetic.response_styles(text)
        assert {i: read[i] for i in settings} == settings, (settings, text)
    both = _synthetic._response("x", {indices[1]: True}) + " " + _synthetic._response("x", {indices[1]: False})
    assert indices[1] not in _synthetic.response_styles(both)  # both tones present: not read


def test_style_dimensions_are_the_official_labels_dimensions(official_labels):
    from alignx_jax.data import _synthetic

    for style in _synthetic.STYLES:
        assert prefs.lookup(style.label) == (prefs.dimensions()[style.index], 1.0), style.label
