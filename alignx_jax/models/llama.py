"""Llama-family decoder in Flax: a frozen config with named presets, and the model.

The same decoder serves Llama 2/3, SmolLM2, Qwen2 (q/k/v bias) and Mistral (no sliding window
in v0.2): they differ only in the numbers below.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import kernels

Architecture = Literal["llama", "qwen2", "mistral"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 rotary frequency scaling ("rope_type": "llama3" in Hugging Face configs).

    Wavelengths longer than original_max_position_embeddings / low_freq_factor are divided by
    `factor`, those shorter than .../high_freq_factor are kept, and the band between is
    interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0 means hidden_size // num_heads
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q, k and v (never on o)
    max_position_embeddings: int = 8192
    architecture: Architecture = "llama"
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    # Numerics and memory; not part of the checkpoint.
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    remat: bool = False  # recompute each layer's activations in the backward pass
    attention_impl: str = "auto"  # kernels.attention's impl for packed / causal rows

    def __post_init__(self):
        problems = []
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if self.num_heads > 0 and self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if not self.head_dim and self.num_heads > 0 and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; set head_dim")
        if self.architecture not in ("llama", "qwen2", "mistral"):
            problems.append(f"architecture={self.architecture!r} is not one of 'llama', 'qwen2', 'mistral'")
        if problems:
            raise ValueError("invalid LlamaConfig: " + "; ".join(problems))

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else tuple(self.eos_token_id)

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    # ---- presets ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides) -> "LlamaConfig":
        """A 2-layer random-init model for fast tests (GQA 4:2, untied)."""
        base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                             num_heads=9, num_kv_heads=3, rope_theta=100_000.0, tie_word_embeddings=True,
                             max_position_embeddings=8192, bos_token_id=1, eos_token_id=2), **o})

    @classmethod
    def smollm2_360m(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_layers=32,
                             num_heads=15, num_kv_heads=5, rope_theta=100_000.0, tie_word_embeddings=True,
                             max_position_embeddings=8192, bos_token_id=1, eos_token_id=2), **o})

    @classmethod
    def smollm2_1_7b(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_layers=24,
                             num_heads=32, num_kv_heads=32, rope_theta=130_000.0, tie_word_embeddings=True,
                             max_position_embeddings=8192, bos_token_id=1, eos_token_id=2), **o})

    @classmethod
    def _llama3(cls, **o) -> "LlamaConfig":
        base = dict(vocab_size=128256, rope_theta=500_000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                    rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=8192),
                    bos_token_id=128000, eos_token_id=(128001, 128008, 128009))
        return cls(**{**base, **o})

    @classmethod
    def llama3_2_1b(cls, **o) -> "LlamaConfig":
        return cls._llama3(**{**dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                                     num_kv_heads=8, head_dim=64, tie_word_embeddings=True,
                                     rope_scaling=RopeScaling(factor=32.0)), **o})

    @classmethod
    def llama3_2_3b(cls, **o) -> "LlamaConfig":
        return cls._llama3(**{**dict(hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
                                     num_kv_heads=8, head_dim=128, tie_word_embeddings=True,
                                     rope_scaling=RopeScaling(factor=32.0)), **o})

    @classmethod
    def llama3_1_8b(cls, **o) -> "LlamaConfig":
        return cls._llama3(**{**dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                                     num_kv_heads=8), **o})

    @classmethod
    def llama3_1_70b(cls, **o) -> "LlamaConfig":
        return cls._llama3(**{**dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                                     num_kv_heads=8), **o})

    @classmethod
    def qwen2_5_0_5b(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                             num_heads=14, num_kv_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, attention_bias=True, max_position_embeddings=32768,
                             architecture="qwen2", bos_token_id=151643, eos_token_id=151645), **o})

    @classmethod
    def qwen2_5_7b(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                             num_heads=28, num_kv_heads=4, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=False, attention_bias=True, max_position_embeddings=32768,
                             architecture="qwen2", bos_token_id=151643, eos_token_id=151645), **o})

    @classmethod
    def mistral_7b_v0_2(cls, **o) -> "LlamaConfig":
        return cls(**{**dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                             num_heads=32, num_kv_heads=8, rope_theta=1_000_000.0, rms_norm_eps=1e-5,
                             max_position_embeddings=32768, architecture="mistral", bos_token_id=1,
                             eos_token_id=2), **o})


PRESETS = {
    "tiny": LlamaConfig.tiny,
    "smollm2-135m": LlamaConfig.smollm2_135m,
    "smollm2-360m": LlamaConfig.smollm2_360m,
    "smollm2-1.7b": LlamaConfig.smollm2_1_7b,
    "llama3.2-1b": LlamaConfig.llama3_2_1b,
    "llama3.2-3b": LlamaConfig.llama3_2_3b,
    "llama3.1-8b": LlamaConfig.llama3_1_8b,
    "llama3.1-70b": LlamaConfig.llama3_1_70b,
    "qwen2.5-0.5b": LlamaConfig.qwen2_5_0_5b,
    "qwen2.5-7b": LlamaConfig.qwen2_5_7b,
    "mistral-7b-v0.2": LlamaConfig.mistral_7b_v0_2,
}


def preset(name: str, **overrides) -> LlamaConfig:
    """A named preset, e.g. `preset("llama3.1-8b", dtype="bfloat16")`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)


# ==== the decoder ==========================================================================
# Logical axis names of every parameter; models/sharding.py maps them to mesh axes.
# 'layers' is the leading axis of the stacked (scanned) decoder layers.

_INIT = nn.initializers.normal(stddev=0.02)


def _param_init(*axes: str):
    return nn.with_logical_partitioning(_INIT, axes)


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Rotary inverse frequencies theta^(-2i/H), with Llama-3 scaling when configured. [H/2] f32."""
    h = config.resolved_head_dim
    # float32 throughout, as transformers computes it, so long positions rotate identically.
    inv = np.float32(1.0) / (np.float32(config.rope_theta) ** (np.arange(0, h, 2).astype(np.float32) / np.float32(h)))
    s = config.rope_scaling
    if s is not None:
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate halves ("rotate_half" layout of Hugging Face): x*cos + [-x2, x1]*sin. x: [B,T,N,H]."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B,T,H/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class RMSNorm(nn.Module):
    """y = scale * x / sqrt(mean(x^2) + eps), the statistics in float32."""

    eps: float
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Cast back before scaling, as Hugging Face does, so bf16 runs round identically.
        return scale.astype(self.dtype) * y.astype(self.dtype)


def _transposed(x: jax.Array) -> jax.Array:
    """x.T, materialized on CPU.

    XLA folds a transpose into the dot that reads it; on CPU a dot whose left operand contracts
    over its major axis (the weight gradient x^T dy) then leaves the fast YNNPACK path for a
    slower generic one (~1.3-2x on this model's shapes, see docs/benchmarks.md). The barrier keeps the
    copy, which costs far less than the dot; other platforms fold the transpose as usual.
    """
    return jax.lax.platform_dependent(x, cpu=lambda x: jax.lax.optimization_barrier(x.T), default=lambda x: x.T)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """[M, D] @ [D, F] whose three dots (y, dx, dw) all take the fast CPU path."""
    return jnp.dot(x, w)


def _matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _matmul_bwd(residuals, dy):
    x, w = residuals
    return jnp.dot(dy, w.T).astype(x.dtype), jnp.dot(_transposed(x), dy).astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _flat_init(init):
    """Initialize a kernel as the 2-D [inputs, outputs] matrix it is used as (DenseGeneral's draw)."""
    def wrapped(rng, shape, dtype, *, split):
        flat = (int(np.prod(shape[:split])), int(np.prod(shape[split:])))
        return jnp.reshape(init(rng, flat, dtype), shape)
    return wrapped


class Linear(nn.Module):
    """y = x @ kernel, contracting x's last `in_dims` axes with the kernel's first ones.

    The parameters are DenseGeneral's (`kernel` [*in, *features], optional `bias` [*features]),
    but the product runs as one 2-D matmul on [tokens, inputs] with the custom VJP above: a
    DenseGeneral on [B, T, D] contracts B and T in the weight gradient, which XLA CPU lowers with
    transposed copies and the slow dot path (the MLP's backward was ~3.7x its forward).
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]  # logical axes of the kernel
    in_dims: int = 1
    use_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.in_dims:]
        init = functools.partial(_flat_init(_INIT), split=self.in_dims)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), (*in_shape, *self.features),
                            self.param_dtype)
        inputs, outputs = int(np.prod(in_shape)), int(np.prod(self.features))
        y = _matmul(x.reshape(-1, inputs).astype(self.dtype), kernel.reshape(inputs, outputs).astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   self.axes[self.in_dims:]),
                              self.features, self.param_dtype)
            y = y + bias.reshape(outputs).astype(self.dtype)
        return y.reshape(*x.shape[:-self.in_dims], *self.features)


def _attend(q, k, v, segment_ids, roles, positions, *, impl):
    return kernels.attention(q, k, v, segment_ids=segment_ids, roles=roles, positions=positions, impl=impl)


def _attention_per_shard(attend, q, k, v, segment_ids, roles, positions):
    """`attend` on each device's rows and heads when a mesh is set (`jax.set_mesh`).

    GSPMD cannot split a Pallas kernel, nor the XLA kernel's loop over (row, query block) with its
    dynamic slices, so on a mesh it would gather every row onto every device. Instead the kernel
    runs inside `shard_map` over the mesh axes that the logical rules in effect give
    `activation_batch` and `heads` (the model names logical axes only). An axis that does not divide
    its dimension is left out; heads are split only when the kv heads split too, so each shard
    keeps its GQA groups whole.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return attend(q, k, v, segment_ids, roles, positions)

    def mesh_axes(logical: str, *dims: int):
        entry = nn.logical_to_mesh_axes((logical,))[0]
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        names = tuple(name for name in names if mesh.shape[name] > 1)
        size = int(np.prod([mesh.shape[name] for name in names]))
        return names if names and all(d % size == 0 for d in dims) else None

    batch = mesh_axes("activation_batch", q.shape[0])
    heads = mesh_axes("heads", q.shape[2], k.shape[2])
    P = jax.sharding.PartitionSpec
    tensors, rows = P(batch, None, heads, None), P(batch, None)
    structure = [a for a in (segment_ids, roles, positions) if a is not None]

    def local(q, k, v, *structure):
        seg, role, pos = structure if segment_ids is not None else (None, None, structure[0] if structure else None)
        return attend(q, k, v, seg, role, pos)

    # check_vma=False: the kernels start loop carries from zeros, which replication typing would flag.
    return jax.shard_map(local, in_specs=(tensors,) * 3 + (rows,) * len(structure), out_specs=tensors,
                         check_vma=False)(
        q, k, v, *structure)


class Attention(nn.Module):
    """Grouped-query attention with RoPE.

    The mask is either structure, `packed = (segment_ids, roles)` [B, T] each, or None for plain
    causal rows (kernels.attention: never a dense [B, T, T] array), or an explicit boolean `mask`
    [B, T, S] (True = attend). With a KV cache ({'k','v'}: [B, S, K, H]) the new keys/values are
    written at `cache_index` and the queries attend over the whole cache, as the mask allows.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, packed=None, cache=None, cache_index=None):
        c = self.config
        n, k, h = c.num_heads, c.num_kv_heads, c.resolved_head_dim
        linear = functools.partial(Linear, dtype=c.dtype, param_dtype=c.param_dtype)
        q = linear((n, h), ("embed", "heads", "head_dim"), use_bias=c.attention_bias, name="q_proj")(x)
        kv = [linear((k, h), ("embed", "kv_heads", "head_dim"), use_bias=c.attention_bias, name=name)(x)
              for name in ("k_proj", "v_proj")]
        inv_freq = rope_inv_freq(c)
        q, key, value = apply_rope(q, positions, inv_freq), apply_rope(kv[0], positions, inv_freq), kv[1]
        new_cache = None
        if cache is not None:
            start = (0, cache_index, 0, 0)
            key = jax.lax.dynamic_update_slice(cache["k"], key.astype(cache["k"].dtype), start)
            value = jax.lax.dynamic_update_slice(cache["v"], value.astype(cache["v"].dtype), start)
            new_cache = {"k": key, "v": value}
        if mask is None:
            segment_ids, roles = packed if packed is not None else (None, None)
            out = _attention_per_shard(functools.partial(_attend, impl=c.attention_impl), q, key, value,
                                       segment_ids, roles, positions)
        else:
            out = jax.nn.dot_product_attention(q, key.astype(q.dtype), value.astype(q.dtype), mask=mask[:, None])
        out = linear((c.hidden_size,), ("heads", "head_dim", "embed"), in_dims=2, name="o_proj")(out)
        return out, new_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        linear = functools.partial(Linear, dtype=c.dtype, param_dtype=c.param_dtype)
        gate = linear((c.intermediate_size,), ("embed", "mlp"), name="gate_proj")(x)
        up = linear((c.intermediate_size,), ("embed", "mlp"), name="up_proj")(x)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return linear((c.hidden_size,), ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, packed, cache, cache_index):
        c = self.config
        norm = functools.partial(RMSNorm, c.rms_norm_eps, c.dtype, c.param_dtype)
        attn, new_cache = Attention(c, name="attn")(norm(name="attn_norm")(x), positions, mask, packed, cache,
                                                    cache_index)
        x = x + attn
        x = x + MLP(c, name="mlp")(norm(name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, new_cache


class Llama(nn.Module):
    """Decoder-only transformer; the decoder layers are one scanned layer with stacked params."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens, positions=None, attention_mask=None, cache=None, cache_index=None,
                 return_hidden=False, segment_ids=None, roles=None, input_embeddings=None, final_norm=True):
        c = self.config
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        packed = None
        if attention_mask is None:
            if cache is not None:
                raise ValueError("decoding with a KV cache needs an explicit attention_mask [B, T, S]")
            if segment_ids is not None:  # None: plain causal rows, whose tiles the kernel knows statically
                packed = (segment_ids, roles)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                         embedding_init=_param_init("vocab", "embed"), name="embed")
        # input_embeddings [B, T, D] replace the token lookup (soft prompt tokens); the embedding table
        # is still the module's (the tied LM head reads it).
        x = embed(tokens) if input_embeddings is None else input_embeddings.astype(c.dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        layer = DecoderLayer
        if c.remat:
            layer = nn.remat(layer, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast), length=c.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, new_cache = layers(c, name="layers")(x, positions, attention_mask, packed, cache, cache_index)
        if return_hidden and not final_norm:
            return x, new_cache
        x = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="final_norm")(x)
        if return_hidden:
            return x, new_cache
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.DenseGeneral(c.vocab_size, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                                     kernel_init=_param_init("embed", "vocab"), name="lm_head")(x)
        return logits, new_cache


# ==== the functional interface ===============================================================

def init_params(config: LlamaConfig, rng: jax.Array) -> dict:
    """Random-init parameters (normal 0.02, norms 1) as a plain pytree of arrays."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return nn.meta.unbox(Llama(config).init(rng, tokens)["params"])


def param_shapes(config: LlamaConfig) -> dict:
    """Parameter shapes/dtypes (jax.ShapeDtypeStruct pytree) without allocating anything."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def logical_axes(config: LlamaConfig) -> dict:
    """The logical axis names of every parameter, as a pytree of PartitionSpec."""
    boxed = jax.eval_shape(lambda: Llama(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    return nn.get_partition_spec(boxed)["params"]


def num_params(config: LlamaConfig) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(config)))


def forward(params: dict, tokens: jax.Array, config: LlamaConfig, *, positions: jax.Array | None = None,
            attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
            roles: jax.Array | None = None, return_hidden: bool = False,
            input_embeddings: jax.Array | None = None, final_norm: bool = True) -> jax.Array:
    """Logits [B, T, V] (or final-normed hidden states [B, T, D]) of int32 tokens [B, T].

    input_embeddings: optional [B, T, D], used instead of the embedding lookup of `tokens` (soft
    prompt tokens; `embed_tokens` gives the lookup to start from). Everything else is unchanged.
    final_norm=False (with return_hidden): the residual stream after the last layer, not normed; with
    `layer_slice`, one slice's output is the next slice's `input_embeddings`.

    positions: int32 [B, T] (default 0..T-1). The mask, one of: `segment_ids` and `roles` int32
    [B, T] (packed rows, the structured rule of `kernels.attention`; `data.PackedBatch` carries
    both); `attention_mask` bool [B, T, T] (query, key), True = may attend; neither: causal. A
    query row that attends nothing yields finite garbage (padding).
    """
    chex.assert_rank(tokens, 2)
    if attention_mask is not None:
        chex.assert_shape(attention_mask, (tokens.shape[0], tokens.shape[1], tokens.shape[1]))
        if segment_ids is not None:
            raise ValueError("forward: give either attention_mask or segment_ids/roles, not both")
    if (segment_ids is None) != (roles is None):
        raise ValueError("forward: segment_ids and roles go together")
    if input_embeddings is not None:
        chex.assert_shape(input_embeddings, (*tokens.shape, config.hidden_size))
    out, _ = Llama(config).apply({"params": params}, tokens, positions, attention_mask, return_hidden=return_hidden,
                                 segment_ids=segment_ids, roles=roles, input_embeddings=input_embeddings,
                                 final_norm=final_norm)
    return out


def layer_slice(params: dict, config: LlamaConfig, start: int, stop: int) -> tuple[dict, LlamaConfig]:
    """The parameters and config of a model whose decoder layers are layers [start, stop) of this one
    (embedding, final norm and head kept), so that with

        p0, c0 = layer_slice(p, c, 0, k);  p1, c1 = layer_slice(p, c, k, c.num_layers)
        h = forward(p0, tokens, c0, return_hidden=True, final_norm=False)

    `forward(p1, tokens, c1, input_embeddings=h)` is `forward(p, tokens, c)`."""
    if not 0 <= start < stop <= config.num_layers:
        raise ValueError(f"layer_slice: [{start}, {stop}) is not a slice of {config.num_layers} layers")
    layers = jax.tree.map(lambda x: x[start:stop], params["layers"])
    return dict(params, layers=layers), dataclasses.replace(config, num_layers=stop - start)


def embed_tokens(params: dict, tokens: jax.Array, config: LlamaConfig) -> jax.Array:
    """The embedding lookup of int32 tokens [B, T] -> [B, T, D] in the compute dtype (what `forward`
    feeds the first layer when no `input_embeddings` are given)."""
    return jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(config.dtype)


def forward_with_cache(params, tokens, config: LlamaConfig, *, positions, attention_mask, cache, cache_index,
                       input_embeddings=None):
    """One decoding step: logits [B, T, V] and the updated cache. attention_mask: [B, T, S];
    input_embeddings: optional [B, T, D] instead of the lookup of `tokens` (a soft-prompt prefill)."""
    return Llama(config).apply({"params": params}, tokens, positions, attention_mask, cache, cache_index,
                               input_embeddings=input_embeddings)


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache {'k', 'v'}: [L, B, S, K, H]."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.resolved_head_dim)
    dtype = dtype or config.dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def lm_head_weight(params: dict, config: LlamaConfig) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied)."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]
