"""LoRA adapters on the decoder's projections, as a separate pytree merged into the weights.

    W' = W + (alpha / rank) * A @ B,   A [in, rank] random, B [rank, out] zero

so at step 0 the policy is the base model, and the base without adapters *is* the reference: one
copy of the weights serves both. Only A and B are trained (and held by the optimizer). Stacked
layers keep their leading [L] axis: A [L, in, rank], B [L, rank, out], where `in` / `out` flatten
the kernel's input / output axes (o_proj reads heads x head_dim). With `lora.layers = K` the
adapters cover the top K layers only (A [K, in, rank], B [K, rank, out]), and the layers below are
the base model's: `trunk_layers` of them. `merge` gives plain parameters for the model, for export,
and for `alignx convert jax-to-hf`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.train.config import ConfigError, LoraConfig

# projection -> (module in the decoder layer, number of input axes of its kernel after [L])
PROJECTIONS = {"q_proj": ("attn", 1), "k_proj": ("attn", 1), "v_proj": ("attn", 1), "o_proj": ("attn", 2),
               "gate_proj": ("mlp", 1), "up_proj": ("mlp", 1), "down_proj": ("mlp", 1)}


def _kernel(params: dict, name: str) -> jax.Array:
    module, _ = PROJECTIONS[name]
    return params["layers"][module][name]["kernel"]


def _split(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """[L, in..., out...] -> (L, prod(in), prod(out))."""
    n_in = PROJECTIONS[name][1]
    return shape[0], int(np.prod(shape[1:1 + n_in])), int(np.prod(shape[1 + n_in:]))


def trunk_layers(config: LoraConfig | None, num_layers: int) -> int:
    """How many of the model's `num_layers` decoder layers lie below the adapters (0: adapters on all)."""
    if config is None or config.layers is None:
        return 0
    if config.layers > num_layers:
        raise ConfigError(f"config key 'lora.layers' is {config.layers}, but the model has {num_layers} decoder layers")
    return num_layers - config.layers


def init_adapters(params: dict, config: LoraConfig, rng: jax.Array) -> dict:
    """{projection: {'a': [K, in, rank], 'b': [K, rank, out]}} in float32, K the adapted (top) layers;
    A ~ N(0, 1/in), B = 0."""
    adapters = {}
    for name, key in zip(config.targets, jax.random.split(rng, len(config.targets))):
        layers, n_in, n_out = _split(_kernel(params, name).shape, name)
        layers -= trunk_layers(config, layers)
        a = jax.random.normal(key, (layers, n_in, config.rank), jnp.float32) / np.sqrt(n_in)
        adapters[name] = {"a": a, "b": jnp.zeros((layers, config.rank, n_out), jnp.float32)}
    return adapters


def merge(params: dict, adapters: dict, config: LoraConfig) -> dict:
    """The parameters with every adapter folded in: kernel + (alpha / rank) * A @ B (in the kernel's dtype),
    on the top K layers the adapters cover."""
    scale = config.alpha / config.rank
    layers = {module: dict(sub) for module, sub in params["layers"].items()}
    for name, ab in adapters.items():
        module, _ = PROJECTIONS[name]
        kernel = layers[module][name]["kernel"]
        num_layers, n_in, _ = _split(kernel.shape, name)
        below = trunk_layers(config, num_layers)
        chex.assert_equal(ab["a"].shape[:2], (num_layers - below, n_in))
        delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"]).reshape((num_layers - below, *kernel.shape[1:])) * scale
        top = kernel[below:] + delta.astype(kernel.dtype)
        layers[module][name] = dict(layers[module][name], kernel=jnp.concatenate([kernel[:below], top]) if below else top)
    return dict(params, layers=layers)


def num_adapter_params(adapters: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adapters))
