"""Sharding rules: params load straight into a mesh sharding and compute the same logits."""
import jax
import numpy as np
import pytest

from alignx_jax.interop import load_hf
from alignx_jax.models import llama, sharding


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 1, "fsdp": len(jax.devices()) // 2, "tensor": 2}
    with pytest.raises(ValueError, match="need 12 devices"):
        sharding.make_mesh(data=3, fsdp=2, tensor=2)


def test_import_straight_into_a_sharding(hf_model_dir):
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 host devices (tests/conftest.py sets XLA_FLAGS)")
    _, _, folder = hf_model_dir
    params, config = load_hf(folder)
    mesh = sharding.make_mesh(fsdp=2, tensor=2)
    shardings = sharding.param_shardings(config, mesh)
    sharded, _ = load_hf(folder, shardings=shardings)
    q = sharded["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (config.num_layers, config.hidden_size // 2, config.num_heads // 2,
                                                  config.resolved_head_dim)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, 11)).astype(np.int32)
    forward = jax.jit(llama.forward, static_argnames="config")
    np.testing.assert_allclose(np.asarray(forward(sharded, tokens, config)), np.asarray(forward(params, tokens, config)),
                               atol=1e-5, rtol=1e-5)


def test_indivisible_axes_stay_replicated():
    mesh = sharding.make_mesh(fsdp=1, tensor=2, devices=jax.devices()[:2])
    specs = sharding.param_shardings(llama.LlamaConfig.smollm2_135m(), mesh)
    # 9 query heads and 3 kv heads do not split in two; the MLP width (1536) does.
    assert specs["layers"]["attn"]["q_proj"]["kernel"].spec[2] is None
    assert specs["layers"]["mlp"]["up_proj"]["kernel"].spec[2] == "tensor"
