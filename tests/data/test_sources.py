"""Sources: the hub's parquet layout, JSON / JSONL benchmark files, fail-fast and skip modes."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignx_jax import data
from alignx_jax.preferences import RecordError


@pytest.fixture(scope="module")
def records():
    return data.synthetic_records(6, seed=3, records_per_user=2, history_items=2)


def test_hub_parquet_shards_load_row_group_by_row_group(tmp_path, records):
    # Two shards with several row groups each, written with exactly the hub's arrow schema.
    (tmp_path / "data").mkdir()
    for shard, chunk in enumerate((records[:7], records[7:])):
        table = pa.Table.from_pylist(chunk, schema=data.hub_parquet_schema())
        pq.write_table(table, tmp_path / "data" / f"train-0000{shard}-of-00002.parquet", row_group_size=3)
    schema = pq.read_schema(tmp_path / "data" / "train-00000-of-00002.parquet")
    assert schema.names == ["prompt", "chosen", "rejected", "Preference Direction", "Demographic Information",
                            "User-Generated Content", "Pair-wise Comparative Feedback"]
    assert pq.ParquetFile(tmp_path / "data" / "train-00000-of-00002.parquet").num_row_groups == 3
    loaded, report = data.load_records(tmp_path)
    assert loaded == records
    assert (report.loaded, report.skipped) == (len(records), 0)


def test_parquet_bad_record_index_counts_across_shards(tmp_path, records):
    bad = [dict(r) for r in records[:4]]
    bad[3]["prompt"] = ""
    data.write_records(records[:5], tmp_path / "a.parquet", rows_per_group=2)
    data.write_records(bad, tmp_path / "b.parquet", rows_per_group=2)
    with pytest.raises(RecordError, match=r"b\.parquet: record 8: 'prompt' is empty"):
        data.load_records(tmp_path)
    loaded, report = data.load_records(tmp_path, on_error="skip")
    assert len(loaded) == 8 and report.skipped == 1
    assert report.errors == [f"{tmp_path / 'b.parquet'}: record 8: 'prompt' is empty"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_and_jsonl_round_trip(tmp_path, records, suffix):
    path = tmp_path / f"bench{suffix}"
    data.write_records(records, path)
    loaded, _ = data.load_records(path)
    assert loaded == records


def test_benchmark_layouts_load(official_labels, tmp_path):
    # PRISM / UF-P-4 / AlignX-test style: a precomputed profile, history items without directions,
    # no UGC; P-Soups style: ground_truth_persona.
    rows = [
        {"prompt": "Q", "chosen": "A", "rejected": "B", "profile": "Young, Likes science",
         "Pair-wise Comparative Feedback": [{"prompt": "q", "chosen": "a", "rejected": "b"}],
         "Demographic Information": "Age 20."},
        {"prompt": "Q2", "chosen": "A2", "rejected": "B2", "ground_truth_persona": "Be brief.",
         "User-Generated Content": [{"prompt": "q", "comment": "c"}], "Preference Direction": [0.5] * 90},
    ]
    (tmp_path / "b.json").write_text(json.dumps(rows))
    assert data.load_records(tmp_path / "b.json")[0] == rows


def test_skip_mode_counts_each_kind_of_bad_record(tmp_path, records):
    good = records[0]
    bad = [
        {k: v for k, v in good.items() if k != "chosen"},
        dict(good, **{"Preference Direction": [0.5] * 89}),
        dict(good, **{"Preference Direction": ["x"] * 90}),
        dict(good, prompt=""),
        dict(good, **{"User-Generated Content": "not a list"}),
    ]
    path = tmp_path / "mixed.jsonl"
    data.write_records([good, *bad, good], path)
    loaded, report = data.load_records(path, schema="alignx", on_error="skip")
    assert len(loaded) == 2 and report.skipped == 5
    assert [e.split(": ", 1)[1] for e in report.errors] == [
        "record 1: missing field 'chosen'",
        "record 2: 'Preference Direction' has 89 values, expected 90",
        "record 3: 'Preference Direction'[0] is not a number: 'x'",
        "record 4: 'prompt' is empty",
        "record 5: 'User-Generated Content' must be a list, got str",
    ]


def test_broken_jsonl_line_and_missing_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"\n')
    with pytest.raises(RecordError, match=r"x\.jsonl: line 1 is not valid JSON"):
        data.load_records(path)
    with pytest.raises(FileNotFoundError, match="no JSON file at"):
        data.load_records(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="on_error must be one of"):
        data.load_records(path, on_error="ignore")


def test_psoups_benchmark_loads_all_600(shared_data_dir):
    loaded, report = data.load_records(shared_data_dir / "psoups_friendly_unfriendly.json")
    assert len(loaded) == 600 and report.skipped == 0
    personas = [r["ground_truth_persona"] for r in loaded]
    assert personas[:300] == [personas[0]] * 300 and personas[300:] == [personas[300]] * 300


def test_a_record_file_reads_only_what_is_asked(tmp_path, records, monkeypatch):
    """Parquet: personas from the persona columns, records decoded and validated only where asked,
    indices counted across shards; the same answers as loading the whole folder."""
    bad = [dict(r) for r in records[5:]]
    bad[3]["prompt"] = ""  # record 8 of the folder
    (tmp_path / "data").mkdir()
    data.write_records(records[:5], tmp_path / "data" / "a.parquet", rows_per_group=2)
    data.write_records(bad, tmp_path / "data" / "b.parquet", rows_per_group=2)
    source = data.RecordFile(tmp_path / "data")
    assert len(source) == len(records)
    assert source.personas() == [data.persona_key(r) for r in records]
    validated = []
    monkeypatch.setattr(data._sources, "validate_record",
                        lambda record, index, **kwargs: validated.append(index))
    assert source.read([9, 0, 4]) == [records[9], records[0], records[4]]
    assert validated == [0, 4, 9]  # row by row as read, nothing else
    monkeypatch.undo()
    with pytest.raises(RecordError, match=r"b\.parquet: record 8: 'prompt' is empty"):
        source.read([7, 8])
    with pytest.raises(IndexError, match=r"record 12 is out of range \(12 records\)"):
        source.read([12])
    json_file = tmp_path / "r.json"
    data.write_records(records, json_file)
    assert data.RecordFile(json_file).read([3, 1]) == [records[3], records[1]]
    assert data.RecordFile(json_file).personas() == [data.persona_key(r) for r in records]
