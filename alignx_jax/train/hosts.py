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

In one process each is the identity (no collective, no cost).
"""
from __future__ import annotations

import jax
import numpy as np


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
