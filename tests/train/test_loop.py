"""The loop: a killed or preempted run resumes on the same loss curve; a corrupt checkpoint is passed
over by name; the outputs (metrics.jsonl, summary.json, model/) are what the issue names."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from alignx_jax.train import config_from_dict, train
from alignx_jax.train.metrics import read_metrics

ALIGNX = pathlib.Path(sys.executable).parent / "alignx"

TINY = {
    "seed": 0, "steps": 6, "checkpoint_every": 3, "log_every": 1,
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1},
             "heldout_synthetic": {"users": 2, "records_per_user": 2, "history_items": 1},
             "rows": 4, "seq_lengths": [512], "max_pairs_per_row": 1,
             "scored_buckets": [2048]},  # one compiled step shape,
    "optimizer": {"lr": 1e-3, "warmup_steps": 2},
}


def losses_by_step(out_dir):
    return {row["step"]: row["loss"] for row in read_metrics(out_dir)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 steps in one go: the curve every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    summary = train(config_from_dict({**TINY, "out_dir": str(out)}))
    return out, summary


def test_a_finished_run_writes_its_outputs(straight):
    out, summary = straight
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "rewards/accuracies", "rewards/margins", "lr", "grad_norm", "pairs_per_s", "tokens_per_s", "mfu"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(1e-3)  # warmup of 2 steps
    saved = json.loads((out / "summary.json").read_text())
    for key in ("eval_accuracy", "eval_accuracy_logp", "eval_worst_persona_accuracy", "per_persona", "wall_time_s",
                "steps", "final_loss"):
        assert key in saved and saved[key] is not None, key
    assert saved["eval_worst_persona_accuracy"] == min(p["accuracy"] for p in saved["per_persona"].values())
    assert (out / "model" / "alignx_model.json").is_file() and list((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]


def test_a_deadline_stops_the_steps_and_still_finishes(tmp_path, recorder):
    """A deadline already passed: the first step runs (nothing is measured before it), then the run
    checkpoints it and finishes as a short run (held-out evaluation, model folder, summary)."""
    out = tmp_path / "runs" / "budget"  # runs/ does not exist yet: created with its parent
    summary = train(config_from_dict({**TINY, "out_dir": str(out)}), recorder, deadline=time.perf_counter())
    assert summary["steps"] == 1 and [r["step"] for r in read_metrics(out)] == [1]
    assert "time budget: stopping after step 1 of 6" in recorder.messages
    assert summary["eval_accuracy"] is not None and (out / "model" / "alignx_model.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


def test_a_run_extended_by_resuming_keeps_its_evaluations(tmp_path):
    """The final held-out evaluation joins the last step's row of metrics.jsonl (the last step is
    logged whatever `log_every` says); a run resumed for more steps keeps it there and in its
    `eval_history`, and its own final evaluation lands on its last row, equal to its summary's."""
    config = {**TINY, "out_dir": str(tmp_path / "run"), "log_every": 2, "optimizer": {"lr": 1e-3, "schedule": "constant"}}
    first = train(config_from_dict({**config, "steps": 3}))
    second = train(config_from_dict(config))
    keys = ("eval_accuracy", "eval_accuracy_logp", "eval_worst_persona_accuracy", "eval_worst_persona_accuracy_logp",
            "eval_reward_accuracy", "eval_worst_persona_reward_accuracy")
    assert first["eval_history"] == [] and second["eval_history"] == [{"step": 3, **{k: first[k] for k in keys}}]
    rows = {row["step"]: row for row in read_metrics(tmp_path / "run")}
    assert list(rows) == [2, 3, 4, 6] and [step for step, row in rows.items() if "eval_accuracy" in row] == [3, 6]
    assert all("loss" in row for row in rows.values())
    assert {k: rows[3][k] for k in keys} == {k: first[k] for k in keys}
    assert {k: rows[6][k] for k in keys} == {k: second[k] for k in keys}


def _command(config_path):
    return [str(ALIGNX), "train", "--config", str(config_path)]


def _write_config(folder, **changes):
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out_dir": str(folder / "run"), **changes}))
    return path


def _wait_for(predicate, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.2)


@pytest.mark.slow  # two subprocess runs (~1 min each on 2 cores); the in-process resume test below stays in
def test_sigkill_then_the_same_command_resumes_on_the_same_curve(straight, tmp_path):
    config = _write_config(tmp_path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(_command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    # Past the step-3 checkpoint (committed) and into step 4 or later: the kill loses those steps.
    _wait_for(lambda: (run / "checkpoints" / "3" / "_CHECKPOINT_METADATA").exists()
              and max(losses_by_step(run), default=0) >= 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(_command(config), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert losses_by_step(run) == losses_by_step(straight[0])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_0_and_resumes(straight, tmp_path):
    config = _write_config(tmp_path, checkpoint_every=100)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(_command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    _wait_for(lambda: max(losses_by_step(run), default=0) >= 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    saved = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < 6 and "SIGTERM" in stderr
    assert not (run / "summary.json").exists()
    resumed = subprocess.run(_command(config), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert losses_by_step(run) == losses_by_step(straight[0])


def test_a_sigterm_during_set_up_stops_at_the_first_step(straight, tmp_path, monkeypatch, recorder):
    """The notice is kept from the start: the first step runs, is saved, and the run stops there."""
    from alignx_jax.train import loop

    def set_up_then_sigterm(*args, **kwargs):
        run = setup(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return run

    setup = loop.setup
    monkeypatch.setattr(loop, "setup", set_up_then_sigterm)
    out = tmp_path / "run"
    assert train(config_from_dict({**TINY, "out_dir": str(out)}), recorder) == {"preempted": True, "step": 1}
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    assert losses_by_step(out) == {1: losses_by_step(straight[0])[1]}


def test_a_corrupt_latest_checkpoint_is_named_and_the_previous_one_used(straight, tmp_path, recorder):
    out = tmp_path / "run"
    train(config_from_dict({**TINY, "out_dir": str(out), "steps": 4, "checkpoint_every": 2}))
    damaged = 0
    for file in (out / "checkpoints" / "4" / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 64:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated, as by a full disk
            damaged += 1
    assert damaged
    train(config_from_dict({**TINY, "out_dir": str(out), "steps": 6, "checkpoint_every": 2}), recorder)
    assert any("checkpoints/4 is corrupt or incomplete" in m for m in recorder.messages), recorder.messages
    assert any(m.endswith("checkpoints/2") for m in recorder.messages if m.startswith("resumed from")), recorder.messages
    assert (out / "checkpoints" / "4.corrupt").is_dir()
    assert losses_by_step(out) == losses_by_step(straight[0])
