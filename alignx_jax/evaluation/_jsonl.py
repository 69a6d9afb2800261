"""Append-only JSONL files that survive a kill: rows are written whole and flushed, and a reader
drops a truncated last line (the row being written when the process died)."""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from alignx_jax.errors import InputError


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The complete rows of a JSONL file ([] when it does not exist).

    A last line without its newline, or that does not parse, is the row a killed run was writing:
    it is dropped (and cut from the file when `repair`). A bad line before the last is damage,
    not an interruption, and raises `InputError` naming the line.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good_end, offset = [], 0, 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        end = offset + len(line) + 1  # the newline
        complete = number < len(lines)  # the piece after the last newline has none
        if line.strip():
            try:
                value = json.loads(line) if complete else None
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if number < len(lines) - 1 or (number == len(lines) - 1 and lines[-1].strip()):
                    raise InputError(f"{path}: line {number} is not a JSON row ({error}); the file is damaged, "
                                     f"not merely interrupted") from None
                value = None
            if value is None:
                break
            if not isinstance(value, dict):
                raise InputError(f"{path}: line {number} is not a JSON object")
            rows.append(value)
        if complete:
            good_end = end
        offset = end
    if repair and good_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return rows


class RowWriter:
    """Appends rows to a JSONL file, one line each, flushed and synced per `write` call."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
