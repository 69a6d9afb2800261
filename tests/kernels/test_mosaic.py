"""The TPU kernels compile under Mosaic at Llama-3.1-8B shapes for a v5p chip (issue 22, must show 4),
on this CPU machine: libtpu's compiler and an abstract v5p device (`jax.experimental.topologies`).
Skipped without libtpu (pip install 'alignx_jax[tpu]'); slow (minutes on 2 shared cores).

The VMEM arithmetic that picks the tiles is checked without libtpu."""
import pytest

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from alignx_jax import kernels
from alignx_jax.kernels import _pallas_tpu

D, V, H, HEADS, KV_HEADS, T = 4096, 128256, 128, 32, 8, 8192


def test_tiles_fit_the_chips_vmem():
    # The untuned default tile (256 x 512) at D = 4096 in bf16: the dw kernel holds ~28 MiB, over
    # Mosaic's default scoped limit; chosen tiles fit 60% of the chip's VMEM.
    assert 26 * 2**20 < _pallas_tpu.tile_vmem_bytes(256, 512, D, 2) < 30 * 2**20
    for kind, vmem in _pallas_tpu.VMEM_BYTES.items():
        bn, bv = _pallas_tpu.choose_tiles(D, 2, vmem)
        assert _pallas_tpu.tile_vmem_bytes(bn, bv, D, 2) <= 0.6 * vmem, kind
        assert bn % 8 == 0 and bv % 128 == 0
    assert _pallas_tpu.choose_tiles(D, 2, 16 * 2**20) < _pallas_tpu.choose_tiles(D, 2, 64 * 2**20)


@pytest.fixture(scope="module")
def v5p_mesh():
    pytest.importorskip("libtpu", reason="libtpu (pip install 'alignx_jax[tpu]') is not installed")
    import os

    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: share libtpu's lockfile

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5:2x2x1", chip_config_name="megacore",
                                           chips_per_host_bounds=(2, 2, 1), num_slices=1,
                                           wrap=(False, False, False)).devices
    assert devices[0].device_kind == "TPU v5"
    return jax.sharding.Mesh(np.asarray(devices[:1]).reshape(1), ("x",))


def _compile(mesh, fn, *shapes):
    args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, P())) for s in shapes]
    with jax.set_mesh(mesh):
        return jax.jit(fn).lower(*args).compile()


@pytest.mark.slow
def test_logprob_kernel_compiles_under_mosaic_at_8b_shapes(v5p_mesh):
    """Forward and both backward kernels (d hidden, d w) of the Pallas TPU log-prob kernel, one 8192-token
    row's scored tokens, D 4096, V 128256, bf16; tiles and vmem_limit_bytes from the v5p's VMEM."""
    def loss(hidden, w, labels):
        logp, _ = kernels.token_logprobs(hidden, w, labels, impl="pallas_tpu")
        return logp.sum()

    shapes = (jax.ShapeDtypeStruct((T, D), jnp.bfloat16), jax.ShapeDtypeStruct((D, V), jnp.bfloat16),
              jax.ShapeDtypeStruct((T,), jnp.int32))
    compiled = _compile(v5p_mesh, jax.grad(loss, argnums=(0, 1)), *shapes)
    text = compiled.as_text()
    assert text.count('custom_call_target="tpu_custom_call"') == 3  # forward, dx, dw
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # The kernels' CostEstimate reaches XLA: forward 2NDV + two backward kernels 4NDV each.
    assert cost["flops"] >= 10 * T * D * V * 0.99


@pytest.mark.slow
def test_splash_attention_compiles_under_mosaic_on_packed_pairs(v5p_mesh):
    """Splash attention, forward and backward, on one packed 8192-token row (4 pairs sharing prompts),
    Llama-3.1-8B heads (32 query, 8 kv, head dim 128), bf16."""
    from alignx_jax.data import _packing

    seg = np.zeros((1, T), np.int32)
    roles = np.zeros((1, T), np.int32)
    pos = np.zeros((1, T), np.int32)
    quarter = T // 4
    for p in range(4):
        start = p * quarter
        seg[0, start:start + quarter] = p + 1
        roles[0, start:start + quarter // 2] = _packing.PROMPT
        roles[0, start + quarter // 2:start + 3 * quarter // 4] = _packing.CHOSEN
        roles[0, start + 3 * quarter // 4:start + quarter] = _packing.REJECTED
        pos[0, start:start + 3 * quarter // 4] = np.arange(3 * quarter // 4)
        pos[0, start + 3 * quarter // 4:start + quarter] = np.arange(quarter // 2, 3 * quarter // 4)

    def loss(q, k, v):
        out = kernels.attention(q, k, v, segment_ids=jnp.asarray(seg), roles=jnp.asarray(roles),
                                positions=jnp.asarray(pos), impl="splash")
        return out.astype(jnp.float32).sum()

    shapes = (jax.ShapeDtypeStruct((1, T, HEADS, H), jnp.bfloat16), jax.ShapeDtypeStruct((1, T, KV_HEADS, H), jnp.bfloat16),
              jax.ShapeDtypeStruct((1, T, KV_HEADS, H), jnp.bfloat16))
    compiled = _compile(v5p_mesh, jax.grad(loss, argnums=(0, 1, 2)), *shapes)
    assert "splash" in compiled.as_text()


def test_triton_tiles_come_from_the_gpus_shared_memory():
    """No GPU here: the budget is checked against the H100's 228 KiB and the measured failure."""
    from alignx_jax.kernels import _pallas_gpu

    h100 = _pallas_gpu.SHARED_MEMORY_BYTES["9.0"]
    assert h100 == 228 * 1024
    # The old untuned tile at SmolLM2's D = 576, fp32: the 475,136 B request measured on an H100.
    assert _pallas_gpu.tile_shared_bytes(64, 128, 576, 4) == 475_136
    bn, bv = _pallas_gpu.choose_tiles(576, 4, h100)
    assert _pallas_gpu.tile_shared_bytes(bn, bv, 576, 4) <= 0.9 * h100 and bv >= 16
    assert _pallas_gpu.choose_tiles(576, 2, h100) >= (bn, bv)  # bf16 tiles are at least as large
    assert _pallas_gpu.choose_tiles(4096, 2, h100) is None  # Llama's D: auto keeps the XLA kernel
