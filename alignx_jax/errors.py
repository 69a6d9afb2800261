"""Layer 0: the errors that bad input raises, as opposed to bugs.

Every class derives from `AlignxError` *and* from the builtin the library raised before it had
these classes, so `except ValueError` / `except FileNotFoundError` / `except KeyError` callers keep
working. The `alignx` command prints an `AlignxError` as one line and exits 2; any other exception
is a bug and keeps its traceback.

Raise these only where the cause is something a user gave (a file, a record, a config, a
checkpoint, a command-line value), with a message that names it and says what was expected; a
wrong argument from calling code stays a plain ValueError/TypeError.
"""
from __future__ import annotations

import json
import os
from typing import Any


class AlignxError(Exception):
    """Bad input: the message names the file, record, key or value and what was expected."""

    def __str__(self) -> str:
        # KeyError quotes its message; ours are sentences, shown as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(AlignxError, ValueError):
    """A file, record, config, checkpoint or argument has the wrong content."""


class RecordError(InputError):
    """A record breaks the schema; the message names the source, the record index and the field."""


class MissingFileError(AlignxError, FileNotFoundError):
    """A file or folder that should exist does not (an input, or the folder of an output)."""


class KeyMismatchError(AlignxError, KeyError):
    """A file lacks a key or tensor it should hold, or holds one it should not."""


def cause(error: BaseException, limit: int = 300) -> str:
    """A dependency's exception as `Type: first line` (shortened), to put in brackets after our message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def read_json(path: str | os.PathLike, *, name: str | None = None) -> Any:
    """The JSON value in `path`; InputError `<name>: not valid JSON (...)` for a file that is not UTF-8
    JSON (`name` defaults to the path; an absent file raises the builtin FileNotFoundError)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{name or path}: not valid JSON ({error})") from None


def check_output_parent(path: str | os.PathLike, name: str) -> None:
    """An output's folder may be missing (it is created with its parents when the output is written,
    as Hugging Face's `output_dir`), but the nearest existing ancestor must be a folder: InputError
    `<name>: <ancestor> is a file, not a folder` otherwise. Creates nothing."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"{name}: {ancestor} is a file, not a folder")


__all__ = ["AlignxError", "InputError", "KeyMismatchError", "MissingFileError", "RecordError", "cause",
           "check_output_parent", "read_json"]
