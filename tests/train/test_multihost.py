"""Two processes on this machine (jax.distributed over localhost, gloo CPU collectives), each reading
its own Grain shard, train with the same per-step losses as one process on the same global batch;
SIGTERM to one of them stops both at the same step, and a checkpoint that one of them cannot read is
passed over by both."""
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
CONFIG = {
    "seed": 0, "steps": 3, "checkpoint_every": 3, "mesh": {"fsdp": -1},
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1}, "rows": 4,
             "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [1024, 2048, 4096]},
    "optimizer": {"lr": 1e-3, "warmup_steps": 1},
}


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def one_process_losses(config):
    """The same global batch in one process: host 0's rows, then host 1's, pair ids offset by host."""
    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params, model, tokenizer = load_model(config.model, mesh, config.seed)
    optimizer = make_optimizer(config.optimizer, config.steps)
    state, _ = create_state(config, params, model, mesh, optimizer)
    packing = train_data.packing_config(config.data, 2)
    shards = [iter(data.packed_batches(train_data.build_splits(config.data, config.seed).train, tokenizer=tokenizer,
                                       config=packing, prompt_format=train_data.prompt_format(config.data),
                                       seed=config.seed, num_epochs=None, shard_index=i, shard_count=2))
              for i in range(2)]
    loss_fn, hparams = resolve_loss(config)
    rows, pairs = train_sharding.batch_shardings(mesh)
    step = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"))
    losses = []
    for index in range(config.steps):
        local = [next(s).as_dict() for s in shards]
        length = max(b["tokens"].shape[1] for b in local)
        local = [train_data.pad_rows(b, length) for b in local]
        slots = len(local[0]["pair_valid"])
        local[1]["pair_ids"] = np.where(local[1]["pair_ids"] >= 0, local[1]["pair_ids"] + slots, -1).astype(np.int32)
        merged = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
        scored = max(int((b["chosen_mask"] | b["rejected_mask"]).sum()) for b in local) * 2
        # A bucket that holds the step's scored tokens (few compiled shapes).
        buckets = tuple(b for b in config.data.scored_buckets if b >= scored) or (scored,)
        batch, scored_length = train_data.assemble([merged], buckets=buckets,
                                                   row_sharding=rows, pair_sharding=pairs)
        spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=hparams, reference="frozen", lora=None,
                        num_pairs=len(merged["pair_valid"]), scored_length=scored_length)
        with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(config.seed), index), spec=spec,
                                  optimizer=optimizer, schedule=learning_rate(config.optimizer, config.steps))
        losses.append(float(metrics["loss"]))
    return losses


def _train_on_two_processes(tmp_path, config):
    """`alignx train` of `config` as two processes with one CPU device each; returns their stderr."""
    interop.load_tokenizer("smollm2-135m-instruct")  # the tokenizer cache, written once, not by both processes
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
    processes = [subprocess.Popen(
        [str(ALIGNX), "train", "--config", str(config_path), "distributed.initialize=explicit",
         f"distributed.coordinator_address=localhost:{port}", "distributed.num_processes=2",
         f"distributed.process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err
    return [err for _, err in outputs]


@pytest.mark.slow  # two processes start, import JAX and compile (~2 min on 2 cores)
def test_two_processes_train_with_the_losses_of_one(tmp_path):
    errors = _train_on_two_processes(tmp_path, {**CONFIG, "out_dir": str(tmp_path / "run")})
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in errors[0]
    two = [row["loss"] for row in read_metrics(tmp_path / "run")]
    one = one_process_losses(config_from_dict({**CONFIG, "out_dir": str(tmp_path / "unused")}))
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert (tmp_path / "run" / "checkpoints" / "3" / "data" / "process_1-of-2.json").is_file()


@pytest.mark.slow  # two processes start, import JAX and compile (~1 min on 2 cores)
def test_two_processes_precompute_the_reference_from_their_own_shares(tmp_path):
    """Each process packs only its share of the records, the shares are scored together, and the run
    trains on the curve of one process with the frozen reference."""
    cache = tmp_path / "cache"
    errors = _train_on_two_processes(tmp_path, {**CONFIG, "out_dir": str(tmp_path / "run"),
                                                "reference": "precomputed", "reference_cache_dir": str(cache)})
    assert "precomputing reference log-probs of 32 records" in errors[0]
    (file,) = cache.iterdir()  # the arrays, no pieces left behind
    with np.load(file) as saved:
        assert not np.isnan(saved["ref_chosen"]).any() and saved["ref_chosen"].shape == (32,)
    two = [row["loss"] for row in read_metrics(tmp_path / "run")]
    one = one_process_losses(config_from_dict({**CONFIG, "out_dir": str(tmp_path / "unused")}))
    np.testing.assert_allclose(two, one, rtol=1e-5)


def _launch(config_path, port, logs):
    """The two processes of one `alignx train` run, 2 CPU devices each, stderr to `logs`[i]."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [subprocess.Popen(
        [str(ALIGNX), "train", "--config", str(config_path), "distributed.initialize=explicit",
         f"distributed.coordinator_address=localhost:{port}", "distributed.num_processes=2",
         f"distributed.process_id={i}"], env=env, stdout=subprocess.DEVNULL, stderr=logs[i].open("w"))
        for i in range(2)]


def _finish(processes, logs):
    """Wait for both; each must exit 0. Returns their stderr texts."""
    for p in processes:
        p.wait(timeout=600)
    texts = [log.read_text() for log in logs]
    for p, text in zip(processes, texts):
        assert p.returncode == 0, text
    return texts


def _sigterm_after(processes, logs, index, step, timeout=300):
    """SIGTERM to process `index` alone once it has logged `step`."""
    deadline = time.monotonic() + timeout
    while not re.search(rf"^step {step}/", logs[index].read_text(), re.M):
        assert all(p.poll() is None for p in processes), [log.read_text() for log in logs]
        assert time.monotonic() < deadline, "the run did not reach the step in time"
        time.sleep(0.1)
    processes[index].send_signal(signal.SIGTERM)


def _saved(texts):
    """The step each process reports having saved on SIGTERM."""
    return [int(m.group(1)) for t in texts for m in [re.search(r"SIGTERM: saved checkpoint (\d+)", t)] if m]


def _resumed(texts):
    return [int(m.group(1)) for t in texts for m in [re.search(r"resumed from \S+/checkpoints/(\d+)\n", t)] if m]


@pytest.mark.slow  # three two-process runs (start, JAX import, compile each) and one in-process reference
def test_sigterm_to_one_process_stops_both_at_one_step_and_a_corrupt_part_is_passed_over_by_both(tmp_path):
    """Run 1: SIGTERM to process 1 only; both save the same step k and exit 0. Run 2 resumes both from
    k, then SIGTERM to process 0 only; both save k2. Process 1's data state in k2 is then damaged (a
    file only process 1 reads, so process 0 alone could restore k2): run 3 passes k2 over on both
    processes, resumes both from k, and ends on the per-step losses of one straight process."""
    interop.load_tokenizer("smollm2-135m-instruct")
    steps = 16
    config = {**CONFIG, "steps": steps, "checkpoint_every": 100, "out_dir": str(tmp_path / "run")}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    checkpoints = tmp_path / "run" / "checkpoints"

    logs = [tmp_path / f"run1_process{i}.log" for i in range(2)]
    processes = _launch(config_path, free_port(), logs)
    _sigterm_after(processes, logs, index=1, step=2)
    texts = _finish(processes, logs)
    saved = _saved(texts)
    assert len(saved) == 2 and saved[0] == saved[1] and 2 <= saved[0] < steps, texts
    k = saved[0]
    assert all((checkpoints / str(k) / "data" / f"process_{i}-of-2.json").is_file() for i in range(2))
    assert not (tmp_path / "run" / "summary.json").exists()

    logs = [tmp_path / f"run2_process{i}.log" for i in range(2)]
    processes = _launch(config_path, free_port(), logs)
    _sigterm_after(processes, logs, index=0, step=k + 2)
    texts = _finish(processes, logs)
    assert _resumed(texts) == [k, k], texts
    saved = _saved(texts)
    assert len(saved) == 2 and saved[0] == saved[1] and k + 2 <= saved[0] < steps, texts
    k2 = saved[0]

    (checkpoints / str(k2) / "data" / "process_1-of-2.json").write_text("{not json")
    logs = [tmp_path / f"run3_process{i}.log" for i in range(2)]
    texts = _finish(_launch(config_path, free_port(), logs), logs)
    assert _resumed(texts) == [k, k], texts
    assert all(f"checkpoints/{k2} is corrupt or incomplete" in t for t in texts), texts
    assert "another process could not restore its part" in texts[0]
    assert (checkpoints / f"{k2}.corrupt").is_dir() and (tmp_path / "run" / "summary.json").is_file()

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    one = one_process_losses(config_from_dict({**config, "out_dir": str(tmp_path / "unused")}))
    # 16 Adam steps on 4 devices vs one: fp32 reduction order alone moved a loss by 1.0e-5 relative here.
    np.testing.assert_allclose([r["loss"] for r in rows], one, rtol=5e-5)
