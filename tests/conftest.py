"""Shared test set-up: CPU devices for sharding tests, and the optional ../shared data."""
import os
import pathlib

# Several host devices so sharded code paths run on a CPU-only machine; set before jax loads.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """`../shared/data` beside the checkout; tests that need it skip on a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (fresh clone): nothing to read")
    return SHARED_DATA


def make_hf_model(kind: str, seed: int = 0):
    """A tiny random transformers model with non-trivial weights (norms and biases randomized too).

    kind 'llama': llama3 rope scaling, GQA 4:2, untied embeddings.
    kind 'qwen2': q/k/v bias, tied embeddings, GQA 4:1.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                  initializer_range=0.1, attn_implementation="eager")
    if kind == "llama":
        config = transformers.LlamaConfig(
            num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10_000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **common)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6,
                                          use_sliding_window=False, **common)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def hf_model_factory():
    return make_hf_model


@pytest.fixture(params=["llama", "qwen2"])
def hf_model_dir(request, tmp_path_factory):
    """(kind, transformers model, folder it was saved to with save_pretrained)."""
    model = make_hf_model(request.param)
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(folder)
    return request.param, model, folder


@pytest.fixture
def official_labels():
    """Skips a test that spells official preference labels when no vocabulary file is there to read
    (`preferences.vocabulary_path()`: `$ALIGNX_PREFERENCE_DIMENSIONS` or ../shared/data)."""
    from alignx_jax.preferences import vocabulary_path

    if vocabulary_path() is None:
        pytest.skip("no preference vocabulary file (../shared/data absent): dimensions are named by index")
