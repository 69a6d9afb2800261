"""The preference space: labels, lookup, profile text round trips, and the official profile rule."""
import json

import numpy as np
import pytest
import torch

from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError


def official_get_profile(history):
    """Independent transcription of the official `get_profile.py` (torch, float32 as there)."""
    features = [(d.positive, d.negative) for d in prefs.dimensions()]

    def trans_persona(embedding):
        return ", ".join(features[i][0] if v == 1 else features[i][1] for i, v in enumerate(embedding) if v in (0, 1))

    mean_list = torch.tensor(history).mean(dim=0, keepdim=True).squeeze().tolist()
    profile = trans_persona([1 if x >= 0.6 else 0 if x <= 0.4 else 0.5 for x in mean_list])
    if profile == "":
        mean = torch.tensor(history).mean(dim=0, keepdim=True).squeeze()
        max_val, min_val = torch.max(mean), torch.min(mean)
        if 1 - max_val < min_val:
            mean[mean == max_val] = 1
        else:
            mean[mean == min_val] = 0
        mean = torch.where((mean != 1) & (mean != 0), torch.tensor(0.5), mean)
        profile = trans_persona(mean.tolist())
    return profile


def test_dimensions_match_the_shared_definition(shared_data_dir):
    raw = json.loads((shared_data_dir / "preference_dimensions.json").read_text())
    assert [(d.index, d.positive, d.negative) for d in prefs.dimensions()] == [
        (d["index"], d["positive"], d["negative"]) for d in raw["dimensions"]
    ]
    assert (prefs.thresholds().positive, prefs.thresholds().negative) == (0.6, 0.4)


def test_labels_are_unique_and_lookup_finds_each():
    dims = prefs.dimensions()
    assert len(dims) == prefs.NUM_DIMENSIONS
    for d in dims:
        assert prefs.lookup(d.positive) == (d, 1.0)
        assert prefs.lookup(d.negative) == (d, 0.0)
    with pytest.raises(ValueError, match="unknown preference label 'Likes naps'"):
        prefs.lookup("Likes naps")


def test_profile_text_round_trips_on_random_vectors():
    rng = np.random.default_rng(0)
    for _ in range(50):
        direction = rng.choice([0.0, 0.5, 1.0], size=prefs.NUM_DIMENSIONS)
        text = prefs.profile_text(direction)
        np.testing.assert_array_equal(prefs.parse_profile(text), direction)


def test_profile_text_reads_labels_with_commas(official_labels):
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5)
    direction[[14, 15]] = 1.0, 0.0  # both labels contain ", "
    text = prefs.profile_text(direction)
    assert text == ("Prefers superficial interaction (casual, stress-free chat), "
                    "Prefers avoidance, mediation, compromise to handle conflict")
    np.testing.assert_array_equal(prefs.parse_profile(text), direction)


def test_parse_profile_errors(official_labels):
    with pytest.raises(ValueError, match="unknown label at character 8: 'Likes naps'"):
        prefs.parse_profile("Female, Likes naps")
    with pytest.raises(ValueError, match="names dimension 1 .* twice"):
        prefs.parse_profile("Female, Male")


@pytest.mark.parametrize("neutral_share", [0.0, 0.6, 0.95])
def test_official_profile_equals_transcription_on_random_histories(neutral_share):
    rng = np.random.default_rng(int(neutral_share * 100))
    for _ in range(200):
        n = int(rng.integers(1, 9))
        history = rng.choice([0.0, 1.0], size=(n, prefs.NUM_DIMENSIONS))
        history[rng.random(history.shape) < neutral_share] = 0.5
        assert prefs.official_profile(history) == official_get_profile(history.tolist())


def test_official_profile_fallback_cases_equal_transcription(official_labels):
    neutral = np.full((2, prefs.NUM_DIMENSIONS), 0.5)
    high = neutral.copy()
    high[0, [3, 7]] = 0.6  # means 0.55 at dims 3 and 7: nothing marked, max side wins (1 - 0.55 < 0.5)
    low = neutral.copy()
    low[0, 9] = 0.3  # mean 0.4 at dim 9 in float32 is 0.4000000059 > 0.4: still unmarked -> min side
    low[1, 9] = 0.5
    for history, expected in ((high, "High Extraversion, Likes a certain food"), (low, "Dislikes sleep"), (neutral, None)):
        assert prefs.official_profile(history) == official_get_profile(history.tolist())
        if expected is not None:
            assert prefs.official_profile(history) == expected
    # All neutral: 1 - 0.5 < 0.5 is false, so every dimension becomes negative.
    assert prefs.official_profile(neutral) == ", ".join(d.negative for d in prefs.dimensions())


def test_mean_of_two_fifths_stays_neutral_as_in_float32(official_labels):
    history = np.full((5, prefs.NUM_DIMENSIONS), 0.5)
    history[:, 0] = [0, 0, 1, 0.5, 0.5]  # mean 0.4 (float32 0.40000000596)
    history[:, 1] = [1, 1, 1, 0, 0]  # mean 0.6 (float32 0.60000002384): positive
    assert prefs.official_profile(history) == official_get_profile(history.tolist()) == "Female"


def test_golden_profile_thresholds_without_fallback(official_labels):
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5)
    assert prefs.golden_profile(direction) == ""
    direction[[0, 89]] = 0.7, 0.2
    assert prefs.golden_profile(direction) == "Young, Dislikes fashion"


def test_shape_errors():
    with pytest.raises(ValueError, match=r"direction must have shape \(90,\), got \(89,\)"):
        prefs.profile_text([0.5] * 89)
    with pytest.raises(ValueError, match=r"history directions must have shape \(n >= 1, 90\)"):
        prefs.official_profile(np.zeros((0, 90)))


@pytest.fixture
def fresh_vocabulary(monkeypatch):
    """The vocabulary is read once per process: clear it around a test that changes where it comes from."""
    from alignx_jax.preferences import _space

    def clear():
        _space._load.cache_clear()
        _space._label_table.cache_clear()

    clear()
    yield monkeypatch
    monkeypatch.undo()
    clear()


def test_vocabulary_comes_from_the_named_file(fresh_vocabulary, tmp_path):
    path = tmp_path / "dims.json"
    path.write_text(json.dumps({"dimensions": [{"index": i, "positive": f"P{i}", "negative": f"N{i}"}
                                               for i in range(prefs.NUM_DIMENSIONS)]}))
    fresh_vocabulary.setenv("ALIGNX_PREFERENCE_DIMENSIONS", str(path))
    assert prefs.lookup("N16") == (prefs.Dimension(16, "P16", "N16"), 0.0)
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5)
    direction[[3, 16]] = 1.0, 0.0
    assert prefs.profile_text(direction) == "P3, N16"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("[1, 2]", r"expected \{\"dimensions\""),
    (json.dumps({"dimensions": [{"index": 1, "positive": "a", "negative": "b"}]}), "expected dimensions 0..89 in order"),
])
def test_a_bad_vocabulary_file_is_named(fresh_vocabulary, tmp_path, content, message):
    path = tmp_path / "dims.json"
    if content is not None:
        path.write_text(content)
    fresh_vocabulary.setenv("ALIGNX_PREFERENCE_DIMENSIONS", str(path))
    with pytest.raises(InputError, match=message):
        prefs.dimensions()


def test_without_a_vocabulary_file_dimensions_are_named_by_index(fresh_vocabulary):
    from alignx_jax.preferences import _space

    fresh_vocabulary.delenv("ALIGNX_PREFERENCE_DIMENSIONS", raising=False)
    fresh_vocabulary.setattr(_space, "vocabulary_path", lambda: None)
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5)
    direction[[3, 16]] = 1.0, 0.0
    assert prefs.profile_text(direction) == "dimension 3: positive, dimension 16: negative"
    np.testing.assert_array_equal(prefs.parse_profile(prefs.profile_text(direction)), direction)
