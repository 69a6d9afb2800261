"""Model parity with transformers (per layer and end to end), shapes of big presets, decoding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alignx_jax.interop import load_hf
from alignx_jax.models import decoding, llama


def _to_np(t):
    return t.detach().numpy()


@pytest.fixture
def imported(hf_model_dir):
    kind, model, folder = hf_model_dir
    params, config = load_hf(folder)
    return kind, model, params, config


def _tokens(seed, b, t, vocab):
    return np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int32)


def test_logits_match_transformers(imported):
    kind, model, params, config = imported
    assert config.tie_word_embeddings == (kind == "qwen2")
    assert config.attention_bias == (kind == "qwen2")
    assert (config.rope_scaling is not None) == (kind == "llama")
    tokens = _tokens(0, 2, 24, config.vocab_size)
    # Positions past original_max_position_embeddings=64 so that llama3 rope scaling matters.
    positions = np.broadcast_to(np.arange(100, 124, dtype=np.int32), (2, 24))
    with torch.no_grad():
        expected = _to_np(model(torch.tensor(tokens, dtype=torch.long),
                                position_ids=torch.tensor(positions, dtype=torch.long)).logits)
    ours = llama.forward(params, jnp.asarray(tokens), config, positions=jnp.asarray(positions))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=1e-4)


def test_rmsnorm_matches_transformers(imported):
    _, model, params, config = imported
    x = np.random.default_rng(1).normal(size=(2, 5, config.hidden_size)).astype(np.float32) * 3
    with torch.no_grad():
        expected = _to_np(model.model.norm(torch.tensor(x)))
    ours = llama.RMSNorm(config.rms_norm_eps).apply({"params": params["final_norm"]}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5, rtol=1e-5)


def _hf_rope(model, x_bnth, positions):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = model.model.rotary_emb(torch.tensor(x_bnth), torch.tensor(positions, dtype=torch.long))
    q, _ = apply_rotary_pos_emb(torch.tensor(x_bnth), torch.tensor(x_bnth), cos, sin)
    return _to_np(q), (cos, sin)


def test_rope_matches_transformers(imported):
    _, model, _, config = imported
    h = config.resolved_head_dim
    x = np.random.default_rng(2).normal(size=(2, config.num_heads, 7, h)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 50, 200, 511], [5, 6, 7, 8, 9, 10, 11]], np.int32)
    expected, _ = _hf_rope(model, x, positions)
    ours = llama.apply_rope(jnp.asarray(x.transpose(0, 2, 1, 3)), jnp.asarray(positions), llama.rope_inv_freq(config))
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), expected, atol=1e-5, rtol=1e-5)


def test_attention_matches_transformers_with_a_mask(imported):
    _, model, params, config = imported
    b, t = 2, 9
    x = np.random.default_rng(3).normal(size=(b, t, config.hidden_size)).astype(np.float32)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    # A non-causal pattern (a shared-prefix style block mask) checks that the mask is honoured as given.
    mask = np.tril(np.ones((t, t), bool))
    mask[6:, 3:6] = False
    mask = np.broadcast_to(mask, (b, t, t))
    _, (cos, sin) = _hf_rope(model, np.zeros((b, 1, t, config.resolved_head_dim), np.float32), positions)
    additive = torch.tensor(np.where(mask, 0.0, -1e9)[:, None].astype(np.float32))
    with torch.no_grad():
        expected = _to_np(model.model.layers[0].self_attn(torch.tensor(x), position_embeddings=(cos, sin),
                                                          attention_mask=additive)[0])
    layer0 = jax.tree.map(lambda a: a[0], params["layers"]["attn"])
    ours, _ = llama.Attention(config).apply({"params": layer0}, jnp.asarray(x), jnp.asarray(positions), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset, expected", [("llama3.1-8b", 8.03e9), ("llama3.1-70b", 70.6e9),
                                              ("smollm2-135m", 134.5e6), ("qwen2.5-0.5b", 494e6)])
def test_parameter_counts_without_allocating(preset, expected):
    config = llama.preset(preset)
    shapes = llama.param_shapes(config)  # jax.eval_shape: ShapeDtypeStructs, no buffers
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    assert llama.num_params(config) == pytest.approx(expected, rel=2e-3)


def test_every_parameter_has_logical_axes():
    config = llama.LlamaConfig.tiny(attention_bias=True)
    axes, shapes = llama.logical_axes(config), llama.param_shapes(config)
    for spec, shape in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                           jax.tree.leaves(shapes)):
        assert len(spec) == len(shape.shape) and all(spec)


def test_remat_and_bf16_compute_agree_with_fp32():
    config = llama.LlamaConfig.tiny()
    params = llama.init_params(config, jax.random.key(0))
    tokens = jnp.asarray(_tokens(4, 2, 16, config.vocab_size))
    loss = lambda p, c: jnp.mean(jax.nn.log_softmax(llama.forward(p, tokens, c))[..., 0])
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_plain, g_remat = grad(params, config), grad(params, config.replace(remat=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_plain, g_remat)
    bf16 = jax.jit(llama.forward, static_argnames="config")(params, tokens, config.replace(dtype="bfloat16"))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(llama.forward(params, tokens, config)), atol=0.1)


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        llama.LlamaConfig.tiny(num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
        llama.preset("gpt5")


# ---- decoding ---------------------------------------------------------------------------------

def _naive_greedy(params, config, prompt, n):
    """Re-run the full causal forward on the growing sequence (no cache), argmax, stop at EOS.

    The sequence is right-padded to one fixed length so the jitted forward compiles once; causal
    attention keeps the padding invisible to the positions read.
    """
    forward = jax.jit(llama.forward, static_argnames="config")
    seq = np.zeros((1, len(prompt) + n), np.int32)
    seq[0, :len(prompt)] = prompt
    out = []
    for step in range(n):
        logits = forward(params, jnp.asarray(seq), config)
        token = int(jnp.argmax(logits[0, len(prompt) + step - 1]))
        out.append(token)
        seq[0, len(prompt) + step] = token
        if token in config.eos_token_ids:
            break
    return out


def test_kv_cache_greedy_equals_naive_decoding_on_a_left_padded_batch():
    config = llama.LlamaConfig.tiny(eos_token_id=7)
    params = llama.init_params(config, jax.random.key(1))
    prompts = [[5, 9, 11, 200, 31], [42, 8], [300, 301, 302]]
    width = 5
    tokens = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):], mask[i, width - len(p):] = p, True
    out, lengths = decoding.generate(params, tokens, mask, jax.random.key(0), config=config,
                                     sampling=decoding.Sampling(max_new_tokens=12), pad_id=0)
    for i, p in enumerate(prompts):
        expected = _naive_greedy(params, config, p, 12)
        assert np.asarray(out[i, :lengths[i]]).tolist() == expected


def test_top_k_one_sampling_is_greedy():
    config = llama.LlamaConfig.tiny(eos_token_id=None)
    params = llama.init_params(config, jax.random.key(2))
    tokens, mask = jnp.asarray([[3, 4, 5, 6]], jnp.int32), jnp.ones((1, 4), bool)
    greedy, _ = decoding.generate(params, tokens, mask, jax.random.key(0), config=config,
                                  sampling=decoding.Sampling(max_new_tokens=8))
    sampled, _ = decoding.generate(params, tokens, mask, jax.random.key(9), config=config,
                                   sampling=decoding.Sampling(max_new_tokens=8, temperature=1.5, top_k=1))
    np.testing.assert_array_equal(greedy, sampled)


def test_filter_logits_keeps_top_k_and_the_minimal_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()
    assert kept(decoding.filter_logits(logits, 2, 1.0)) == [True, True, False, False, False]
    # Mass before each token: 0, .5, .7, .85, .95 -> top_p=0.7 keeps the first two (0.5+0.2 >= 0.7).
    assert kept(decoding.filter_logits(logits, 0, 0.7)) == [True, True, False, False, False]
    assert kept(decoding.filter_logits(logits, 0, 0.71)) == [True, True, True, False, False]
    with pytest.raises(ValueError, match="top_p"):
        decoding.Sampling(top_p=0.0)


# ---- packed rows through kernels.attention ------------------------------------------------------

def _pair(rng, prompt_len, chosen_len, rejected_len):
    from alignx_jax import data

    ids = lambda n: rng.integers(3, 500, n).astype(np.int32)  # noqa: E731
    return data.EncodedPair(np.concatenate([[1], ids(prompt_len - 1)]).astype(np.int32), ids(chosen_len),
                            ids(rejected_len))


def test_packed_rows_score_like_two_rows_and_the_dense_mask():
    """Three pairs in one 400-token row (several 128-tiles, skipped tiles between pairs) give the
    per-token log-probs of the plain two-row layout and of the dense-mask path within 1e-5."""
    from alignx_jax import data

    config = llama.LlamaConfig.tiny(num_heads=6, num_kv_heads=2, head_dim=16)  # GQA 3:1
    params = llama.init_params(config, jax.random.key(3))
    rng = np.random.default_rng(0)
    pairs = [_pair(rng, 90, 25, 20), _pair(rng, 120, 10, 40), _pair(rng, 50, 30, 12)]
    packed, plain = data.pack_rows([pairs], seq_len=400), data.pack_two_rows(pairs, seq_len=160)

    @functools.partial(jax.jit, static_argnames="dense")
    def logprobs(tokens, positions, segment_ids, roles, targets, dense=False):
        if dense:
            kw = dict(attention_mask=data.attention_mask(segment_ids, roles, positions))
        else:
            kw = dict(segment_ids=segment_ids, roles=roles)
        logits = llama.forward(params, tokens, config, positions=positions, **kw)
        return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]

    def scored(batch, dense=False):
        logp = np.asarray(logprobs(batch.tokens, batch.positions, batch.segment_ids, batch.roles, batch.targets,
                                   dense=dense))
        return [logp[getattr(batch, m) & (batch.pair_ids == p)] for p in range(3) for m in ("chosen_mask", "rejected_mask")]

    for got, two_rows, dense in zip(scored(packed), scored(plain), scored(packed, dense=True)):
        np.testing.assert_allclose(got, two_rows, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, dense, atol=1e-5, rtol=0)


def test_linear_keeps_dense_general_parameters():
    """The 2-D matmul layer declares DenseGeneral's parameters (names, shapes, init draw), so
    checkpoints and the interop table are unchanged."""
    import flax.linen as nn

    x = jnp.ones((2, 3, 8))
    ours = llama.Linear((4, 5), ("embed", "heads", "head_dim"), use_bias=True).init(jax.random.key(0), x)
    theirs = nn.DenseGeneral((4, 5), kernel_init=nn.initializers.normal(0.02)).init(jax.random.key(0), x)
    ours = nn.meta.unbox(ours)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
    np.testing.assert_array_equal(ours["params"]["kernel"], theirs["params"]["kernel"])
    y = llama.Linear((4, 5), ("embed", "heads", "head_dim"), use_bias=True).apply(ours, x)
    np.testing.assert_allclose(y, nn.DenseGeneral((4, 5)).apply(theirs, x), rtol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(llama.Linear((4, 5), ("a", "b", "c"), use_bias=True).apply(p, x) ** 2))(ours)
    want = jax.grad(lambda p: jnp.sum(nn.DenseGeneral((4, 5)).apply(p, x) ** 2))(theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), grads, want)
