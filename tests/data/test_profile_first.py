"""Profile-first targets: the chosen response opens with the user's profile, the rejected with the
mirror user's; twins stay twins, held-out records are untouched, and a record without marks is refused."""
import pytest

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError
from alignx_jax.train import config_from_dict
from alignx_jax.train import data as train_data


def test_the_chosen_states_the_users_profile_and_the_rejected_the_mirror_users():
    direction = [prefs.NEUTRAL] * prefs.NUM_DIMENSIONS
    first, second = sorted(data.STYLE_DIMENSIONS[:2])
    direction[first], direction[second] = prefs.POSITIVE, prefs.NEGATIVE
    record = {"prompt": "p", "chosen": "short.", "rejected": "long.", prefs.DIRECTION: direction, "x": 1}
    out = data.profile_first(record)
    dims = prefs.dimensions()
    own = f"{dims[first].positive}, {dims[second].negative}"
    mirror = f"{dims[first].negative}, {dims[second].positive}"
    assert out == dict(record, chosen=f"Your preferences: {own}.\n\nshort.", rejected=f"Your preferences: {mirror}.\n\nlong.")
    assert record["chosen"] == "short."  # the input is not changed


def test_mirror_twins_stay_twins_and_their_statements_swap():
    records = data.synthetic_records(6, seed=2, records_per_user=2, history_items=1)
    first = [data.profile_first(r) for r in records]
    assert data.twin_units(first) == data.twin_units(records) == [(i, i + 1) for i in range(0, len(records), 2)]
    for a, b in zip(first[::2], first[1::2]):
        assert a["chosen"] == b["rejected"] and a["rejected"] == b["chosen"]
        assert a["chosen"].startswith(data.profile_statement(a[prefs.DIRECTION]))
        assert a["rejected"].startswith(data.profile_statement(b[prefs.DIRECTION]))


def test_build_splits_changes_the_training_targets_only():
    config = {"data": {"synthetic": {"users": 4, "records_per_user": 1, "history_items": 1},
                       "heldout_synthetic": {"users": 2, "records_per_user": 1, "history_items": 1}}}
    plain = train_data.build_splits(config_from_dict(config).data, 0)
    config["data"]["profile_first"] = True
    first = train_data.build_splits(config_from_dict(config).data, 0)
    assert first.train == [data.profile_first(r) for r in plain.train]
    assert first.heldout == plain.heldout


def test_a_training_record_without_marks_is_refused_by_its_place(tmp_path):
    records = data.synthetic_records(2, seed=0, records_per_user=2, history_items=1)
    records[3] = dict(records[3], **{prefs.DIRECTION: [prefs.NEUTRAL] * prefs.NUM_DIMENSIONS})
    path = tmp_path / "train.jsonl"
    data.write_records(records, path)
    config = config_from_dict({"data": {"files": [{"path": str(path)}], "profile_first": True}}).data
    with pytest.raises(InputError, match=rf"^config key 'data.profile_first': {path}: record 3: 'Preference Direction' "
                                         r"marks no dimension, and a profile-first target states the user's marks$"):
        train_data.build_splits(config, 0)
