"""Append-only JSONL: a row cut by a kill is dropped (and cut from the file), damage is refused."""
import json

import pytest

from alignx_jax.errors import InputError
from alignx_jax.evaluation import _jsonl


def test_rows_survive_a_cut_last_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    with _jsonl.RowWriter(path) as writer:
        writer.write([{"index": 0}, {"index": 1}])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"index": 2, "lo')
    assert _jsonl.read_rows(path) == [{"index": 0}, {"index": 1}]
    assert path.read_bytes() == whole + b'{"index": 2, "lo'  # reading alone changes nothing
    assert _jsonl.read_rows(path, repair=True) == [{"index": 0}, {"index": 1}]
    assert path.read_bytes() == whole
    with _jsonl.RowWriter(path) as writer:
        writer.write([{"index": 2}])
    assert [r["index"] for r in _jsonl.read_rows(path)] == [0, 1, 2]


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": 2}))
    assert _jsonl.read_rows(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text().endswith("}\n")


def test_damage_before_the_last_line_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(InputError, match="line 2 is not a JSON row"):
        _jsonl.read_rows(path)
    assert _jsonl.read_rows(tmp_path / "absent.jsonl") == []
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        _jsonl.read_rows(path)
