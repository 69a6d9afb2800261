"""Hugging Face folders: exact round trips (single and sharded) and errors that name the problem."""
import json

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from alignx_jax.interop import from_pretrained, load_hf, load_native, save_hf, save_native


def _logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


TOKENS = np.random.default_rng(0).integers(0, 300, (2, 17))


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 40_000])
def test_round_trip_hf_ours_hf(hf_model_dir, tmp_path, max_shard_bytes):
    kind, model, folder = hf_model_dir
    params, config = load_hf(folder)
    out = save_hf(params, config, tmp_path / "export", max_shard_bytes=max_shard_bytes)
    sharded = (out / "model.safetensors.index.json").is_file()
    assert sharded == (max_shard_bytes < 2**20)
    if sharded:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(model)
    np.testing.assert_allclose(_logits(reloaded, TOKENS), _logits(model, TOKENS), atol=1e-5, rtol=0)
    # The weights themselves come back bit for bit.
    original, back = model.state_dict(), reloaded.state_dict()
    assert set(original) == set(back)
    for key in original:
        torch.testing.assert_close(back[key], original[key], rtol=0, atol=0, msg=key)


def test_import_of_a_sharded_transformers_checkpoint(tmp_path, hf_model_factory):
    model = hf_model_factory("llama", seed=3)
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    params, config = load_hf(tmp_path)
    from alignx_jax.models import llama

    ours = np.asarray(llama.forward(params, TOKENS.astype(np.int32), config))
    np.testing.assert_allclose(ours, _logits(model, TOKENS), atol=1e-4, rtol=1e-4)


def test_transformers_5_rope_parameters_and_4x_rope_scaling_read_alike(hf_model_dir, tmp_path):
    kind, _, folder = hf_model_dir
    hf = json.loads((folder / "config.json").read_text())
    _, config = load_hf(folder)
    if "rope_parameters" in hf:  # 5.x layout -> 4.x layout
        rope = hf.pop("rope_parameters")
        hf["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            hf["rope_scaling"] = rope
    else:  # 4.x layout -> 5.x layout
        hf["rope_parameters"] = {"rope_theta": hf.pop("rope_theta"), **(hf.pop("rope_scaling", None) or {"rope_type": "default"})}
    (folder / "config.json").write_text(json.dumps(hf))
    _, rewritten = load_hf(folder)
    assert rewritten == config
    assert (config.rope_scaling is not None) == (kind == "llama")


def test_native_folder_round_trip_and_from_pretrained(hf_model_dir, tmp_path):
    _, model, folder = hf_model_dir
    params, config = load_hf(folder)
    save_native(params, config, tmp_path / "ours")
    restored, restored_config = load_native(tmp_path / "ours")
    assert restored_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, restored)
    loaded = from_pretrained(tmp_path / "ours")
    np.testing.assert_allclose(np.asarray(loaded(TOKENS)), _logits(model, TOKENS), atol=1e-4, rtol=1e-4)


# ---- errors -------------------------------------------------------------------------------------

def test_missing_files_are_named(hf_model_dir, tmp_path):
    _, _, folder = hf_model_dir
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        from_pretrained(tmp_path / "no_such_model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load_hf(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_hf(folder)


def test_missing_shard_is_named(tmp_path, hf_model_factory):
    hf_model_factory("qwen2").save_pretrained(tmp_path, max_shard_size="50KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_hf(tmp_path)


def test_unsupported_architecture_is_named(hf_model_dir):
    _, _, folder = hf_model_dir
    hf = json.loads((folder / "config.json").read_text())
    hf["model_type"], hf["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
        load_hf(folder)


def test_tensor_of_the_wrong_shape_is_named(hf_model_dir):
    _, _, folder = hf_model_dir
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    key = "model.layers.1.mlp.up_proj.weight"
    tensors[key] = tensors[key][:-1]
    safetensors.numpy.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"tensor '{key}' has shape \(95, 64\), expected \(96, 64\)"):
        load_hf(folder)


def test_missing_and_unexpected_tensors_are_named(hf_model_dir):
    _, _, folder = hf_model_dir
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.extra.weight"] = tensors.pop("model.layers.0.self_attn.k_proj.weight")
    safetensors.numpy.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match="missing tensor.*model.layers.0.self_attn.k_proj.weight"):
        load_hf(folder)
