"""pair_logprobs: the fused, structured-mask scoring path equals full logits under the dense mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import data, kernels
from alignx_jax.models import llama, scoring


def random_pair(rng, prompt_len, chosen_len, rejected_len):
    ids = lambda n: rng.integers(3, 500, n).astype(np.int32)  # noqa: E731
    return data.EncodedPair(np.concatenate([[1], ids(prompt_len - 1)]).astype(np.int32),
                            np.append(ids(chosen_len - 1), 2).astype(np.int32),
                            np.append(ids(rejected_len - 1), 2).astype(np.int32))


@pytest.fixture(scope="module")
def model():
    config = llama.LlamaConfig.tiny(num_heads=6, num_kv_heads=2, head_dim=16)  # GQA 3:1
    return config, llama.init_params(config, jax.random.key(1))


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    return [random_pair(rng, 11, 5, 4), random_pair(rng, 4, 3, 7), random_pair(rng, 13, 1, 2), random_pair(rng, 6, 9, 3)]


def dense_reference(batch, params, config):
    """Summed response log-probs from full logits and data.attention_mask (the definition)."""
    mask = data.attention_mask(batch.segment_ids, batch.roles, batch.positions)
    logits = llama.forward(params, jnp.asarray(batch.tokens), config, positions=jnp.asarray(batch.positions),
                           attention_mask=jnp.asarray(mask))
    logp = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.asarray(batch.targets)[..., None], -1)[..., 0])
    n = len(batch.pair_valid)
    return (data.pair_sums(logp, batch.chosen_mask, batch.pair_ids, n),
            data.pair_sums(logp, batch.rejected_mask, batch.pair_ids, n))


def score(batch, params, config, **kw):
    arrays = {k: jnp.asarray(v) for k, v in batch.as_dict().items()}
    length = kernels.bucket_length(scoring.scored_token_count(batch.as_dict()), (16, 32, 64, 128))
    fn = jax.jit(scoring.pair_logprobs, static_argnames=("config", "num_pairs", "scored_length", "differentiable",
                                                        "trunk_layers"))
    return fn(params, config, arrays, num_pairs=len(batch.pair_valid), scored_length=length, **kw)


@pytest.mark.parametrize("layout", ["packed", "two_rows"])
def test_pair_logprobs_equal_full_logits_under_the_dense_mask(layout, model, pairs):
    config, params = model
    if layout == "packed":  # row 0: three pairs; row 1: one pair and padding; one empty pair slot
        batch = data.pack_rows([pairs[:3], pairs[3:]], seq_len=72, num_pair_slots=5)
    else:
        batch = data.pack_two_rows(pairs, seq_len=24, num_pair_slots=5)
    got = score(batch, params, config)
    want_chosen, want_rejected = dense_reference(batch, params, config)
    np.testing.assert_allclose(np.asarray(got.chosen), want_chosen, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.rejected), want_rejected, atol=1e-4, rtol=1e-5)
    counts = [len(p.chosen) for p in pairs] + [0]
    assert np.asarray(got.chosen_tokens).tolist() == counts
    assert np.asarray(got.rejected_tokens).tolist() == [len(p.rejected) for p in pairs] + [0]


def test_forward_only_scoring_has_the_same_values_and_no_gradient(model, pairs):
    config, params = model
    batch = data.pack_rows([pairs[:2], pairs[2:]], seq_len=48)
    arrays = {k: jnp.asarray(v) for k, v in batch.as_dict().items()}

    def total(p, differentiable):
        out = scoring.pair_logprobs(p, config, arrays, num_pairs=4, scored_length=64, differentiable=differentiable)
        return jnp.sum(out.chosen - out.rejected)

    value, grads = jax.value_and_grad(total)(params, True)
    frozen_value, frozen_grads = jax.value_and_grad(total)(params, False)
    np.testing.assert_allclose(frozen_value, value, rtol=1e-6)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(frozen_grads))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["embed"]["embedding"]).max()) > 0


def test_scoring_above_a_trunk_equals_the_whole_model(model, pairs):
    """The first layer's output (`trunk_states`) fed to the layers above gives the whole model's
    scores, bit for bit up to float reassociation; and `layer_slice` refuses a non-slice."""
    config, params = model
    batch = data.pack_rows([pairs[:3], pairs[3:]], seq_len=72, num_pair_slots=5)
    arrays = {k: jnp.asarray(v) for k, v in batch.as_dict().items()}
    trunk = scoring.trunk_states(params, config, arrays, 1)
    assert trunk.shape == (2, 72, config.hidden_size)
    whole, above = score(batch, params, config), score(batch, params, config, trunk=trunk, trunk_layers=1)
    np.testing.assert_allclose(np.asarray(above.chosen), np.asarray(whole.chosen), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(above.rejected), np.asarray(whole.rejected), atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[1, 1\) is not a slice of 2 layers"):
        llama.layer_slice(params, config, 1, 1)
