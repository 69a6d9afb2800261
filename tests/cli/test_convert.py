"""`alignx convert`: HF -> ours -> HF is exact; gguf-to-hf writes a folder transformers loads."""
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from alignx_jax.cli import main


def test_hf_to_jax_to_hf_is_exact(hf_model_dir, tmp_path):
    _, model, folder = hf_model_dir
    assert main(["convert", "hf-to-jax", str(folder), str(tmp_path / "ours")]) == 0
    assert main(["convert", "jax-to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    original = safetensors.numpy.load_file(folder / "model.safetensors")
    back = safetensors.numpy.load_file(tmp_path / "back" / "model.safetensors")
    expected_keys = set(original) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    assert set(back) == expected_keys
    for key, value in back.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


def test_convert_errors_exit_with_a_message(tmp_path, capsys):
    assert main(["convert", "hf-to-jax", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "missing config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["convert", "sideways", "a", "b"])


def test_gguf_to_hf_embedded_loads_in_transformers(tmp_path):
    assert main(["convert", "gguf-to-hf", str(tmp_path / "smol")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "smol").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "smol")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    from alignx_jax.interop import from_pretrained

    ours = from_pretrained("smollm2-135m-instruct")
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids.numpy())), expected, atol=1e-3)
