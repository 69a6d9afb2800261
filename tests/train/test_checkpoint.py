"""Checkpoints across processes and places: a step that another process cannot restore is passed over
here too (every process resumes from the same step), and a config's `gs://` checkpoint_dir reaches
orbax as written. The two-process run of both is tests/train/test_multihost.py (slow)."""
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax.train import checkpoint as ckpt
from alignx_jax.train import config_from_dict, hosts
from alignx_jax.train.config import ConfigError


def _iterator():
    return iter(grain.MapDataset.range(10).to_iter_dataset())


def test_a_step_another_process_cannot_restore_is_passed_over_by_this_one(tmp_path, monkeypatch):
    """This process reads step 2 fine, but the agreement says another could not: step 1 is used."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    checkpoints = ckpt.Checkpoints(tmp_path / "checkpoints", keep=3, asynchronous=False)
    iterator = _iterator()
    for step in (1, 2):
        next(iterator)
        checkpoints.save(step, {"w": jnp.full((4,), float(step))}, iterator, {"seed": step})
    votes = []

    def all_processes(flag):
        votes.append(flag)
        return flag and len(votes) > 1  # the other process failed on the first step tried

    monkeypatch.setattr(hosts, "all_processes", all_processes)
    messages = []
    fresh = _iterator()
    restored = checkpoints.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)}, fresh,
                                   warn=messages.append)
    checkpoints.close()
    assert votes == [True, True]  # this process restored both steps; only the agreement refused step 2
    assert restored.step == 1 and restored.meta == {"seed": 1}
    np.testing.assert_array_equal(restored.state["w"], np.full(4, 1.0))
    assert next(fresh) == 1  # the data position of step 1 (one element read), not of step 2
    assert len(messages) == 1 and "checkpoints/2 is corrupt or incomplete (another process could not restore its " \
                                  "part)" in messages[0]
    assert (tmp_path / "checkpoints" / "2.corrupt").is_dir()


def test_a_gs_checkpoint_dir_of_a_config_reaches_orbax_unchanged(monkeypatch):
    seen = {}

    class FakeManager:
        def __init__(self, directory, **kwargs):
            seen["directory"] = directory

    monkeypatch.setattr(ckpt.ocp, "CheckpointManager", FakeManager)
    config = config_from_dict({"out_dir": "runs/x", "checkpoint_dir": "gs://bucket/run/checkpoints",
                               "data": {"synthetic": {"users": 2}}})
    checkpoints = ckpt.of_run(config)
    assert str(seen["directory"]) == "gs://bucket/run/checkpoints"
    assert str(checkpoints.directory / "7") == "gs://bucket/run/checkpoints/7"
    local = ckpt.Checkpoints("runs/x/checkpoints", keep=1)  # a local folder is still made absolute
    assert pathlib.Path(str(seen["directory"])).is_absolute() and str(local.directory).endswith("runs/x/checkpoints")
    ckpt.of_run(config_from_dict({"out_dir": "runs/x", "data": {"synthetic": {"users": 2}}}))
    assert str(seen["directory"]).endswith("/runs/x/checkpoints") and str(seen["directory"]).startswith("/")


def test_a_url_out_dir_is_refused_with_the_key_that_takes_a_bucket():
    with pytest.raises(ConfigError, match="'out_dir' must be a local folder.*checkpoint_dir: gs://bucket/run/checkpoints"):
        config_from_dict({"out_dir": "gs://bucket/run", "data": {"synthetic": {"users": 2}}})


def test_one_process_agrees_with_itself_without_a_collective(monkeypatch):
    from jax.experimental import multihost_utils

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective in a one-process run")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_collective)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", no_collective)
    assert hosts.any_process(True) and not hosts.any_process(False)
    assert hosts.all_processes(True) and not hosts.all_processes(False)
    hosts.barrier("nothing")
