"""The embedded SmolLM2-135M-Instruct GGUF: our import equals transformers' own GGUF loader."""
import numpy as np
import pytest
import torch
import transformers

from alignx_jax.interop import embedded_gguf_path, from_pretrained, load_tokenizer
from alignx_jax.interop.gguf_file import unpermute_rotary
from alignx_jax.models import decoding


@pytest.fixture(scope="module")
def both():
    path = embedded_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                   torch_dtype=torch.float32).eval()
    return from_pretrained("smollm2-135m-instruct"), reference


@pytest.fixture(scope="module")
def chat_ids():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    messages = [{"role": "system", "content": "Generate a task-specific response based on user preferences."},
                {"role": "user", "content": "***Task***\n\nWhat makes a good weekend?\n\n***Response:***\n\n"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_embedded_logits_match_transformers(both, chat_ids):
    ours, reference = both
    assert ours.config.num_layers == 30 and ours.config.tie_word_embeddings
    with torch.no_grad():
        expected = reference(torch.tensor([chat_ids])).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(np.asarray([chat_ids]))), expected, atol=1e-3, rtol=0)


def test_embedded_greedy_20_tokens_match_transformers(both, chat_ids):
    ours, reference = both
    with torch.no_grad():
        expected = reference.generate(torch.tensor([chat_ids]), do_sample=False,
                                      max_new_tokens=20)[0, len(chat_ids):].tolist()
    ours_ids = ours.generate([chat_ids], decoding.Sampling(max_new_tokens=20))[0]
    # Both stop after EOS; this prompt yields 20 tokens without one.
    assert len(expected) == 20
    assert ours_ids == expected


def test_unpermute_inverts_llama_cpp_permute():
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute, transcribed.
    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.random.default_rng(0).normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(unpermute_rotary(permute(w, 3), 3), w)
    assert not np.array_equal(permute(w, 3), w)
