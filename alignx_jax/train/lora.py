"""LoRA adapters on the decoder's projections, as a separate pytree merged into the weights.

    W' = W + (alpha / rank) * A @ B,   A [in, rank] random, B [rank, out] zero

so at step 0 the policy is the base model, and the base without adapters *is* the reference: one
copy of the weights serves both. Only A and B are trained (and held by the optimizer). Stacked
layers keep their leading [L] axis: A [L, in, rank], B [L, rank, out], where `in` / `out` flatten
the kernel's input / output axes (o_proj reads heads x head_dim). `merge` gives plain parameters
for the model, for export, and for `alignx convert jax-to-hf`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.train.config import LoraConfig

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


def init_adapters(params: dict, config: LoraConfig, rng: jax.Array) -> dict:
    """{projection: {'a': [L, in, rank], 'b': [L, rank, out]}} in float32; A ~ N(0, 1/in), B = 0."""
    adapters = {}
    for name, key in zip(config.targets, jax.random.split(rng, len(config.targets))):
        layers, n_in, n_out = _split(_kernel(params, name).shape, name)
        a = jax.random.normal(key, (layers, n_in, config.rank), jnp.float32) / np.sqrt(n_in)
        adapters[name] = {"a": a, "b": jnp.zeros((layers, config.rank, n_out), jnp.float32)}
    return adapters


def merge(params: dict, adapters: dict, config: LoraConfig) -> dict:
    """The parameters with every adapter folded in: kernel + (alpha / rank) * A @ B (in the kernel's dtype)."""
    scale = config.alpha / config.rank
    layers = {module: dict(sub) for module, sub in params["layers"].items()}
    for name, ab in adapters.items():
        module, _ = PROJECTIONS[name]
        kernel = layers[module][name]["kernel"]
        chex.assert_equal(ab["a"].shape[:2], _split(kernel.shape, name)[:2])
        delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"]).reshape(kernel.shape) * scale
        layers[module][name] = dict(layers[module][name], kernel=(kernel + delta.astype(kernel.dtype)))
    return dict(params, layers=layers)


def num_adapter_params(adapters: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adapters))
