"""The shipped configs' mesh shapes, scaled to a tiny model, on forced CPU devices and on several
processes (jax.distributed over localhost): a few steps with a held-out set, the precomputed
reference, a checkpoint, SIGTERM to every process at different moments, resume, and the HF export;
the per-step losses equal one device's on the same global batches (docs/pods-defects.md).

    8xH100 config:   fsdp 8 on 8 devices (held-out eval.rows 4 < 8 shards: the crash of the issue)
    v5p-64 configs:  fsdp 32 on 32 devices
    2 x 2 x 2:       data x fsdp x tensor on 2 processes of 4 devices (tensor within a host)
    fsdp 8:          on 4 processes of 2 devices
"""
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
import yaml

from alignx_jax import data, interop
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import config_from_dict, create_state, load_model, resolve_loss
from alignx_jax.train import data as train_data
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.metrics import read_metrics
from alignx_jax.train.optimizer import learning_rate, make_optimizer
from alignx_jax.train.step import StepSpec, train_step

ALIGNX = pathlib.Path(sys.executable).parent / "alignx"
STEPS = 4


def _config(out_dir, mesh, rows):
    return {
        "seed": 0, "steps": STEPS, "checkpoint_every": 100, "log_every": 1, "out_dir": str(out_dir), "mesh": mesh,
        "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
                  "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
                                "num_heads": 4, "num_kv_heads": 2}},
        "data": {"synthetic": {"users": 16, "records_per_user": 4, "history_items": 1},
                 "heldout_synthetic": {"users": 2, "records_per_user": 2, "history_items": 1},
                 "rows": rows, "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [rows * 512]},
        "eval": {"rows": 4}, "reference": "precomputed", "reference_cache_dir": str(out_dir.parent / "cache"),
        "export_hf": True, "optimizer": {"lr": 1e-3, "warmup_steps": 1},
    }


def one_device_losses(config, processes):
    """The same global batches on one device: each process's share packed as it packs it, rows in
    process order, pair ids offset by process (as `train/data.py` numbers them)."""
    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params, model, tokenizer = load_model(config.model, mesh, config.seed)
    optimizer = make_optimizer(config.optimizer, config.steps)
    state, _ = create_state(config, params, model, mesh, optimizer)  # frozen reference = the start model
    packing = train_data.packing_config(config.data, processes)
    records = train_data.build_splits(config.data, config.seed).train
    shards = [iter(data.packed_batches(records, tokenizer=tokenizer, config=packing,
                                       prompt_format=train_data.prompt_format(config.data), seed=config.seed,
                                       num_epochs=None, shard_index=i, shard_count=processes))
              for i in range(processes)]
    loss_fn, hparams = resolve_loss(config)
    rows, pairs = train_sharding.batch_shardings(mesh)
    step = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"))
    losses = []
    for index in range(config.steps):
        local = [next(s).as_dict() for s in shards]
        length = max(b["tokens"].shape[1] for b in local)
        local = [train_data.pad_rows(b, length) for b in local]
        slots = len(local[0]["pair_valid"])
        for i, b in enumerate(local):
            b["pair_ids"] = np.where(b["pair_ids"] >= 0, b["pair_ids"] + i * slots, -1).astype(np.int32)
        merged = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
        batch, scored = train_data.assemble([merged], buckets=(config.data.scored_buckets[0],), row_sharding=rows,
                                            pair_sharding=pairs)
        spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=hparams, reference="frozen", lora=None,
                        num_pairs=len(merged["pair_valid"]), scored_length=scored)
        with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(config.seed), index), spec=spec,
                                  optimizer=optimizer, schedule=learning_rate(config.optimizer, config.steps))
        losses.append(float(metrics["loss"]))
    return losses


def _launch(config_path, processes, devices, logs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [str(ALIGNX), "train", "--config", str(config_path)]
    if processes == 1:
        return [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=logs[0].open("w"))]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(command + ["distributed.initialize=explicit", f"distributed.coordinator_address=localhost:{port}",
                                        f"distributed.num_processes={processes}", f"distributed.process_id={i}"],
                             env=env, stdout=subprocess.DEVNULL, stderr=logs[i].open("w")) for i in range(processes)]


def _wait(running, logs, timeout=600):
    try:
        for p in running:
            p.wait(timeout=timeout)
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [log.read_text() for log in logs]


CASES = {
    "8xH100 fsdp 8": dict(processes=1, devices=8, mesh={"data": 1, "fsdp": 8, "tensor": 1}, rows=8),
    "v5p-64 fsdp 32": dict(processes=1, devices=32, mesh={"data": 1, "fsdp": 32, "tensor": 1}, rows=32),
    "2x2x2 on 2 processes": dict(processes=2, devices=4, mesh={"data": 2, "fsdp": 2, "tensor": 2}, rows=4),
    "fsdp 8 on 4 processes": dict(processes=4, devices=2, mesh={"data": 1, "fsdp": 8, "tensor": 1}, rows=8),
}


@pytest.mark.slow  # ~1-3 min per case on 2 cores (processes start, import JAX, compile)
@pytest.mark.parametrize("case", list(CASES))
def test_mesh_matrix_trains_resumes_and_exports_on_the_losses_of_one_device(tmp_path, case):
    spec = CASES[case]
    processes, devices = spec["processes"], spec["devices"]
    interop.load_tokenizer("smollm2-135m-instruct")  # the tokenizer cache, written once
    out = tmp_path / "run"
    config = _config(out, spec["mesh"], spec["rows"])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    if processes > 1:
        # Run 1: SIGTERM to every process, process i 0.3 s after process i - 1 (the later ones land
        # while the preemption checkpoint is written, or after a process has finished).
        logs = [tmp_path / f"run1_{i}.log" for i in range(processes)]
        running = _launch(config_path, processes, devices, logs)
        deadline = time.monotonic() + 600
        while not re.search(r"^step 1/", logs[0].read_text(), re.M):
            assert all(p.poll() is None for p in running), [log.read_text() for log in logs]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for p in running:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        texts = _wait(running, logs)
        saved = [int(m.group(1)) for t in texts for m in [re.search(r"SIGTERM: saved checkpoint (\d+)", t)] if m]
        assert all(p.returncode == 0 for p in running), texts
        assert len(saved) == processes and len(set(saved)) == 1 and 1 <= saved[0] < STEPS, texts
        assert not (out / "summary.json").exists()
    logs = [tmp_path / f"run2_{i}.log" for i in range(processes)]
    running = _launch(config_path, processes, devices, logs)
    texts = _wait(running, logs)
    assert all(p.returncode == 0 for p in running), texts
    if processes > 1:
        assert all(f"resumed from {out / 'checkpoints' / str(saved[0])}" in t for t in texts), texts
    assert f"mesh {spec['mesh']}" in texts[0]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # The frozen reference in the step: the precomputed values are its log-probs, computed once.
    one = one_device_losses(config_from_dict({**config, "out_dir": str(tmp_path / "unused"), "reference": "frozen"}),
                            processes)
    np.testing.assert_allclose([r["loss"] for r in rows], one, rtol=1e-4)
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["eval_n"] == 4 and np.isfinite(summary["eval_accuracy"])
    assert (out / "hf" / "model.safetensors").is_file() and (out / "hf" / "config.json").is_file()
