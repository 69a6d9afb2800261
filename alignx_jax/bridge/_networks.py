"""The persona encoder and the learned preference bridge: pure functions, params in, arrays out.

    items   [B, M, 2, L] token ids: M persona items (UGC comment, earlier pair, demographic text),
            each as two views (UGC: comment, post; pair: chosen, rejected; demo: text, empty)
    h       [B, M, 2, D] = masked mean over tokens of the backbone's hidden states after
            `layer` decoder layers (final-normed)                          `item_features`
    u_m     = gelu(W_{type m} [h_m0; h_m1] + b_{type m})                   [B, M, P]
    a_m     = softmax_m(q . (K u_m) / sqrt(P)) over real items             attention pooling
    persona = sum_m a_m (V u_m)   (no item: the learned `empty` vector)    [B, P]   `encode_personas`
    logits  = W2 gelu(W1 persona + b1) + b2                                [B, 90, 3]  `bridge_logits`
              (hidden_size 0: logits = W2 persona + b2, linear, so that the logits are the
              attention-weighted mean of per-item logits, like the official rule's mean of items)

The type-specific projection of both views lets a pair item read the difference between what the
user chose and what they rejected. Every function is jit- and vmap-able and keeps no state.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import preferences as prefs
from alignx_jax.bridge import _rules
from alignx_jax.models import llama

UGC, PAIR, DEMO = 0, 1, 2  # item types
ITEM_TYPES = ("ugc", "pair", "demo")
VIEWS = 2
MAX_ITEMS = 16


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    """Sizes of the encoder, the bridge and the soft-token table.

    backbone_size: D of the backbone whose hidden states encode the items; encoder_layer: how many
    of its decoder layers run; persona_size: P; hidden_size: the bridge MLP's width (0: a linear
    bridge); soft_tokens: K virtual tokens of model_size (the policy's D) each; soft_select: how a
    distribution makes them (`soft_tokens`: "sum" or "top_dimensions").
    """

    backbone_size: int
    model_size: int
    encoder_layer: int = 1
    persona_size: int = 128
    hidden_size: int = 256
    soft_tokens: int = 4
    soft_select: str = "sum"

    def __post_init__(self):
        if self.soft_select not in _rules.SOFT_SELECTIONS:
            raise ValueError(f"BridgeConfig.soft_select must be one of {_rules.SOFT_SELECTIONS}, "
                             f"got {self.soft_select!r}")
        for name in ("backbone_size", "model_size", "encoder_layer", "persona_size", "hidden_size", "soft_tokens"):
            if getattr(self, name) < (0 if name == "hidden_size" else 1):
                raise ValueError(f"BridgeConfig.{name} must be >= {0 if name == 'hidden_size' else 1}, "
                                 f"got {getattr(self, name)}")


def _normal(key, shape, scale):
    return scale * jax.random.normal(key, shape, jnp.float32)


def init_params(config: BridgeConfig, rng: jax.Array) -> dict:
    """{'encoder', 'bridge', 'soft'} float32 parameters (the backbone is not among them).

    encoder: type_kernel [3, 2D, P], type_bias [3, P] (the item-type embedding), query [P],
    key [P, P], value [P, P], empty [P]; bridge: w1 [P, H], b1 [H], w2 [H, 270], b2 [270]
    (H = 0: w2 [P, 270], b2); soft: table [K, 90, 3, D_model].
    """
    c = config
    keys = jax.random.split(rng, 8)
    f, p = VIEWS * c.backbone_size, c.persona_size
    encoder = {
        "type_kernel": _normal(keys[0], (len(ITEM_TYPES), f, p), 1 / math.sqrt(f)),
        "type_bias": jnp.zeros((len(ITEM_TYPES), p), jnp.float32),
        "query": _normal(keys[1], (p,), 1 / math.sqrt(p)),
        "key": _normal(keys[2], (p, p), 1 / math.sqrt(p)),
        "value": _normal(keys[3], (p, p), 1 / math.sqrt(p)),
        "empty": _normal(keys[4], (p,), 1.0),
    }
    outputs = prefs.NUM_DIMENSIONS * _rules.NUM_CLASSES
    if c.hidden_size:
        bridge = {
            "w1": _normal(keys[5], (p, c.hidden_size), 1 / math.sqrt(p)),
            "b1": jnp.zeros((c.hidden_size,), jnp.float32),
            "w2": _normal(keys[6], (c.hidden_size, outputs), 1 / math.sqrt(c.hidden_size)),
            "b2": jnp.zeros((outputs,), jnp.float32),
        }
    else:
        bridge = {"w2": _normal(keys[6], (p, outputs), 1 / math.sqrt(p)), "b2": jnp.zeros((outputs,), jnp.float32)}
    # A token is a sum over 90 dimensions: scale so that it starts near a token embedding's size (0.02).
    table = _normal(keys[7], (c.soft_tokens, prefs.NUM_DIMENSIONS, _rules.NUM_CLASSES, c.model_size),
                    0.02 / math.sqrt(prefs.NUM_DIMENSIONS))
    return {"encoder": encoder, "bridge": bridge, "soft": {"table": table}}


def label_table(embedding: chex.Array, label_ids: Sequence[Sequence[Sequence[int]]], soft_tokens: int) -> jax.Array:
    """A soft-token table [K, 90, 3, D] that starts as the words of the profile text: entry (k, d, c) is
    the mean input embedding of dimension d's label for class c (`label_ids[d][c]`, its token ids;
    empty for the neutral class, whose entry is 0), the same for every k. A user's token is then the
    sum of the embeddings of their marked labels, which the pretrained model can read from step 1."""
    chex.assert_rank(embedding, 2)
    rows = [[embedding[jnp.asarray(ids)].mean(0) if ids else jnp.zeros(embedding.shape[1], embedding.dtype)
             for ids in classes] for classes in label_ids]
    table = jnp.stack([jnp.stack(classes) for classes in rows]).astype(jnp.float32)  # [90, 3, D]
    chex.assert_shape(table, (prefs.NUM_DIMENSIONS, _rules.NUM_CLASSES, embedding.shape[1]))
    return jnp.broadcast_to(table, (soft_tokens, *table.shape))


def backbone_slice(params: dict, layer: int) -> dict:
    """The parameters of a decoder's first `layer` layers (with its embedding and final norm):
    run with `config.replace(num_layers=layer)`, they give the hidden states after that layer."""
    sliced = {"embed": params["embed"], "final_norm": params["final_norm"],
              "layers": jax.tree.map(lambda x: x[:layer], params["layers"])}
    return sliced


def encode_items(backbone: dict, backbone_config: llama.LlamaConfig, tokens: chex.Array, token_mask: chex.Array
                 ) -> chex.Array:
    """Masked mean over tokens of the backbone's final-normed hidden states: [N, L] -> [N, D] float32.

    backbone: `backbone_slice(params, layer)`, run with `backbone_config.num_layers == layer`.
    tokens: int32 [N, L], left-aligned (causal rows: padding after the real tokens changes nothing
    before it); token_mask: bool [N, L]. A row without tokens gives zeros.
    """
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, token_mask])
    hidden = llama.forward(backbone, tokens, backbone_config, return_hidden=True).astype(jnp.float32)
    weights = token_mask.astype(jnp.float32)
    return jnp.einsum("nl,nld->nd", weights, hidden) / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)


@functools.lru_cache(maxsize=8)
def _jitted_encode(backbone_config: llama.LlamaConfig):
    return jax.jit(functools.partial(encode_items, backbone_config=backbone_config))


def encode_views(backbone: dict, backbone_config: llama.LlamaConfig, tokens: np.ndarray, token_mask: np.ndarray,
                 chunk: int = 64) -> np.ndarray:
    """`encode_items` over many views on the host, `chunk` rows a call (one compiled shape):
    int32 [N, L] tokens and bool [N, L] mask -> float32 [N, D] numpy."""
    tokens, token_mask = np.asarray(tokens, np.int32), np.asarray(token_mask, bool)
    encode = _jitted_encode(backbone_config)
    out = np.zeros((len(tokens), backbone_config.hidden_size), np.float32)
    for start in range(0, len(tokens), chunk):
        t, m = tokens[start:start + chunk], token_mask[start:start + chunk]
        pad = chunk - len(t)
        pooled = encode(backbone, tokens=jnp.asarray(np.pad(t, ((0, pad), (0, 0)))),
                        token_mask=jnp.asarray(np.pad(m, ((0, pad), (0, 0)))))
        out[start:start + len(t)] = np.asarray(pooled)[:len(t)]
    return out


def item_features(backbone: dict, backbone_config: llama.LlamaConfig, tokens: chex.Array, token_mask: chex.Array
                  ) -> chex.Array:
    """[B, M, 2, L] item views -> features [B, M, 2D] (the two views' pooled states side by side)."""
    chex.assert_rank(tokens, 4)
    b, m, v, length = tokens.shape
    flat = encode_items(backbone, backbone_config, tokens.reshape(-1, length), token_mask.reshape(-1, length))
    return flat.reshape(b, m, v * flat.shape[-1])


def pool_items(encoder: dict, features: chex.Array, item_types: chex.Array, item_mask: chex.Array) -> chex.Array:
    """Persona vectors [B, P] from item features [B, M, F], types int32 [B, M], mask bool [B, M]
    (module docstring: type projection, attention pooling with a learned query, `empty` for none)."""
    chex.assert_rank([features, item_types, item_mask], [3, 2, 2])
    # Every type's projection, then each item's own: [B, M, 3, P] instead of gathering [B, M, F, P] kernels.
    projected = jnp.einsum("bmf,tfp->bmtp", features.astype(jnp.float32), encoder["type_kernel"])
    one_hot = jax.nn.one_hot(item_types, len(ITEM_TYPES), dtype=jnp.float32)
    u = jax.nn.gelu(jnp.einsum("bmtp,bmt->bmp", projected, one_hot) + one_hot @ encoder["type_bias"])
    scores = jnp.einsum("bmp,pq,q->bm", u, encoder["key"], encoder["query"]) / math.sqrt(u.shape[-1])
    scores = jnp.where(item_mask, scores, -jnp.inf)
    any_item = jnp.any(item_mask, axis=-1, keepdims=True)
    weights = jax.nn.softmax(jnp.where(any_item, scores, 0.0), axis=-1) * item_mask  # no item: all zero, no NaN
    pooled = jnp.einsum("bm,bmp,pq->bq", weights, u, encoder["value"])
    return jnp.where(any_item, pooled, encoder["empty"])


def encode_personas(encoder: dict, backbone: dict, backbone_config: llama.LlamaConfig, tokens: chex.Array,
                    token_mask: chex.Array, item_types: chex.Array, item_mask: chex.Array) -> chex.Array:
    """The persona encoder end to end: item views [B, M, 2, L] -> persona vectors [B, P]."""
    return pool_items(encoder, item_features(backbone, backbone_config, tokens, token_mask), item_types, item_mask)


def bridge_logits(bridge: dict, persona: chex.Array) -> chex.Array:
    """Persona vectors [B, P] -> logits [B, 90, 3] over (negative, neutral, positive) per dimension."""
    hidden = jax.nn.gelu(persona @ bridge["w1"] + bridge["b1"]) if "w1" in bridge else persona
    logits = hidden @ bridge["w2"] + bridge["b2"]
    return logits.reshape(*persona.shape[:-1], prefs.NUM_DIMENSIONS, _rules.NUM_CLASSES)


def learned_distribution(params: dict, features: chex.Array, item_types: chex.Array, item_mask: chex.Array
                         ) -> chex.Array:
    """P(direction | persona) [B, 90, 3] of the learned bridge from item features [B, M, F]."""
    return jax.nn.softmax(bridge_logits(params["bridge"], pool_items(params["encoder"], features, item_types,
                                                                     item_mask)), axis=-1)


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency class weights per dimension [90, 3] from training class labels (int [N, 90]):
    w_dc = N / (k_d N_dc), k_d the number of classes dimension d shows, so that within every dimension
    the classes it shows count equally (a class it never shows gets 0; a never-marked dimension: 1 on
    neutral). Per dimension, not pooled: pooled over the mostly neutral 90 dimensions, a mark would
    weigh ~60x a neutral and the bridge would call every unsure dimension marked."""
    labels = np.asarray(labels)
    counts = np.stack([(labels == c).sum(0) for c in range(_rules.NUM_CLASSES)], -1).astype(np.float64)  # [90, 3]
    shown = (counts > 0).sum(-1, keepdims=True)
    weights = np.where(counts > 0, len(labels) / (np.maximum(shown, 1) * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def class_balanced_ce(logits: chex.Array, labels: chex.Array, weights: chex.Array) -> chex.Array:
    """Per-example class-balanced cross-entropy [B]:

        ce_b = (1 / 90) * sum_d w[d, y_bd] * -log softmax(logits_bd)[y_bd]

    logits [B, 90, 3]; labels int32 [B, 90] (class indices); weights float [90, 3] (`class_weights`),
    or [3], the same for every dimension. The caller averages over examples.
    """
    chex.assert_rank([logits, labels], [3, 2])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    per_dim = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), logits.shape[1:])  # [90, 3]
    w = jnp.take_along_axis(per_dim[None], labels[..., None], axis=-1)[..., 0]
    return jnp.mean(w * nll, axis=-1)
