"""Record sources: the hub's parquet shards and JSON / JSONL benchmark files.

Parquet is read one row group at a time, so a 1.3M-record dataset never sits in memory whole.
Every record is validated; `on_error="raise"` stops at the first bad one, `"skip"` drops it and
counts it in the `LoadReport`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from alignx_jax.errors import InputError, MissingFileError, RecordError, cause
from alignx_jax.preferences import (
    DEMOGRAPHICS, DIRECTION, GROUND_TRUTH_PERSONA, PAIRS, UGC, golden_profile, validate_record,
)

ON_ERROR = ("raise", "skip")
RECORD_SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclasses.dataclass
class LoadReport:
    """What a load kept and skipped; `errors` holds one message per skipped record."""

    loaded: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def check_usable(self, source: str | os.PathLike) -> None:
        """Raise `InputError` when nothing was kept: `source` held no records, or every one was bad."""
        if self.loaded:
            return
        if not self.skipped:
            raise InputError(f"{source}: holds no records")
        raise InputError(f"{source}: no usable records, all {self.skipped} are bad (the first: {self.errors[0]})")


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _validated(
    raw: Iterable[Any], source: str, schema: str, on_error: str, report: LoadReport | None, start: int = 0
) -> Iterator[dict]:
    for index, record in enumerate(raw, start=start):
        try:
            validate_record(record, index, schema=schema, source=source)
        except RecordError as error:
            if on_error == "raise":
                raise
            if report is not None:
                report.skipped += 1
                report.errors.append(str(error))
            continue
        if report is not None:
            report.loaded += 1
        yield record


def _check_not_empty(path: pathlib.Path, expected: str) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), expected {expected}")


def parquet_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The parquet shards of a hub dataset folder (sorted, searched recursively), or the one file."""
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"no parquet file or folder at {path}")
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise MissingFileError(f"no *.parquet files under {path}")
    return files


def iter_parquet_records(
    path: str | os.PathLike,
    *,
    schema: str = "alignx",
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> Iterator[dict]:
    """Records of every shard under `path`, row group by row group, as plain Python dicts.

    Column names keep their spaces ('Preference Direction'); nested lists of structs become
    lists of dicts. Record indices in errors count across shards in file order.
    """
    import pyarrow.parquet as pq

    _check_on_error(on_error)
    start = 0
    for file in parquet_files(path):
        _check_not_empty(file, "a parquet file of AlignX records")
        try:
            reader = pq.ParquetFile(file)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
            raise InputError(f"{file}: not a parquet file of AlignX records ({cause(error)})") from error
        for group in range(reader.num_row_groups):
            try:
                rows = reader.read_row_group(group).to_pylist()
            except Exception as error:  # a truncated or corrupt row group
                raise InputError(f"{file}: cannot read row group {group} ({cause(error)})") from error
            yield from _validated(rows, str(file), schema, on_error, report, start)
            start += len(rows)


_JSON_EXPECTED = "a JSON array of records or one JSON record per line"


def _json_values(path: pathlib.Path) -> Iterator[Any]:
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(1)
            while head and head.isspace():
                head = f.read(1)
            if not head:
                raise InputError(f"{path}: the file is empty, expected {_JSON_EXPECTED}")
            f.seek(0)
            if head == "[":
                try:
                    values = json.load(f)
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}: not valid JSON ({error}), expected {_JSON_EXPECTED}") from None
                yield from values
                return
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise RecordError(f"{path}: line {line_number} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}), "
                         f"expected {_JSON_EXPECTED}") from None


def iter_json_records(
    path: str | os.PathLike,
    *,
    schema: str = "benchmark",
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> Iterator[dict]:
    """Records of a JSON file (one array of records) or a JSONL file (one record per line)."""
    _check_on_error(on_error)
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingFileError(f"no JSON file at {path}" + (" (a folder of .parquet files?)" if path.is_dir() else ""))
    yield from _validated(_json_values(path), str(path), schema, on_error, report)


def iter_records(
    path: str | os.PathLike,
    *,
    schema: str | None = None,
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> Iterator[dict]:
    """Records of a parquet file or folder (schema "alignx" by default) or a JSON/JSONL file ("benchmark")."""
    path = pathlib.Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return iter_parquet_records(path, schema=schema or "alignx", on_error=on_error, report=report)
    return iter_json_records(path, schema=schema or "benchmark", on_error=on_error, report=report)


def load_records(
    path: str | os.PathLike, *, schema: str | None = None, on_error: str = "raise"
) -> tuple[list[dict], LoadReport]:
    """All records of `path` in a list, with the report of what was skipped."""
    report = LoadReport()
    records = list(iter_records(path, schema=schema, on_error=on_error, report=report))
    return records, report


class RecordFile:
    """A record file or parquet folder read only as far as asked: its length, each record's persona
    key, and the records at chosen indices, validated as they are read (`build_splits` on several
    hosts: each decodes only its share).

    Parquet: `len` comes from the footers, `personas()` reads only the persona columns, `read` only
    the row groups that hold the asked indices and decodes only those rows. JSON / JSONL: the text
    holds no index to seek by, so the file is parsed and validated whole on first use.
    """

    def __init__(self, path: str | os.PathLike, *, schema: str | None = None):
        self.path = pathlib.Path(path)
        self._parquet = self.path.is_dir() or self.path.suffix == ".parquet"
        self.schema = schema or ("alignx" if self._parquet else "benchmark")
        self._records: list[dict] | None = None
        self._groups: list[tuple[pathlib.Path, int, int]] = []  # (file, row group, first record index)
        self._length = 0
        if self._parquet:
            import pyarrow.parquet as pq

            for file in parquet_files(self.path):
                _check_not_empty(file, "a parquet file of AlignX records")
                try:
                    metadata = pq.ParquetFile(file).metadata
                except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
                    raise InputError(f"{file}: not a parquet file of AlignX records ({cause(error)})") from error
                for group in range(metadata.num_row_groups):
                    self._groups.append((file, group, self._length))
                    self._length += metadata.row_group(group).num_rows

    def _all(self) -> list[dict]:
        if self._records is None:
            self._records, _ = load_records(self.path, schema=self.schema)
        return self._records

    def __len__(self) -> int:
        return self._length if self._parquet else len(self._all())

    def personas(self) -> list[str]:
        """`persona_key` of every record, in order."""
        if not self._parquet:
            return [persona_key(record) for record in self._all()]
        import pyarrow.parquet as pq

        keys: list[str] = []
        for file, group, start in self._groups:
            reader = pq.ParquetFile(file)
            columns = [c for c in (GROUND_TRUTH_PERSONA, DIRECTION) if c in reader.schema_arrow.names]
            try:
                rows = reader.read_row_group(group, columns=columns).to_pylist()
            except Exception as error:  # a truncated or corrupt row group
                raise InputError(f"{file}: cannot read row group {group} ({cause(error)})") from error
            for index, row in enumerate(rows, start=start):
                try:
                    keys.append(persona_key(row))
                except Exception as error:  # a direction that is no list of numbers
                    raise RecordError(f"{file}: record {index}: cannot read its persona ({cause(error)})") from None
        return keys

    def read(self, indices: Sequence[int]) -> list[dict]:
        """The records at `indices` (in that order), each validated against the schema."""
        if not self._parquet:
            records = self._all()
            return [records[i] for i in indices]
        import bisect

        import pyarrow.parquet as pq

        starts = [start for _, _, start in self._groups]
        wanted: dict[int, list[int]] = {}
        for index in sorted(set(indices)):
            if not 0 <= index < self._length:
                raise IndexError(f"{self.path}: record {index} is out of range ({self._length} records)")
            wanted.setdefault(bisect.bisect_right(starts, index) - 1, []).append(index)
        found: dict[int, dict] = {}
        for slot, group_indices in wanted.items():
            file, group, start = self._groups[slot]
            try:
                table = pq.ParquetFile(file).read_row_group(group)
            except Exception as error:  # a truncated or corrupt row group
                raise InputError(f"{file}: cannot read row group {group} ({cause(error)})") from error
            rows = table.take([i - start for i in group_indices]).to_pylist()
            for index, record in zip(group_indices, rows, strict=True):
                validate_record(record, index, schema=self.schema, source=str(file))
                found[index] = record
        return [found[i] for i in indices]


def persona_key(record: Mapping[str, Any]) -> str:
    """What stratifies a benchmark by persona: `ground_truth_persona`, else the golden profile, else ''."""
    if record.get(GROUND_TRUTH_PERSONA):
        return record[GROUND_TRUTH_PERSONA]
    if record.get(DIRECTION) is not None:
        return golden_profile(record[DIRECTION])
    return ""


def hub_parquet_schema():
    """The arrow schema of the hub's AlignX parquet shards (column names with spaces)."""
    import pyarrow as pa

    direction = pa.list_(pa.float64())
    ugc = pa.struct([("prompt", pa.string()), ("comment", pa.string()), (DIRECTION, direction)])
    pair = pa.struct([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), (DIRECTION, direction)])
    return pa.schema([
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        (DIRECTION, direction),
        (DEMOGRAPHICS, pa.string()),
        (UGC, pa.list_(ugc)),
        (PAIRS, pa.list_(pair)),
    ])


def write_records(records: Sequence[dict], path: str | os.PathLike, *, rows_per_group: int = 1024) -> None:
    """Write AlignX records by suffix: .parquet (hub schema), .jsonl (one per line), .json (one array).

    Not atomic: a caller that must leave nothing behind on failure writes to a temporary name
    with the same suffix and renames it.
    """
    path = pathlib.Path(path)
    if path.suffix not in RECORD_SUFFIXES:
        raise InputError(f"unknown record file type {path.suffix!r} for {path}: use .parquet, .jsonl or .json")
    if not path.parent.is_dir():
        raise MissingFileError(f"{path}: the folder {path.parent} does not exist")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(records), schema=hub_parquet_schema())
        pq.write_table(table, path, row_group_size=rows_per_group)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        path.write_text(json.dumps(list(records), ensure_ascii=False, indent=1), encoding="utf-8")
