"""Checkpoints of a run: orbax CheckpointManager (async, atomic, keep N) under out_dir/checkpoints/<step>/.

Each holds `state` (step, trained params, optimizer state), `data` (each process's Grain iterator
state, grain's own orbax handler) and `meta` (the seed, so the per-step RNG `fold_in(key(seed),
step)` continues). The frozen reference / LoRA base is not saved: it is the start model, reloaded.
Restoring tries the latest step first; a step that fails to restore (truncated or corrupt files) is
reported by name, moved aside to `<step>.corrupt`, and the previous one is used. With several processes
a step counts as restored only when every process restored its part, so all of them resume from
the same step.
"""
from __future__ import annotations

import dataclasses
import pathlib
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
            problem = None
            try:
                restored = _read_step(path, abstract_state, iterator)
            except Exception as error:  # orbax/tensorstore/json raise many types for damaged files
                problem = cause(error)
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
    return saved
