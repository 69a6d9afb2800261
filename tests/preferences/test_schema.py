"""Record validation: each kind of bad record gives an error naming source, record and field."""
import copy

import numpy as np
import pytest

from alignx_jax import preferences as prefs


def good_record():
    d = [0.5] * 90
    return {
        "prompt": "Post?", "chosen": "Yes.", "rejected": "No.", "Preference Direction": d,
        "Demographic Information": "A person.",
        "User-Generated Content": [{"prompt": "P", "comment": "C", "Preference Direction": d}],
        "Pair-wise Comparative Feedback": [{"prompt": "P", "chosen": "A", "rejected": "B", "Preference Direction": d}],
    }


def broken(edit):
    record = good_record()
    edit(record)
    return record


BAD = [
    (lambda r: r.pop("chosen"), "f.json: record 17: missing field 'chosen'"),
    (lambda r: r.__setitem__("Preference Direction", [0.5] * 89), "f.json: record 17: 'Preference Direction' has 89 values, expected 90"),
    (lambda r: r["Preference Direction"].__setitem__(4, "high"), "f.json: record 17: 'Preference Direction'[4] is not a number: 'high'"),
    (lambda r: r["Preference Direction"].__setitem__(4, float("nan")), "f.json: record 17: 'Preference Direction'[4] = nan is outside [0, 1]"),
    (lambda r: r["Preference Direction"].__setitem__(4, True), "f.json: record 17: 'Preference Direction'[4] is not a number: True"),
    (lambda r: r.__setitem__("prompt", "  "), "f.json: record 17: 'prompt' is empty"),
    (lambda r: r.__setitem__("rejected", 3), "f.json: record 17: 'rejected' must be a string, got int"),
    (lambda r: r.__setitem__("User-Generated Content", "I like cats"), "f.json: record 17: 'User-Generated Content' must be a list, got str"),
    (lambda r: r["User-Generated Content"][0].pop("comment"), "f.json: record 17: 'User-Generated Content'[0]: missing field 'comment'"),
    (lambda r: r["Pair-wise Comparative Feedback"][0].__setitem__("Preference Direction", [1] * 3),
     "f.json: record 17: 'Pair-wise Comparative Feedback'[0]: 'Preference Direction' has 3 values, expected 90"),
]


@pytest.mark.parametrize("edit, message", BAD)
def test_bad_record_error_names_file_record_and_field(edit, message):
    with pytest.raises(prefs.RecordError) as info:
        prefs.validate_record(broken(edit), 17, source="f.json")
    assert str(info.value) == message


def test_good_records_pass_both_schemas_and_numpy_vectors_are_accepted():
    for schema in ("alignx", "benchmark"):
        record = good_record()
        before = copy.deepcopy(record)
        assert prefs.validate_record(record, 0, schema=schema) is None
        assert record == before  # validation never rewrites a record
    record = good_record()
    record["Preference Direction"] = np.array([0.0, 1.0] * 45)  # a numpy vector, on both bounds of [0, 1]
    assert prefs.validate_record(record, 0) is None
    record["Preference Direction"][7] = 1.0 + 1e-6  # the same vector just past a bound is refused
    with pytest.raises(prefs.RecordError, match=r"record 0: 'Preference Direction'\[7\] = .* is outside \[0, 1\]"):
        prefs.validate_record(record, 0)


def test_benchmark_schema_allows_missing_directions_and_history(official_labels):
    record = {"prompt": "P", "chosen": "A", "rejected": "B", "profile": "Young", "ground_truth_persona": "friendly",
              "Pair-wise Comparative Feedback": [{"prompt": "P", "chosen": "A", "rejected": "B"}]}
    prefs.validate_record(record, 3, schema="benchmark")
    with pytest.raises(prefs.RecordError, match="record 3: missing field 'Preference Direction'"):
        prefs.validate_record(record, 3)
    bad = copy.deepcopy(record)
    bad["profile"] = ["Young"]
    with pytest.raises(prefs.RecordError, match="record 3: 'profile' must be a string, got list"):
        prefs.validate_record(bad, 3, schema="benchmark")


def test_unknown_schema_and_non_object():
    with pytest.raises(ValueError, match="schema must be one of"):
        prefs.validate_record(good_record(), 0, schema="hub")
    with pytest.raises(prefs.RecordError, match="^record 2: must be an object, got list$"):
        prefs.validate_record([], 2)
