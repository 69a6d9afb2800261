"""Checkpoints of a run: orbax CheckpointManager (async, atomic, keep N) under out_dir/checkpoints/<step>/.

Each holds `state` (step, trained params, optimizer state), `data` (each process's Grain iterator
state, grain's own orbax handler) and `meta` (the seed, so the per-step RNG `fold_in(key(seed),
step)` continues). The frozen reference / LoRA base is not saved: it is the start model, reloaded.
Restoring tries the latest step first; a damaged step (truncated, missing or unparsable files:
`is_damage`) is reported by name, moved aside to `<step>.corrupt`, and the previous one is used. Any
other restore error (out of memory, a transient storage error, a checkpoint written by another
number of processes) is not the checkpoint's fault: the run stops with that error and sets nothing
aside, so a rerun resumes where it should. With several processes a step counts as restored only
when every process restored its part, so all of them resume from the same step, and an error on one
process stops every process with the same line.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from alignx_jax.errors import InputError, cause
from alignx_jax.train import hosts


def absolute(directory: str | pathlib.Path):
    """A local folder made absolute; a URL (`gs://bucket/run`) as given, as an etils path, so orbax
    writes to the bucket (`pathlib.Path` would turn it into the local folder `gs:/bucket/run`)."""
    text = str(directory)
    if "://" in text:
        from etils import epath

        return epath.Path(text)
    return pathlib.Path(directory).absolute()


def of_run(config) -> Checkpoints:
    """A run's checkpoints: `config.checkpoint_dir` as written (a `gs://` URL reaches orbax unchanged),
    else `out_dir/checkpoints`."""
    return Checkpoints(config.checkpoint_dir or pathlib.Path(config.out_dir) / "checkpoints", keep=config.keep_checkpoints)


@dataclasses.dataclass
class Restored:
    step: int
    state: dict
    meta: dict
    skipped: list[str]  # messages about corrupt checkpoints that were passed over


class Checkpoints:
    def __init__(self, directory: str | pathlib.Path, *, keep: int, asynchronous: bool = True):
        self.directory = absolute(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: dict, iterator: grain.DatasetIterator, meta: dict, *, force: bool = False) -> None:
        """Start saving (asynchronously: the arrays are copied to host memory first)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta)), force=force)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def has_steps(self) -> bool:
        """Are there checkpoints to restore (then one restores, or `restore` raises)?"""
        return bool(self._manager.all_steps())

    def restore(self, abstract_state: dict, iterator: grain.DatasetIterator,
                warn: Callable[[str], None] = lambda _: None) -> Restored | None:
        """The newest checkpoint that restores, into `abstract_state` (ShapeDtypeStructs with shardings)
        and `iterator` (its state is set); None when there is none."""
        skipped = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            path = self.directory / str(step)
            problem, damaged = None, False
            try:
                _check_process_count(path)
                restored = _read_step(path, abstract_state, iterator)
            except Exception as error:  # orbax/tensorstore/json raise many types for damaged files
                problem, damaged = cause(error), is_damage(error)
            # Not the checkpoint's fault (on any process): every process stops with the same line.
            other = hosts.first_message(None if problem is None or damaged else problem)
            if other is not None:
                raise CheckpointError(f"checkpoint {path} could not be restored on process {other[0]} ({other[1]}); "
                                      f"nothing was set aside: fix that and rerun to resume from it")
            # Each process reads its own shards and its own data state: a step is used only when every
            # process restored it, else all of them pass it over together (and agree on the one they use).
            if hosts.all_processes(problem is None):
                return Restored(step, restored["state"], restored["meta"], skipped)
            message = (f"checkpoint {path} is corrupt or incomplete "
                       f"({problem or 'another process could not restore its part'}); trying the previous one")
            warn(message)
            skipped.append(message)
            self._set_aside(path)
        if skipped:
            raise InputError(f"no checkpoint under {self.directory} restores: " + "; ".join(skipped))
        return None

    def _set_aside(self, path: pathlib.Path) -> None:
        if jax.process_index() == 0 and path.exists():
            target = path.with_name(path.name + ".corrupt")
            index = 1
            while target.exists():
                target = path.with_name(f"{path.name}.corrupt{index}")
                index += 1
            path.rename(target)
        hosts.barrier(f"alignx_checkpoint_set_aside_{path.name}")  # moved before anyone lists the steps again
        self._manager.reload()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class CheckpointError(InputError):
    """A checkpoint that is intact could not be restored (the message says why); nothing was changed."""


# The restore errors of a damaged checkpoint (a disk that filled up, a writer that died, a flipped
# byte): files missing, truncated or unparsable. Matched by type and by tensorstore's / grain's words.
_DAMAGE_TYPES = (json.JSONDecodeError, UnicodeDecodeError, EOFError, FileNotFoundError)
_DAMAGE_WORDS = ("NOT_FOUND", "DATA_LOSS", "does not exist", "Error decoding", "corrupt", "checksum", "truncated")
# Errors of the place or the moment, never of the checkpoint: they stop the run and set nothing aside.
_OTHER_TYPES = (MemoryError, PermissionError, ConnectionError, TimeoutError, InterruptedError)
_OTHER_WORDS = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED",
                "ABORTED", "CANCELLED", "out of memory", "Out of memory")


def is_damage(error: BaseException) -> bool:
    """Does this restore error say the checkpoint itself is damaged? (Anything unknown: no, so that a
    surprise stops the run instead of setting every checkpoint aside.)"""
    chain, seen = [], error
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, _OTHER_TYPES) or any(w in str(e) for w in _OTHER_WORDS) for e in chain):
        return False
    return any(isinstance(e, _DAMAGE_TYPES) or any(w in str(e) for w in _DAMAGE_WORDS) for e in chain)


def _check_process_count(path) -> None:
    """A checkpoint's data state has one file per process (`process_<i>-of-<n>.json`): one written by
    another number of processes cannot give each of these its data position."""
    data = path / "data"
    written = {m.group(1) for f in (data.iterdir() if data.exists() else ())
               if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))}
    if written and written != {str(jax.process_count())}:
        raise CheckpointError(f"it was written by {', '.join(sorted(written))} processes and this run has "
                              f"{jax.process_count()}: resume with as many processes (each one's data position is its "
                              f"own), or start a new out_dir")


def _read_step(path, abstract_state: dict, iterator: grain.DatasetIterator) -> dict:
    """One checkpoint's items (`path/state`, `path/data`, `path/meta`, as the manager wrote them), read
    by their orbax handlers directly. Unlike `CheckpointManager.restore` this holds no barrier across
    processes: a process that fails here does not leave the others waiting in orbax's barrier while
    it waits in the agreement (`hosts.all_processes`), which aborted the run."""
    state_handler = ocp.StandardCheckpointHandler()
    try:
        state = state_handler.restore(path / "state", args=ocp.args.StandardRestore(abstract_state))
    finally:
        state_handler.close()
    grain.checkpoint.CheckpointHandler().restore(path / "data", args=grain.checkpoint.CheckpointRestore(iterator))
    meta = ocp.JsonCheckpointHandler().restore(path / "meta", args=ocp.args.JsonRestore())
    return {"state": state, "meta": meta}


def saved_state(state: Any, *, with_frozen: bool = False) -> dict:
    """What of a TrainState goes into a checkpoint (the frozen model only `with_frozen`, when it is not
    the start model; a trained preference bridge does)."""
    saved = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if with_frozen:
        saved["frozen"] = state.frozen
    if getattr(state, "bridge", None) is not None:
        saved.update(bridge=state.bridge, bridge_opt_state=state.bridge_opt_state)
    if getattr(state, "group_weights", None) is not None:
        saved["group_weights"] = state.group_weights
    return saved
