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

    The last row may be cut short (a killed run was writing it): when it does not parse it is
    dropped, and cut from the file when `repair` (a last row that parses but lacks its newline is
    kept, and `repair` adds the newline). A bad line before the last is damage, not an
    interruption, and raises `InputError` naming the line.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # what follows the last newline: b"" when the file ends with one
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    if tail.strip():
        lines.append(tail)
        last = len(lines) - 1
    rows, keep, offset = [], len(raw), 0
    for number, line in enumerate(lines):
        if line.strip():
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if number != last:
                    raise InputError(f"{path}: line {number + 1} is not a JSON row ({error}); the file is damaged, "
                                     f"not merely interrupted") from None
                keep = offset  # the row a killed run was writing
                break
            if not isinstance(value, dict):
                raise InputError(f"{path}: line {number + 1} is not a JSON object")
            rows.append(value)
        offset += len(line) + 1
    if repair and keep < len(raw):
        with path.open("r+b") as f:
            f.truncate(keep)
    elif repair and tail.strip():
        with path.open("ab") as f:
            f.write(b"\n")
    return rows


class RowWriter:
    """Appends rows to a JSONL file, one line each, flushed and synced per `write` call (its folder is
    created with its parents)."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
