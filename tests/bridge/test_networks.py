"""The encoder and the bridge are pure functions: jit equals eager, vmap equals the batch, masked
items change nothing, no item gives the learned empty vector, the loss is the formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import bridge
from alignx_jax import preferences as prefs
from alignx_jax.models import llama

B, M, L = 3, 5, 12


@pytest.fixture(scope="module")
def setup():
    config = llama.LlamaConfig.tiny(num_layers=2, hidden_size=32, intermediate_size=64)
    params = llama.init_params(config, jax.random.key(0))
    layer = 1
    backbone, backbone_config = bridge.backbone_slice(params, layer), config.replace(num_layers=layer)
    bconfig = bridge.BridgeConfig(backbone_size=32, model_size=32, encoder_layer=layer, persona_size=16,
                                  hidden_size=24, soft_tokens=3)
    bparams = bridge.init_params(bconfig, jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 500, (B, M, 2, L)).astype(np.int32)
    lengths = rng.integers(1, L + 1, (B, M, 2))
    token_mask = np.arange(L) < lengths[..., None]
    item_types = rng.integers(0, 3, (B, M)).astype(np.int32)
    item_mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)  # 3, 1 and 0 items
    return dict(config=config, params=params, backbone=backbone, backbone_config=backbone_config, bparams=bparams,
                tokens=tokens, token_mask=token_mask, item_types=item_types, item_mask=item_mask)


def personas(s, tokens=None, token_mask=None, item_types=None, item_mask=None):
    return bridge.encode_personas(s["bparams"]["encoder"], s["backbone"], s["backbone_config"],
                                  s["tokens"] if tokens is None else tokens,
                                  s["token_mask"] if token_mask is None else token_mask,
                                  s["item_types"] if item_types is None else item_types,
                                  s["item_mask"] if item_mask is None else item_mask)


def test_backbone_slice_gives_the_hidden_states_after_that_layer(setup):
    s = setup
    tokens = jnp.asarray(s["tokens"][0, :, 0])
    full = llama.forward(s["params"], tokens, s["config"], return_hidden=True)
    sliced = llama.forward(s["backbone"], tokens, s["backbone_config"], return_hidden=True)
    assert sliced.shape == full.shape and not np.allclose(sliced, full)
    two = llama.forward(bridge.backbone_slice(s["params"], 2), tokens, s["config"], return_hidden=True)
    np.testing.assert_allclose(np.asarray(two), np.asarray(full), atol=1e-6)


def test_encoder_and_bridge_jit_equal_eager_and_vmap_equals_the_batch(setup):
    s = setup
    eager = personas(s)
    jitted = jax.jit(lambda *a: personas(s, *a))(s["tokens"], s["token_mask"], s["item_types"], s["item_mask"])
    assert eager.shape == (B, 16)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-6)
    one = lambda t, tm, it, im: personas(s, t[None], tm[None], it[None], im[None])[0]  # noqa: E731
    mapped = jax.vmap(one)(s["tokens"], s["token_mask"], s["item_types"], s["item_mask"])
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=1e-5, atol=1e-6)
    logits = bridge.bridge_logits(s["bparams"]["bridge"], eager)
    assert logits.shape == (B, prefs.NUM_DIMENSIONS, 3)
    np.testing.assert_allclose(np.asarray(jax.jit(bridge.bridge_logits)(s["bparams"]["bridge"], eager)),
                               np.asarray(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(bridge.bridge_logits, (None, 0))(s["bparams"]["bridge"], eager)),
                               np.asarray(logits), rtol=1e-5, atol=1e-6)
    tokens = bridge.soft_tokens(s["bparams"]["soft"]["table"], jax.nn.softmax(logits, -1))
    assert tokens.shape == (B, 3, 32) and np.isfinite(np.asarray(tokens)).all()


def test_padding_items_and_tokens_change_nothing(setup):
    s = setup
    base = np.asarray(personas(s))
    rng = np.random.default_rng(1)
    junk = np.where(s["token_mask"], s["tokens"], rng.integers(3, 500, s["tokens"].shape)).astype(np.int32)
    junk = np.where(s["item_mask"][..., None, None], junk, rng.integers(3, 500, s["tokens"].shape)).astype(np.int32)
    types = np.where(s["item_mask"], s["item_types"], 2).astype(np.int32)
    np.testing.assert_allclose(np.asarray(personas(s, tokens=junk, item_types=types)), base, rtol=1e-5, atol=1e-6)
    # The user with 3 items encodes the same with its items alone (M = 3, no padding).
    alone = personas(s, s["tokens"][:1, :3], s["token_mask"][:1, :3], s["item_types"][:1, :3], s["item_mask"][:1, :3])
    np.testing.assert_allclose(np.asarray(alone)[0], base[0], rtol=1e-5, atol=1e-6)
    # No item: the learned empty vector.
    np.testing.assert_array_equal(base[2], np.asarray(s["bparams"]["encoder"]["empty"]))


def test_class_balanced_ce_is_the_formula_and_weights_balance_the_classes_per_dimension():
    labels = np.array([[1] * 88 + [0, 2]] * 3 + [[1] * 88 + [1, 0]])
    weights = bridge.class_weights(labels)
    assert weights.shape == (90, 3)
    # Within each dimension, the classes it shows count equally (weight x count = N / classes shown).
    np.testing.assert_allclose(weights[0], [0, 1, 0])  # never marked: neutral only, weight 1
    np.testing.assert_allclose(weights[88], [4 / (2 * 3), 4 / (2 * 1), 0], rtol=1e-6)  # 3 negative, 1 neutral
    np.testing.assert_allclose(weights[89], [4 / (2 * 1), 0, 4 / (2 * 3)], rtol=1e-6)  # 1 negative, 3 positive
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 90, 3)).astype(np.float32)
    got = np.asarray(bridge.class_balanced_ce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    w = weights[np.arange(90)[None], labels]
    want = np.mean(w * -np.take_along_axis(logp, labels[..., None], -1)[..., 0], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # One weight per class, the same for every dimension, is the [3] form.
    flat = np.array([2.0, 0.5, 3.0], np.float32)
    got = np.asarray(bridge.class_balanced_ce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(flat)))
    want = np.mean(flat[labels] * -np.take_along_axis(logp, labels[..., None], -1)[..., 0], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_macro_f1_over_marked_dimensions_and_the_majority_baseline():
    true = np.ones((4, 90), int)
    true[0, 3], true[1, 3], true[2, 5] = 2, 0, 2
    assert bridge.marked_dimensions(true).tolist() == [3, 5]
    assert bridge.macro_f1(true, true) == 1.0
    majority = np.broadcast_to(bridge.majority_classes(true), true.shape)
    # On dims 3 and 5 (8 entries: 3 marked, 5 neutral) the baseline says neutral everywhere:
    # F1_neutral = 2*5 / (2*5 + 3) and the two mark classes score 0.
    assert bridge.macro_f1(majority, true) == pytest.approx(np.mean([0, 10 / 13, 0]))
    report = bridge.bridge_report(true, true, true)
    assert report["macro_f1"] == 1.0 and report["marked_dimensions"] == 2
