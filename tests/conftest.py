"""Shared test set-up: CPU devices for sharding tests, and the optional ../shared data."""
import json
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


# ---- a training run's held-out scores (tests/evaluation/test_views.py, tests/cli/test_demo.py) ----

class WordTokenizer:
    """One token per word: the packer scores a response's ids plus EOS, so "a b c" counts 4 tokens."""

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return text.split()


def _row(index, record, *, policy, start):
    """A held-out score row; `policy` / `start`: (chosen, rejected) log-probs; the reference is the start."""
    return {"index": index, "persona": record["persona"], "chosen": "a b c", "rejected": "a",
            "policy_chosen_logp": policy[0], "policy_rejected_logp": policy[1],
            "ref_chosen_logp": start[0], "ref_rejected_logp": start[1],
            "start_chosen_logp": start[0], "start_rejected_logp": start[1]}


@pytest.fixture
def word_tokenizer():
    return WordTokenizer()


@pytest.fixture
def heldout_run_dir(tmp_path):
    """A training run's held-out files (heldout.json, heldout_scores.jsonl) with hand-made scores where
    the summed and per-token views disagree: two synthetic personas and one P-Soups persona."""
    from alignx_jax import data, preferences

    records = data.synthetic_records(2, seed=0, records_per_user=1, history_items=1)
    records.append(dict(records[0], **{preferences.GROUND_TRUTH_PERSONA: "Be friendly."}))
    data.write_records(records, tmp_path / "heldout.json")
    personas = [{"persona": "A"}, {"persona": "B"}, {"persona": "Be friendly."}]
    rows = [
        # chosen 4 tokens, rejected 2. After: sum -8 < -6 (wrong), per token -2 > -3 (right).
        _row(0, personas[0], policy=(-8.0, -6.0), start=(-12.0, -4.0)),  # start: -3 < -2 per token (wrong)
        # After: sum -5 > -6 (right), per token -1.25 > -3 (right); start: -4 > -10 (right), -1 > -5.
        _row(1, personas[1], policy=(-5.0, -6.0), start=(-4.0, -10.0)),
        _row(2, personas[2], policy=(-1.0, -9.0), start=(-9.0, -1.0)),
    ]
    (tmp_path / "heldout_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path
