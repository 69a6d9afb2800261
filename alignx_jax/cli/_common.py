"""What every `alignx` subcommand uses to refuse bad input early and to leave nothing behind.

    out = output_path(args.out, kind="file", suffixes=(".json",), flag="--out")  # before any work
    ...                                                                         # the long part
    with atomic_output(out) as tmp:                                             # a sibling temp name
        write(tmp)                                                              # renamed onto `out` on success
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator, Sequence
from typing import Literal

from alignx_jax.errors import InputError, check_output_parent


def output_path(path: str | os.PathLike, *, kind: Literal["file", "folder"] = "file",
                suffixes: Sequence[str] | None = None, flag: str | None = None) -> pathlib.Path:
    """Check an output path before any work is done, and return it.

    Its folder may be missing: `atomic_output` creates it with its parents (and removes them again if
    the block fails); nothing is created here. A file output must not be a folder and,
    when `suffixes` is given, must end in one of them; an existing file is replaced at the end. A
    folder output must not be a file and, if it exists, must be empty: a folder of other files is
    never overwritten. `flag` ("--out") is named in the message.
    """
    path = pathlib.Path(path)
    name = f"{flag} {path}" if flag else str(path)
    check_output_parent(path, name)
    if kind == "file":
        if path.is_dir():
            raise InputError(f"{name}: is a folder, expected a file name")
        if suffixes and path.suffix not in suffixes:
            raise InputError(f"{name}: unknown file type {path.suffix!r}, expected one of {', '.join(suffixes)}")
    elif kind == "folder":
        if path.exists() and not path.is_dir():
            raise InputError(f"{name}: is a file, expected a folder")
        if path.is_dir() and any(path.iterdir()):
            raise InputError(f"{name}: the folder exists and is not empty; give a new or empty folder")
    else:
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, kind: Literal["file", "folder"] = "file") -> Iterator[pathlib.Path]:
    """Yield a temporary path beside `path` (same suffix, hidden name); rename it onto `path` when the
    block succeeds, delete it when the block raises (Ctrl-C included), so `path` is whole or absent.

    A folder output may exist only empty (see `output_path`): it is replaced by the finished folder.
    Missing parent folders are created first, and removed again when the block raises.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = pathlib.Path(path).absolute()
    created = make_parents(path)
    # Not tempfile.mkstemp/mkdtemp: their 0600/0700 modes would stay on the renamed output.
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}"
    if kind == "folder":
        tmp.mkdir()
    try:
        yield tmp
        if kind == "folder":
            if path.is_dir():
                path.rmdir()  # only an empty folder: rmdir refuses anything else
            tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        for folder in created:  # innermost first; only the folders made above, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def make_parents(path: pathlib.Path) -> list[pathlib.Path]:
    """Create the missing folders above `path`; returns them innermost first (to undo with rmdir)."""
    missing = [p for p in path.absolute().parents if not p.exists()]
    if missing:
        missing[0].mkdir(parents=True)
    return missing
