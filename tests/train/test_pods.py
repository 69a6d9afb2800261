"""Multi-device and multi-host defects (docs/pods-defects.md): each test failed before its fix, or
shows that a suspected defect does not happen. In-process tests run on the 4 CPU devices of
tests/conftest.py; the mesh matrix of every shipped config's shape is tests/train/test_mesh_matrix.py."""
import gc
import itertools
import json
import math
import os
import signal

import jax
import numpy as np
import pytest

from alignx_jax import evaluation
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import checkpoint as ckpt
from alignx_jax.train import config_from_dict, loop, train

TINY = {
    "seed": 0, "steps": 2, "checkpoint_every": 2, "log_every": 1,
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1},
             "heldout_synthetic": {"users": 2, "records_per_user": 2, "history_items": 1},
             "rows": 4, "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [2048]},
    "optimizer": {"lr": 1e-3, "warmup_steps": 1},
}
NO_HELDOUT = {k: v for k, v in TINY["data"].items() if k != "heldout_synthetic"}


def test_eval_rows_round_up_to_the_batch_shards():
    scorer = evaluation.PairScorer(model_sharding.make_mesh(1, 4, 1))
    assert [scorer.rows_for(r) for r in (1, 2, 4, 5, 8)] == [4, 4, 4, 8, 8]
    scorer = evaluation.PairScorer(model_sharding.make_mesh(2, 1, 2))
    assert [scorer.rows_for(r) for r in (1, 3)] == [2, 4]


def test_heldout_evaluation_runs_when_eval_rows_do_not_divide_over_the_mesh(tmp_path):
    """eval.rows = 2 on fsdp 4 (the issue's eval.rows 4 on fsdp 8): the trainer packed 2-row held-out
    batches and the scorer refused them (IndivisibleError: axis 0 partitioned 4 times, size 2)."""
    assert jax.device_count() == 4
    out = tmp_path / "run"
    summary = train(config_from_dict({**TINY, "out_dir": str(out), "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
                                      "eval": {"rows": 2}}))
    assert summary["eval_n"] == 4 and np.isfinite(summary["eval_accuracy"])
    rows = [json.loads(line) for line in (out / "heldout_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["policy_chosen_logp"]) for r in rows)


def _bytes_per_device() -> dict:
    """Bytes of every live jax array, per device (each shard where it lives), garbage collected first.
    From the shardings' shard shapes: reading `shard.data` would make new arrays that count too."""
    gc.collect()
    out = {}
    for array in jax.live_arrays():
        size = math.prod(array.sharding.shard_shape(array.shape)) * array.dtype.itemsize
        for device in array.sharding.device_set:
            out[device] = out.get(device, 0) + size
    return out


def test_a_restored_run_holds_one_copy_of_the_state(tmp_path, monkeypatch):
    """Defect 1: after a restore, `run.state` kept the set-up parameters and AdamW moments alive beside
    the restored ones (never donated): a resumed step needed one more state per device than `alignx
    compile` counts (~24.6 GiB per chip for the 70B config). Measured with the live-buffer total, per
    device, right before and right after the restore: equal now (before the fix: + params + moments)."""
    config = {**TINY, "out_dir": str(tmp_path / "run"), "data": NO_HELDOUT}
    train(config_from_dict(config))  # 2 steps, checkpoint 2
    measured = {}
    restore = loop._restore_or_warm_up

    def measuring(run, checkpoints, iterator, reporter):
        measured["before"] = _bytes_per_device()
        state = restore(run, checkpoints, iterator, reporter)
        measured["after"] = _bytes_per_device()
        measured["trained"] = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                                  for x in jax.tree.leaves((state.params, state.opt_state)))
        return state

    monkeypatch.setattr(loop, "_restore_or_warm_up", measuring)
    summary = train(config_from_dict({**config, "steps": 3}))
    assert summary["steps"] == 3 and measured["trained"] > 0
    assert measured["after"] == measured["before"], (measured, measured["trained"])


def test_a_sigterm_while_the_last_checkpoint_is_written_is_caught(tmp_path, monkeypatch):
    """Defect 3: the SIGTERM handler was put back before the last (asynchronous) checkpoint finished
    writing, so a host whose own SIGTERM came later was killed mid-write. Here the handler that was in
    place before the run stands in for the default (kill): a SIGTERM during `Checkpoints.close` must
    not reach it."""
    reached = []
    close = ckpt.Checkpoints.close

    def close_with_a_late_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)
        close(self)

    monkeypatch.setattr(ckpt.Checkpoints, "close", close_with_a_late_sigterm)
    previous = signal.signal(signal.SIGTERM, lambda *_: reached.append("the handler before the run"))
    try:
        train(config_from_dict({**TINY, "steps": 1, "out_dir": str(tmp_path / "run"),
                                "data": NO_HELDOUT}))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached == [] and (tmp_path / "run" / "checkpoints" / "1").is_dir()


# ---- defect 4: only a damaged checkpoint is corruption --------------------------------------------

def _two_checkpoints(folder):
    import grain
    import jax.numpy as jnp

    checkpoints = ckpt.Checkpoints(folder, keep=3, asynchronous=False)
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    for step in (1, 2):
        next(iterator)
        checkpoints.save(step, {"w": jnp.full((4,), float(step))}, iterator, {"seed": step})
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=sharding)}
    return checkpoints, abstract, iter(grain.MapDataset.range(10).to_iter_dataset())


@pytest.mark.parametrize("error, damage", [
    (json.JSONDecodeError("Expecting value", "", 0), True),                     # a truncated metadata file
    (UnicodeDecodeError("utf-8", b"\x9e", 0, 1, "invalid start byte"), True),  # a flipped byte
    (FileNotFoundError("Requested directory for restore does not exist"), True),  # a step whose writer died
    (ValueError('NOT_FOUND: Error opening "zarr" driver: Error reading "w/.zarray"'), True),  # missing chunks
    (ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 24.6GiB"), False),
    (ValueError("UNAVAILABLE: GCS request failed: 503"), False),
    (ConnectionResetError(104, "Connection reset by peer"), False),
    (PermissionError(13, "Permission denied"), False),
    (RuntimeError("something nobody has seen"), False),  # unknown: stop, do not set checkpoints aside
])
def test_only_a_damaged_checkpoint_counts_as_corrupt(error, damage):
    assert ckpt.is_damage(error) is damage


def test_a_restore_error_that_is_not_damage_stops_and_sets_nothing_aside(tmp_path, monkeypatch):
    """Defect 4: an out-of-memory (or a transient storage error) while restoring step 2 set step 2
    aside as corrupt and resumed from step 1 (or, for every step, from 0, truncating metrics.jsonl)."""
    checkpoints, abstract, iterator = _two_checkpoints(tmp_path / "checkpoints")
    read = ckpt._read_step

    def out_of_memory(path, *args):
        if path.name == "2":
            raise ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 24.6GiB")
        return read(path, *args)

    monkeypatch.setattr(ckpt, "_read_step", out_of_memory)
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/2 could not be restored on process 0 "
                                                   r"\(ValueError: RESOURCE_EXHAUSTED: Out of memory .*nothing was set "
                                                   r"aside"):
        checkpoints.restore(abstract, iterator)
    checkpoints.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_a_checkpoint_of_another_process_count_stops_and_sets_nothing_aside(tmp_path):
    """Defect 4: a checkpoint written by 2 processes, restored by 1 (a changed slice), failed on the
    missing data file and every step was set aside; now one line names the cause."""
    checkpoints, abstract, iterator = _two_checkpoints(tmp_path / "checkpoints")
    for step in ("1", "2"):
        data = tmp_path / "checkpoints" / step / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
        (data / "process_1-of-2.json").write_text((data / "process_0-of-2.json").read_text())
    with pytest.raises(ckpt.CheckpointError, match="it was written by 2 processes and this run has 1: resume with "
                                                   "as many processes"):
        checkpoints.restore(abstract, iterator)
    checkpoints.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


# ---- several processes on this machine (jax.distributed over localhost) ---------------------------

def _run_processes(tmp_path, config, *, processes=2, devices=1, per_process=lambda i: [], timeout=600):
    """`alignx train` of `config` as `processes` processes with `devices` CPU devices each; returns
    their (return code, stderr)."""
    import pathlib
    import socket
    import subprocess
    import sys

    import yaml

    from alignx_jax import interop

    interop.load_tokenizer("smollm2-135m-instruct")  # the tokenizer cache, written once, not by every process
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    alignx = pathlib.Path(sys.executable).parent / "alignx"
    running = [subprocess.Popen(
        [str(alignx), "train", "--config", str(path), "distributed.initialize=explicit",
         f"distributed.coordinator_address=localhost:{port}", f"distributed.num_processes={processes}",
         f"distributed.process_id={i}", *per_process(i)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True) for i in range(processes)]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in running]
    finally:
        for p in running:
            if p.poll() is None:  # a process left waiting in a collective (the defect) is not left behind
                p.kill()
                p.wait()
    return [(p.returncode, err) for p, err in zip(running, errors)]


@pytest.mark.slow  # two processes start and import JAX (~30 s)
def test_a_multi_process_run_without_a_shared_out_dir_is_refused_at_once(tmp_path):
    """Defect 2: the same out_dir path on two hosts without a shared filesystem is two folders (here:
    one per process). Each process would list its own checkpoint steps and call a collective per step,
    and only process 0 checked config.yaml; now every process stops with the same one line."""
    results = _run_processes(tmp_path, {**TINY, "data": NO_HELDOUT},
                             per_process=lambda i: [f"out_dir={tmp_path / f'host{i}' / 'run'}"])
    lines = [err.strip().splitlines()[-1] for _, err in results]
    assert [code for code, _ in results] == [2, 2], [err for _, err in results]
    assert lines[0] == lines[1] and lines[0].startswith(
        f"alignx: error: config key 'out_dir' ({tmp_path / 'host1' / 'run'}) is not one folder shared by every "
        f"process: process 1 does not see what process 0 wrote there"), lines
    assert not (tmp_path / "host0" / "run" / "checkpoints").exists()


TIMEOUT = 300


@pytest.mark.slow  # two processes start and import JAX (~30 s)
def test_a_bad_record_in_one_process_share_stops_every_process_with_the_same_line(tmp_path):
    """Defect 6: each process decodes only its share of a parquet file's records; a bad record in
    process 1's share raised there alone, and process 0 waited in its next collective until the
    coordinator's timeout. Now both stop at once with the same line, naming the record."""
    from alignx_jax import data

    records = data.synthetic_records(4, seed=0, records_per_user=2, history_items=1)
    records[3]["chosen"] = ""  # position 3: process 1's share (positions 1, 3, 5, ...)
    path = tmp_path / "records.parquet"
    data.write_records(records, path)
    config = {**TINY, "out_dir": str(tmp_path / "run"),
              "data": {**{k: v for k, v in NO_HELDOUT.items() if k != "synthetic"}, "files": [{"path": str(path)}]}}
    results = _run_processes(tmp_path, config, timeout=TIMEOUT)
    lines = [err.strip().splitlines()[-1] for _, err in results]
    assert [code for code, _ in results] == [2, 2], [err for _, err in results]
    assert lines[0] == lines[1] and lines[0].startswith("alignx: error: ") and "record 3: 'chosen' is empty" in lines[0], lines


# ---- defect 7: URLs go through a real filesystem library ------------------------------------------

@pytest.fixture
def gs_in_memory(monkeypatch):
    """gs:// served by fsspec's in-memory store (what gcsfs serves on a pod): etils.epath, and so the
    code under test, reach it through fsspec exactly as they reach a bucket."""
    import fsspec
    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem

    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, MemoryFileSystem, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    MemoryFileSystem.store.clear()
    yield MemoryFileSystem.store
    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, "gcsfs.GCSFileSystem", clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    MemoryFileSystem.store.clear()


def test_a_url_reference_cache_dir_is_written_to_its_store_not_a_local_gs_folder(tmp_path, monkeypatch, gs_in_memory):
    """Defect 7: `reference_cache_dir: gs://bucket/cache` went through pathlib and became the local
    folder `gs:/bucket/cache`; now the cache file lands in the (here in-memory) bucket and a rerun
    reuses it from there."""
    monkeypatch.chdir(tmp_path)
    config = {**TINY, "steps": 1, "data": NO_HELDOUT, "reference": "precomputed",
              "reference_cache_dir": "gs://bucket/cache"}
    train(config_from_dict({**config, "out_dir": str(tmp_path / "run1")}))
    assert not (tmp_path / "gs:").exists()
    (cached,) = [key for key in gs_in_memory if key.endswith(".npz")]
    assert cached.startswith("gs://bucket/cache/reference_logps_")
    messages = []

    class Reporter:
        start = step = close = lambda *a: None  # noqa: E731
        message = staticmethod(messages.append)

    train(config_from_dict({**config, "out_dir": str(tmp_path / "run2")}), Reporter())
    assert any(m.startswith("reference log-probs reused from gs://bucket/cache/reference_logps_") for m in messages)


def test_the_hf_export_brings_one_layer_at_a_time_to_the_host(tmp_path, monkeypatch):
    """Defect 8: export_hf gathered the whole float32 model into every host's memory (~280 GB for 70B)
    though only process 0 writes it. Now each gather is one layer's weight (here: the largest array a
    gather returns is one layer's MLP weight, not the 2 layers stacked), and the folder is the same."""
    import safetensors.numpy

    from alignx_jax.train import data as train_data

    gathered = []
    to_host = train_data.to_host

    def recording(array):
        out = to_host(array)
        gathered.append(out.shape)
        return out

    monkeypatch.setattr(train_data, "to_host", recording)
    model = {**TINY["model"], "overrides": {**TINY["model"]["overrides"], "num_layers": 2}}
    out = tmp_path / "run"
    train(config_from_dict({**TINY, "steps": 1, "model": model, "data": NO_HELDOUT, "export_hf": True,
                            "out_dir": str(out)}))
    from alignx_jax import interop

    native, _ = interop.load_native(out / "model")
    stacked = {x.shape for x in jax.tree.leaves(native["layers"])}  # [2 layers, ...]
    tensors = safetensors.numpy.load_file(out / "hf" / "model.safetensors")
    assert len(gathered) == len(tensors) and not stacked & set(gathered), (stacked, gathered)
    assert {"model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"} <= set(tensors)
    np.testing.assert_array_equal(tensors["model.layers.1.mlp.up_proj.weight"],
                                  np.asarray(native["layers"]["mlp"]["up_proj"]["kernel"][1]).T)


# ---- defect 5: the mesh groups each host's devices ------------------------------------------------

class FakeDevice:
    def __init__(self, id, process_index):
        self.id, self.process_index = id, process_index

    def __repr__(self):
        return f"d{self.id}@p{self.process_index}"


def _grid(processes, shape):
    return np.asarray([FakeDevice(i, p) for p, i in processes], dtype=object).reshape(shape)


def test_a_layout_that_splits_a_hosts_rows_or_its_tensor_group_is_named():
    """Defect 5: pair ids and each process's rows assume the process owns one block of the batch axes
    in process order; nothing checked it. 2 hosts x 4 devices."""
    from alignx_jax.models.sharding import layout_problem

    contiguous = [(p, p * 4 + i) for p in range(2) for i in range(4)]
    interleaved = [(i % 2, i) for i in range(8)]  # host 0, host 1, host 0, ...: rows of both hosts mixed
    assert layout_problem(_grid(contiguous, (1, 8, 1))) is None
    assert layout_problem(_grid(contiguous, (2, 2, 2))) is None  # tensor pairs within a host
    assert "do not split into 2 processes' blocks" in layout_problem(_grid(interleaved, (1, 8, 1)))
    assert "the tensor axis (2) spans processes" in layout_problem(_grid(interleaved, (1, 4, 2)))
    assert "the tensor axis (8) spans processes" in layout_problem(_grid(contiguous, (1, 1, 8)))


def test_the_mesh_regroups_devices_by_host_or_refuses_in_one_line():
    """An order that interleaves hosts is regrouped by process; a tensor axis wider than a host's
    devices cannot be, and is refused with the reason (train's make_mesh: one line, exit 2)."""
    from alignx_jax.models.sharding import device_grid, layout_problem

    interleaved = [FakeDevice(i, i % 2) for i in range(8)]
    grid = device_grid(1, 8, 1, devices=interleaved)
    assert layout_problem(grid) is None and [d.process_index for d in grid.flat] == [0] * 4 + [1] * 4
    with pytest.raises(ValueError, match=r"tensor': 8}: the tensor axis \(8\) spans processes"):
        device_grid(1, 1, 8, devices=interleaved)


def test_a_record_is_the_same_pair_in_every_epoch(byte_tokenizer):
    """Found by the mesh matrix (fsdp 32: 32 rows of 64 records, two epochs in 4 steps): a repeated
    dataset numbered epoch 2's records 64 + i, so their persona draw changed and the precomputed
    reference lookup failed (IndexError: index 99 is out of bounds for axis 0 with size 64)."""
    from alignx_jax import data

    records = data.synthetic_records(4, seed=0, records_per_user=2, history_items=2)  # 8 records
    config = data.PackingConfig(rows=8, seq_lengths=(2048,), max_pairs_per_row=1)
    epochs = [b.as_dict() for b in itertools.islice(data.packed_batches(
        records, tokenizer=byte_tokenizer, config=config, seed=0, shuffle=False, num_epochs=None,
        shard_index=0, shard_count=1), 2)]
    assert [list(b["pair_source"]) for b in epochs] == [list(range(8))] * 2
    np.testing.assert_array_equal(epochs[0]["tokens"], epochs[1]["tokens"])
