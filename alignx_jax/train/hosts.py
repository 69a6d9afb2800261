"""Agreement across processes: decisions that every process must take the same way.

A multi-host run executes the same collectives in the same order on every process; a process that
decides on its own (to stop, to skip a checkpoint) leaves the others waiting in a collective that
never comes, and gloo aborts the whole run. Every decision that can differ between processes (a
SIGTERM reaches one of them, one of them cannot read its part of a checkpoint) goes through here.

    any_process(flag)   -> True on every process when it is True on at least one
    all_processes(flag) -> True on every process when it is True on all of them
    barrier(name)       -> returns once every process has reached it
    from_process_zero(tree) -> process 0's arrays on every process (same shapes and dtypes everywhere)
    first_message(text) -> (process, text) of the first process that has a message (None: none has),
                           on every process: one process's error becomes every process's same line
    with agreed(): ...    -> local work whose input error (a bad record in this process's share) stops
                           every process with the same line, not this one alone
    check_shared(folders) -> refuses (the same line everywhere) folders that are not one folder shared
                           by every process (each host's own local disk)

In one process each is the identity (no collective, no cost).
"""
from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping

import jax
import numpy as np

from alignx_jax.errors import AlignxError, InputError


def _gathered(flag: bool) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(flag, np.int32)))


def any_process(flag: bool) -> bool:
    """`flag` OR-ed over the processes (one small all-gather when there are several)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_gathered(flag).any())


def all_processes(flag: bool) -> bool:
    """`flag` AND-ed over the processes (one small all-gather when there are several)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_gathered(flag).all())


def barrier(name: str) -> None:
    """Wait until every process has called `barrier(name)` (nothing in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def from_process_zero(tree):
    """Process 0's numpy arrays (a pytree) on every process; each passes arrays of the same shapes."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(np.array, multihost_utils.broadcast_one_to_all(tree))  # writable copies


MESSAGE_BYTES = 2048  # a message travels as this many UTF-8 bytes at most (one line of an error)


def first_message(text: str | None) -> tuple[int, str] | None:
    """(process index, text) of the lowest process that passed a message, the same on every process;
    None when no process did (one small all-gather when there are several)."""
    if jax.process_count() == 1:
        return None if text is None else (0, text)
    from jax.experimental import multihost_utils

    encoded = np.zeros(MESSAGE_BYTES + 1, np.uint8)
    if text is not None:
        raw = text.encode("utf-8")[:MESSAGE_BYTES]
        encoded[0] = 1
        encoded[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
    for index, row in enumerate(np.asarray(multihost_utils.process_allgather(encoded))):
        if row[0]:
            return index, bytes(row[1:]).rstrip(b"\0").decode("utf-8", errors="replace")
    return None


def check_shared(folders: Mapping[str, str]) -> None:
    """Refuse at once a multi-process run whose folders (config key -> path or URL) are not one folder
    for every process: each host listing its own checkpoint steps, reading its own config.yaml or
    writing its own part of an export would diverge or wait in a collective until the coordinator's
    timeout. Process 0 writes a token into each folder; every process must read it back. InputError,
    the same line on every process."""
    if jax.process_count() == 1:
        return
    from etils import epath

    token = str(int(from_process_zero(np.asarray(secrets.randbits(31), np.int64))))
    marks = {name: epath.Path(str(folder)) / f".alignx_shared_check_{token}" for name, folder in folders.items()}
    if jax.process_index() == 0:
        for mark in marks.values():
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(token)
    barrier(f"alignx_shared_check_written_{token}")
    problem = None
    for name, mark in marks.items():
        try:
            seen = mark.read_text() if mark.exists() else None
        except OSError:
            seen = None
        if seen != token:
            problem = (f"config key '{name}' ({folders[name]}) is not one folder shared by every process: process "
                       f"{jax.process_index()} does not see what process 0 wrote there; a run on several hosts needs "
                       f"a shared folder (a network filesystem, or a gs:// bucket for checkpoint_dir)")
            break
    first = first_message(problem)
    barrier(f"alignx_shared_check_read_{token}")
    if jax.process_index() == 0:
        for mark in marks.values():
            mark.unlink(missing_ok=True)
    if first is not None:
        raise InputError(first[1])


@contextlib.contextmanager
def agreed():
    """Local work (no collective inside) that every process runs: an input error (AlignxError) raised in
    it on any process is raised on every process as the same line (the lowest such process's), instead
    of one process stopping and the others waiting in their next collective until the coordinator's
    timeout. One small all-gather at the end when there are several processes."""
    problem = None
    try:
        yield
    except AlignxError as error:
        problem = error
    first = first_message(None if problem is None else str(problem))
    if first is None:
        return
    if problem is not None and first[0] == jax.process_index():
        raise problem
    raise InputError(first[1])
