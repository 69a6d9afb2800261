"""The sharded step on 8 CPU devices equals one device (issue 12, must show 1), and parameters follow
the rules table."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

WORKER = pathlib.Path(__file__).with_name("sharded_worker.py")


@pytest.fixture(scope="module")
def results():
    done = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("mesh", ["1x4x2", "2x4x1"])
def test_sharded_step_equals_one_device(results, mesh):
    one, sharded = results["1x1x1"], results[mesh]
    np.testing.assert_allclose(sharded["loss"], one["loss"], rtol=1e-5)
    with np.load(one["params"]) as want, np.load(sharded["params"]) as got:
        for key in want.files:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("mesh, batch_shards", [("1x1x1", 1), ("1x4x2", 4), ("2x4x1", 8)])
def test_lm_head_runs_on_each_devices_rows(results, mesh, batch_shards):
    """The fused kernel runs inside shard_map over data x fsdp: each device's calls see 1/shards of the
    scored-token length (its own rows), and every scored token is still counted once."""
    run = results[mesh]
    assert run["kernel_tokens"] == [run["scored_length"] // batch_shards]
    assert run["scored_tokens"] == results["1x1x1"]["scored_tokens"] > 0


def test_parameters_are_sharded_by_the_rules_table(results):
    specs = results["1x4x2"]["specs"]
    # embed -> fsdp, heads / kv_heads / mlp / vocab -> tensor (models/sharding.py DEFAULT_RULES)
    assert specs["['layers']['attn']['q_proj']['kernel']"] == str(P(None, "fsdp", "tensor", None))
    assert specs["['layers']['attn']['k_proj']['kernel']"] == str(P(None, "fsdp", "tensor", None))
    assert specs["['layers']['mlp']['down_proj']['kernel']"] == str(P(None, "tensor", "fsdp"))
    assert specs["['embed']['embedding']"] == str(P("tensor", "fsdp"))
    assert results["2x4x1"]["specs"]["['layers']['mlp']['gate_proj']['kernel']"] == str(P(None, "fsdp", None))
