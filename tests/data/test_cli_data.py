"""`alignx data synth | validate | stats`."""
import json

from alignx_jax import cli, data


def test_synth_validate_stats(tmp_path, capsys):
    out = tmp_path / "users.jsonl"
    assert cli.main(["data", "synth", "--users", "4", "--seed", "3", "--out", str(out)]) == 0
    records, _ = data.load_records(out, schema="alignx")
    assert records == data.synthetic_records(4, seed=3)
    assert cli.main(["data", "validate", str(out), "--schema", "alignx"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "16 records, 0 bad"
    assert cli.main(["data", "stats", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "records: 16 (bad, skipped: 0)"
    assert lines[1] == "distinct preference directions: 4"


def test_synth_users_of_chosen_dimensions(tmp_path):
    out = tmp_path / "users.json"
    assert cli.main(["data", "synth", "--users", "4", "--dimensions", "3, Likes music,60", "--out", str(out)]) == 0
    records, _ = data.load_records(out, schema="alignx")
    assert records == data.synthetic_records(4, seed=0, dimensions=(3, 74, 60))


def test_validate_lists_every_bad_record_and_fails(tmp_path, capsys):
    good = data.synthetic_records(2, seed=0, records_per_user=1)[0]
    rows = [good, dict(good, **{"Preference Direction": [0.5] * 89}), good, {k: v for k, v in good.items() if k != "prompt"}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    assert cli.main(["data", "validate", str(path), "--schema", "alignx"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: record 1: 'Preference Direction' has 89 values, expected 90",
        f"{path}: record 3: missing field 'prompt'",
        "4 records, 2 bad",
    ]
    assert cli.main(["data", "validate", str(tmp_path / "absent.json")]) == 2
    assert capsys.readouterr().err.startswith("alignx: error: no JSON file at")
