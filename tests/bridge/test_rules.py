"""The `official` and `golden` bridge modes are the landed rules, exactly; MAP profiles, edits, soft tokens."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import bridge
from alignx_jax import preferences as prefs

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "preferences"))
from test_space import official_get_profile  # noqa: E402  (the independent torch transcription)

official = jax.jit(bridge.official_distribution)


def padded(histories, max_items):
    """[B, M, 90] directions and [B, M] masks, with the padding filled by junk (it must be ignored)."""
    rng = np.random.default_rng(123)
    x = rng.random((len(histories), max_items, prefs.NUM_DIMENSIONS)).astype(np.float32) * 7
    mask = np.zeros((len(histories), max_items), bool)
    for b, h in enumerate(histories):
        x[b, :len(h)] = h
        mask[b, :len(h)] = True
    return x, mask


def profile_of(distribution):
    return bridge.map_profile(np.asarray(distribution))


@pytest.mark.parametrize("neutral_share", [0.0, 0.6, 0.95])
def test_official_mode_equals_the_transcription_on_random_histories(neutral_share):
    rng = np.random.default_rng(int(neutral_share * 100) + 7)
    histories = []
    for _ in range(96):
        n = int(rng.integers(1, 17))
        h = rng.choice([0.0, 1.0], size=(n, prefs.NUM_DIMENSIONS))
        h[rng.random(h.shape) < neutral_share] = 0.5
        histories.append(h)
    dist = np.asarray(official(*padded(histories, 16)))
    assert set(np.unique(dist)) == {0.0, 1.0} and (dist.sum(-1) == 1).all()  # one-hot
    for b, h in enumerate(histories):
        assert profile_of(dist[b]) == official_get_profile(h.tolist())


def test_official_mode_fallback_cases_equal_the_transcription(official_labels):
    neutral = np.full((2, prefs.NUM_DIMENSIONS), 0.5)
    high = neutral.copy()
    high[0, [3, 7]] = 0.6  # means 0.55: nothing marked, 1 - 0.55 < 0.5 -> the max side is positive
    low = neutral.copy()
    low[0, 9] = 0.3  # mean 0.4 is 0.4000000059 in float32 > 0.4: unmarked -> the min side is negative
    fifths = np.full((5, prefs.NUM_DIMENSIONS), 0.5)
    fifths[:, 0] = [0, 0, 1, 0.5, 0.5]  # mean 2/5 stays neutral, as in float32
    fifths[:, 1] = [1, 1, 1, 0, 0]  # mean 3/5 is positive
    cases = [high, low, neutral, fifths, neutral[:1]]
    dist = np.asarray(official(*padded(cases, 6)))
    for b, h in enumerate(cases):
        assert profile_of(dist[b]) == official_get_profile(h.tolist()) == prefs.official_profile(h)
    assert profile_of(dist[0]) == "High Extraversion, Likes a certain food"
    assert profile_of(dist[1]) == "Dislikes sleep"
    assert profile_of(dist[3]) == "Female"


def test_official_mode_equals_the_landed_rule_bit_for_bit_on_random_means():
    """Arbitrary float values (not only 0 / 0.5 / 1): the float32 mean, the 0.6 / 0.4 comparisons
    and the fallback's ties agree with `preferences.official_profile_direction` everywhere."""
    rng = np.random.default_rng(5)
    histories = []
    for i in range(200):
        n = int(rng.integers(1, 17))
        scale = (0.05, 0.3, 1.0)[i % 3]  # small spreads hit the fallback
        h = np.clip(0.5 + scale * rng.standard_normal((n, prefs.NUM_DIMENSIONS)), 0, 1).astype(np.float32)
        if i % 5 == 0:
            h = np.round(h * 5) / 5  # exact fifths: means on the thresholds
        histories.append(h)
    got = np.asarray(jax.jit(bridge.official_direction)(*padded(histories, 16)))
    fallbacks = 0
    for b, h in enumerate(histories):
        want = prefs.official_profile_direction(h)
        np.testing.assert_array_equal(got[b], want)
        mean = h.astype(np.float32).sum(0, dtype=np.float32) / np.float32(len(h))
        fallbacks += not np.any(prefs.binarize(mean.astype(np.float64)) != 0.5)
    assert fallbacks > 20  # the fallback branch is exercised


def test_official_mode_with_no_item_is_neutral():
    x = np.zeros((1, 4, prefs.NUM_DIMENSIONS), np.float32)
    dist = np.asarray(official(x, np.zeros((1, 4), bool)))
    assert (dist[0, :, bridge.NEUTRAL] == 1).all()


def test_golden_mode_equals_the_landed_golden_profile():
    rng = np.random.default_rng(2)
    directions = rng.choice([0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 1.0], size=(50, prefs.NUM_DIMENSIONS))
    dist = bridge.golden_distribution(directions)
    assert dist.shape == (50, prefs.NUM_DIMENSIONS, 3)
    for b in range(50):
        assert profile_of(dist[b]) == prefs.golden_profile(directions[b])


def test_map_profile_set_preferences_and_label_edits(official_labels):
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5)
    direction[[47, 89]] = 1.0, 0.0
    dist = bridge.direction_distribution(jnp.asarray(direction))
    assert profile_of(dist) == "Likes science, Dislikes fashion"
    dims, values = bridge.edits_from_labels({"Likes science": "negative", "Young": "positive", "Dislikes fashion": "neutral"})
    assert (dims, values) == ([47, 0, 89], [0.0, 1.0, 0.5])
    assert profile_of(bridge.set_preferences(dist, dims, values)) == "Young, Dislikes science"
    # The negative label named positive is the same setting as the positive label named negative.
    assert bridge.edits_from_labels({"Older": "positive"}) == bridge.edits_from_labels({"Young": "negative"})
    with pytest.raises(ValueError, match="unknown preference label 'Likes naps'"):
        bridge.edits_from_labels({"Likes naps": "positive"})
    with pytest.raises(ValueError, match="must be positive, negative or neutral"):
        bridge.edits_from_labels({"Young": "yes"})


def test_soft_tokens_are_the_probability_weighted_table_rows():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.standard_normal((2, prefs.NUM_DIMENSIONS, 3, 5)), jnp.float32)
    dist = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, prefs.NUM_DIMENSIONS, 3))), -1)
    got = bridge.soft_tokens(table, dist)
    want = np.einsum("bdc,kdce->bke", np.asarray(dist, np.float64), np.asarray(table, np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    one_hot = bridge.direction_distribution(jnp.full((1, prefs.NUM_DIMENSIONS), 0.5))
    np.testing.assert_allclose(np.asarray(bridge.soft_tokens(table, one_hot))[0],
                               np.asarray(table)[:, :, bridge.NEUTRAL].sum(1), rtol=1e-5, atol=1e-5)


def test_top_dimension_tokens_each_read_one_dimension():
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.standard_normal((4, prefs.NUM_DIMENSIONS, 3, 5)), jnp.float32)
    dist = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, prefs.NUM_DIMENSIONS, 3))), -1)
    got = np.asarray(bridge.soft_tokens(table, dist, "top_dimensions"))
    p, t = np.asarray(dist, np.float64), np.asarray(table, np.float64)
    for b in range(3):  # a loop over users and slots: slot k reads the k-th most surely marked dimension
        order = sorted(range(prefs.NUM_DIMENSIONS), key=lambda d: -(1 - p[b, d, bridge.NEUTRAL]))
        for k in range(4):
            np.testing.assert_allclose(got[b, k], p[b, order[k]] @ t[k, order[k]], rtol=1e-5, atol=1e-5)
    # A user marked on two dimensions (a one-hot distribution) over a table whose neutral entries are
    # 0, as `label_table` starts: the first two tokens are those labels' entries, the rest are 0.
    direction = np.full(prefs.NUM_DIMENSIONS, 0.5, np.float32)
    direction[[7, 40]] = [1.0, 0.0]
    table = table.at[:, :, bridge.NEUTRAL].set(0.0)
    tokens = np.asarray(bridge.soft_tokens(table, bridge.direction_distribution(jnp.asarray(direction))[None],
                                           "top_dimensions"))[0]
    np.testing.assert_allclose(tokens[0], np.asarray(table)[0, 7, bridge.POSITIVE], rtol=1e-6)
    np.testing.assert_allclose(tokens[1], np.asarray(table)[1, 40, bridge.NEGATIVE], rtol=1e-6)
    np.testing.assert_array_equal(tokens[2:], 0.0)
    grad = jax.grad(lambda d: bridge.soft_tokens(table, d, "top_dimensions").sum())(dist)
    assert np.isfinite(np.asarray(grad)).all() and np.count_nonzero(np.asarray(grad).any(-1)) == 3 * 4
    with pytest.raises(ValueError, match="must be one of \\('sum', 'top_dimensions'\\), got 'max'"):
        bridge.soft_tokens(table, dist, "max")
