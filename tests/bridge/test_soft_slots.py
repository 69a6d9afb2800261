"""Soft preference tokens in packed rows: the PBA layout around K slots, `soft_slots` in the batch,
`llama.forward(input_embeddings=...)`, and scoring that puts each pair's soft tokens in its slots."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import data, kernels
from alignx_jax.models import llama, scoring

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "train"))
from conftest import ByteTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    config = llama.LlamaConfig.tiny(num_layers=2, hidden_size=32, intermediate_size=64)
    return config, llama.init_params(config, jax.random.key(3))


def soft_pair(tok, prompt, k, source=0, max_length=512):
    fmt = data.PromptFormat(kind="pba", soft_tokens=k)
    record = {"prompt": prompt, "chosen": "yes", "rejected": "no!", "Preference Direction": [0.5] * 90,
              "User-Generated Content": None, "Pair-wise Comparative Feedback": None, "Demographic Information": ""}
    pair, _ = data.encode_record(record, source, tokenizer=tok, prompt_format=fmt, seed=0, max_length=max_length)
    return pair


def test_slots_sit_where_the_profile_text_goes(official_labels, tok):
    pair = soft_pair(tok, "Any advice?", 3)
    text = data.chat_text(tok, data.pba_prompt("Any advice?", data.soft_profile(3), evaluation=False))
    before, after = text.split(data.soft_profile(3))
    assert pair.slots.tolist() == [1 + len(tok.encode(before)) + k for k in range(3)]
    assert pair.prompt[pair.slots].tolist() == [tok.eos_token_id] * 3
    assert pair.prompt.tolist() == [1] + tok.encode(before) + [2, 2, 2] + tok.encode(after)
    plain = data.encode_record({"prompt": "Any advice?", "chosen": "yes", "rejected": "no!", "profile": "Young"}, 0,
                               tokenizer=tok, prompt_format=data.PromptFormat(kind="pba", profile="precomputed"),
                               seed=0, max_length=512)[0]
    assert plain.slots is None
    with pytest.raises(ValueError, match="soft_tokens must be >= 0, and > 0 only with kind 'pba'"):
        data.PromptFormat(kind="ica", soft_tokens=2)


def test_packed_rows_carry_soft_slots_and_plain_rows_do_not(tok):
    pairs = [soft_pair(tok, "Any advice?", 2, 0), soft_pair(tok, "What now?", 2, 1), soft_pair(tok, "Hm?", 2, 2)]
    batch = data.pack_rows([pairs[:2], pairs[2:]], seq_len=512, num_pair_slots=4)
    assert batch.soft_slots.shape == batch.tokens.shape and "soft_slots" in batch.as_dict()
    start = pairs[0].packed_length
    assert batch.soft_slots[0, pairs[0].slots].tolist() == [0, 1]
    assert batch.soft_slots[0, start + pairs[1].slots].tolist() == [0, 1]
    assert batch.pair_ids[0, start + pairs[1].slots].tolist() == [1, 1]
    assert batch.pair_ids[1, pairs[2].slots].tolist() == [2, 2]
    assert (batch.soft_slots >= 0).sum() == 6
    two = data.pack_two_rows(pairs, seq_len=256)
    assert (two.soft_slots >= 0).sum() == 12  # the prompt is in both rows
    plain = data.EncodedPair(np.array([1, 5, 6], np.int32), np.array([7, 2], np.int32), np.array([8, 2], np.int32))
    assert data.pack_rows([[plain]], seq_len=16).soft_slots is None
    # A left-truncated prompt loses the slots it cut (marked -1), keeps the others at their new place.
    whole = soft_pair(tok, "x" * 40, 3)
    cut = soft_pair(tok, "x" * 40, 3, max_length=len(whole.prompt) + 9 - 20)  # 20 prompt tokens too many
    assert len(cut.prompt) < len(whole.prompt) and cut.prompt[0] == 1
    shift = len(whole.prompt) - len(cut.prompt)
    assert cut.slots.tolist() == (whole.slots - shift).tolist() and (cut.prompt[cut.slots] == 2).all()


def test_input_embeddings_of_the_token_lookup_equal_the_plain_forward(model):
    config, params = model
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 500, (2, 9)), jnp.int32)
    plain = llama.forward(params, tokens, config)
    via = llama.forward(params, tokens, config, input_embeddings=llama.embed_tokens(params, tokens, config))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(via))


def test_scoring_puts_each_pairs_soft_tokens_in_its_slots(tok, model):
    config, params = model
    pairs = [soft_pair(tok, "Any advice?", 2, 0), soft_pair(tok, "What now?", 2, 1), soft_pair(tok, "Hm?", 2, 2)]
    batch = data.pack_rows([pairs[:2], pairs[2:]], seq_len=512, num_pair_slots=4)
    arrays = {k: jnp.asarray(v) for k, v in batch.as_dict().items()}
    length = kernels.bucket_length(scoring.scored_token_count(batch.as_dict()), (64,))
    score = jax.jit(scoring.pair_logprobs, static_argnames=("config", "num_pairs", "scored_length"))
    soft = jnp.asarray(np.random.default_rng(1).standard_normal((4, 2, 32)) * 0.1, jnp.float32)
    got = score(params, config, arrays, num_pairs=4, scored_length=length, soft_tokens=soft)
    # The definition: full logits of the dense-mask forward with the slot embeddings replaced by hand.
    x = np.asarray(llama.embed_tokens(params, arrays["tokens"], config)).copy()
    for b, t in zip(*np.nonzero(batch.soft_slots >= 0)):
        x[b, t] = np.asarray(soft)[batch.pair_ids[b, t], batch.soft_slots[b, t]]
    mask = data.attention_mask(batch.segment_ids, batch.roles, batch.positions)
    logits = llama.forward(params, arrays["tokens"], config, positions=arrays["positions"],
                           attention_mask=jnp.asarray(mask), input_embeddings=jnp.asarray(x))
    logp = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), arrays["targets"][..., None], -1)[..., 0])
    np.testing.assert_allclose(np.asarray(got.chosen), data.pair_sums(logp, batch.chosen_mask, batch.pair_ids, 4),
                               atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.rejected), data.pair_sums(logp, batch.rejected_mask, batch.pair_ids, 4),
                               atol=1e-4, rtol=1e-5)
    # Soft tokens equal to the slot token's own embedding score like no soft tokens at all.
    eos = np.asarray(params["embed"]["embedding"])[2]
    same = score(params, config, arrays, num_pairs=4, scored_length=length,
                 soft_tokens=jnp.broadcast_to(jnp.asarray(eos), (4, 2, 32)))
    plain = score(params, config, arrays, num_pairs=4, scored_length=length)
    np.testing.assert_allclose(np.asarray(same.chosen), np.asarray(plain.chosen), atol=1e-5)
    # Gradients reach the soft tokens of the scored pairs, and only theirs.
    grad = jax.grad(lambda s: jnp.sum(scoring.pair_logprobs(params, config, arrays, num_pairs=4, scored_length=length,
                                                            soft_tokens=s).chosen))(soft)
    norms = np.linalg.norm(np.asarray(grad).reshape(4, -1), axis=1)
    assert (norms[:3] > 0).all() and norms[3] == 0 and np.isfinite(norms).all()
