"""Unseen preference dimensions (issue 25): the config's synthetic user sets and their checks.
(summary.json's eval_seen_* / eval_unseen_* figures: tests/train/test_heldout_equals_eval.py.)"""
import collections
import pathlib

import pytest

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError
from alignx_jax.train import ConfigError, config_from_dict, load_config
from alignx_jax.train.data import build_splits

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "smollm2_ica_unseen_dims.yaml"


def marked(record):
    return {i for i, v in enumerate(record[prefs.DIRECTION]) if v != prefs.NEUTRAL}


def test_the_unseen_dims_config_holds_out_users_of_dimensions_no_training_user_marks():
    config = load_config(CONFIG)
    splits = build_splits(config.data, config.seed)
    trained = set().union(*map(marked, splits.train))
    assert trained == {16, 5, 6, 73, 47, 56}
    unseen = [r for r in splits.heldout if data.persona_key(r) in splits.unseen_personas]
    seen = [r for r in splits.heldout if data.persona_key(r) not in splits.unseen_personas]
    assert set().union(*map(marked, unseen)) == {3, 74, 60, 69}
    assert set().union(*map(marked, seen)) <= trained
    for group in (seen, unseen):  # at least 4 personas of at least 20 records each
        counts = collections.Counter(data.persona_key(r) for r in group)
        assert len(counts) >= 4 and min(counts.values()) >= 20, counts
    assert len(unseen) + len(seen) == len(splits.heldout)


BASE = {"synthetic": {"users": 2}}


@pytest.mark.parametrize("values, message", [
    ({"synthetic": {"users": 2, "dimensions": [16, 7]}},
     "config key 'data.synthetic.dimensions': 7 is not a synthetic style dimension; known: 16 (Concise "
     "communication style), 5 (High Agreeableness),"),
    ({"heldout_synthetic": {"dimensions": ["Likes jazz"]}},
     "config key 'data.heldout_synthetic.dimensions': 'Likes jazz' is not a synthetic style dimension; known:"),
    ({"synthetic": {"users": 2, "dimensions": [74, "Likes music"]}},
     "config key 'data.synthetic.dimensions': 'Likes music' names dimension 74 twice"),
    ({"synthetic": {"users": 2, "dimensions": []}},
     "config key 'data.synthetic.dimensions' names no dimension; leave it out (null) for data.STYLE_DIMENSIONS"),
    ({"synthetic": {"users": 2, "dimensions": 16}},
     "config key 'data.synthetic.dimensions' must be a list of int or str or null, got 16"),
    ({"heldout_unseen": {"users": 2}},
     "config key 'data.heldout_unseen.dimensions' is required when data.heldout_unseen.users > 0"),
    ({"synthetic": {"users": 2, "dimensions": [16, 5]}, "heldout_unseen": {"users": 2, "dimensions": [3, 5]}},
     "config key 'data.heldout_unseen.dimensions' must not share a dimension with data.synthetic.dimensions "
     "(null: all), which the training users mark; shared: [5]"),
    ({"heldout_unseen": {"users": 2, "dimensions": [3]}},  # training users of every dimension
     "config key 'data.heldout_unseen.dimensions' must not share a dimension with data.synthetic.dimensions "
     "(null: all), which the training users mark; shared: [3]"),
])
def test_dimension_errors_name_the_key_and_the_bad_value(values, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {**BASE, **values}})
    assert str(error.value).startswith(message), str(error.value)


def test_a_seen_held_out_persona_may_not_also_be_unseen():
    # Held-out users of 3, 74 and 16 may mark only 3 and 74, as unseen users do: the figures could not
    # tell them apart.
    config = config_from_dict({"data": {"synthetic": {"users": 2, "dimensions": [16]},
                                        "heldout_synthetic": {"users": 40, "records_per_user": 1, "dimensions": [3, 74, 16]},
                                        "heldout_unseen": {"users": 8, "records_per_user": 1, "dimensions": [3, 74]}}})
    with pytest.raises(InputError, match="^held-out persona '.*' is both a user of unseen dimensions"):
        build_splits(config.data, config.seed)
