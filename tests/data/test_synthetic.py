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
    indices = [style.index for style in _synthetic.STYLES + _synthetic.EXTRA_TOPIC_STYLES]
    for _ in range(200):
        settings = {i: bool(rng.integers(2)) for i in indices if rng.random() < 0.6}
        text = _synthetic._response("a rainy weekend", settings)
        read = _synthetic.response_styles(text)
        assert {i: read[i] for i in settings} == settings, (settings, text)
    both = _synthetic._response("x", {indices[1]: True}) + " " + _synthetic._response("x", {indices[1]: False})
    assert indices[1] not in _synthetic.response_styles(both)  # both tones present: not read


def test_style_dimensions_are_the_official_labels_dimensions(official_labels):
    from alignx_jax.data import _synthetic

    for style in _synthetic.STYLES + _synthetic.EXTRA_TOPIC_STYLES:
        assert prefs.lookup(style.label) == (prefs.dimensions()[style.index], 1.0), style.label


# ---- users of a chosen set of dimensions (unseen preference dimensions, issue 25) ----

SEEN = (16, 5, 6, 73, 47, 56)  # length, tone, formality, humour, science, sports
UNSEEN = (3, 74, 60, 69)  # enthusiasm, music, travel, finance


def expressed_styles(text):
    """The synthetic styles whose text is in `text` (a marker that the unstyled response lacks)."""
    from alignx_jax.data import _synthetic

    plain = _synthetic._response("x", {})
    return {style.index for style in _synthetic.STYLES + _synthetic.EXTRA_TOPIC_STYLES
            for marker in (style.positive_marker, style.negative_marker) if marker and marker not in plain and marker in text}


def marked(direction):
    return {i for i, v in enumerate(direction) if v != prefs.NEUTRAL}


@pytest.mark.parametrize("dimensions", [SEEN, UNSEEN, (69,), (74, 3), SEEN + data.EXTRA_TOPIC_DIMENSIONS])
def test_users_mark_and_responses_express_only_the_chosen_dimensions(dimensions):
    records = data.synthetic_records(48, seed=5, records_per_user=3, history_items=3, dimensions=dimensions)
    assert len(records) == 144
    allowed = set(dimensions)
    for i, record in enumerate(records):
        prefs.validate_record(record, i)
        user = marked(record["Preference Direction"])
        assert user <= allowed and min(2, len(allowed)) <= len(user) <= min(4, len(allowed))
        # The target pair contrasts some of the user's marks, and no response shows another style.
        chosen, rejected = data.response_styles(record["chosen"]), data.response_styles(record["rejected"])
        contrast = {i for i in data.STYLE_DIMENSIONS + data.EXTRA_TOPIC_DIMENSIONS if chosen.get(i) != rejected.get(i)}
        assert contrast and contrast <= user, record
        for pair in record["Pair-wise Comparative Feedback"]:
            assert marked(pair["Preference Direction"]) <= user
            assert expressed_styles(pair["chosen"] + pair["rejected"]) <= allowed
        for item in record["User-Generated Content"]:
            assert marked(item["Preference Direction"]) == user
            assert expressed_styles(item["comment"]) <= allowed
        assert expressed_styles(record["chosen"] + record["rejected"]) <= allowed
    # Every chosen dimension is marked by some user.
    assert set().union(*(marked(r["Preference Direction"]) for r in records)) == allowed


def records_digest(records):
    """sha256 of the records without the demographic line (its labels depend on the vocabulary file)."""
    import hashlib
    import json

    kept = [{k: v for k, v in r.items() if k != prefs.DEMOGRAPHICS} for r in records]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def test_all_dimensions_is_the_generator_before_dimensions_existed():
    # Digests of `synthetic_records` as committed before `dimensions` (a69dc82): fixtures depend on them.
    before = {(40, 0, 4, 6): "c991f13cc31d6f7be45a8e8e25c1c296f1b5767c57171b0b4651f343b469a34d",
              (7, 3, 2, 1): "26c1e966667f4273e06fd7979b768f7ed416f7f8bb00139e4d5f62858ebc12be"}
    for (users, seed, per_user, items), digest in before.items():
        records = data.synthetic_records(users, seed=seed, records_per_user=per_user, history_items=items)
        assert records_digest(records) == digest
        every = data.synthetic_records(users, seed=seed, records_per_user=per_user, history_items=items,
                                       dimensions=reversed(data.STYLE_DIMENSIONS))
        assert every == records


def test_chosen_dimensions_by_label_and_bad_ones():
    assert data.style_dimensions(["Likes music", 3]) == (74, 3)
    assert data.style_dimensions(["Likes cinema", "Likes digital technology"]) == (50, 71)  # extra topics
    assert set(data.EXTRA_TOPIC_DIMENSIONS).isdisjoint(data.STYLE_DIMENSIONS) and len(data.EXTRA_TOPIC_DIMENSIONS) == 14
    assert data.synthetic_records(4, seed=0, dimensions=["Likes music", "High Extraversion"]) == \
        data.synthetic_records(4, seed=0, dimensions=(3, 74))
    with pytest.raises(ValueError, match=r"^7 is not a synthetic style dimension; known: 16 \(Concise communication "
                                         r"style\), 5 \(High Agreeableness\),"):
        data.style_dimensions([16, 7])
    with pytest.raises(ValueError, match="^'Likes jazz' is not a synthetic style dimension"):
        data.style_dimensions(["Likes jazz"])
    with pytest.raises(ValueError, match="^'Likes music' names dimension 74 twice$"):
        data.style_dimensions([74, "Likes music"])
    with pytest.raises(ValueError, match="^dimensions names no style dimension; None means STYLE_DIMENSIONS$"):
        data.synthetic_records(2, seed=0, dimensions=[])
