"""The one table between Hugging Face tensor names and our parameter paths, read both ways.

Import: check the HF shape, transpose when marked, reshape to ours. Export: the same steps in
reverse. Per-layer rules (`{i}` in the key) fill slice i of our stacked [L, ...] parameter.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np

from alignx_jax.errors import AlignxError, InputError, KeyMismatchError
from alignx_jax.models.llama import LlamaConfig, RopeScaling


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_key: str  # "model.layers.{i}.self_attn.q_proj.weight"
    path: tuple[str, ...]  # our parameter path
    hf_shape: Callable[[LlamaConfig], tuple[int, ...]]
    transpose: bool = False  # torch Linear stores [out, in]; our kernels are [in, ...out]
    when: Callable[[LlamaConfig], bool] = lambda c: True

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_key

    def to_ours(self, hf: np.ndarray, config: LlamaConfig, our_shape: tuple[int, ...], key: str) -> np.ndarray:
        expected = self.hf_shape(config)
        if tuple(hf.shape) != expected:
            raise InputError(f"tensor {key!r} has shape {tuple(hf.shape)}, expected {expected} from the config")
        return (hf.T if self.transpose else hf).reshape(our_shape)

    def to_hf(self, ours: np.ndarray, config: LlamaConfig) -> np.ndarray:
        shape = self.hf_shape(config)
        if self.transpose:
            return np.ascontiguousarray(ours.reshape(shape[::-1]).T)
        return ours.reshape(shape)


def _q(c): return c.num_heads * c.resolved_head_dim
def _kv(c): return c.num_kv_heads * c.resolved_head_dim
def _untied(c): return not c.tie_word_embeddings
def _bias(c): return c.attention_bias


_LAYER = "model.layers.{i}."
RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embed", "embedding"), lambda c: (c.vocab_size, c.hidden_size)),
    Rule("model.norm.weight", ("final_norm", "scale"), lambda c: (c.hidden_size,)),
    Rule("lm_head.weight", ("lm_head", "kernel"), lambda c: (c.vocab_size, c.hidden_size), True, _untied),
    Rule(_LAYER + "input_layernorm.weight", ("layers", "attn_norm", "scale"), lambda c: (c.hidden_size,)),
    Rule(_LAYER + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), lambda c: (c.hidden_size,)),
    Rule(_LAYER + "self_attn.q_proj.weight", ("layers", "attn", "q_proj", "kernel"), lambda c: (_q(c), c.hidden_size), True),
    Rule(_LAYER + "self_attn.k_proj.weight", ("layers", "attn", "k_proj", "kernel"), lambda c: (_kv(c), c.hidden_size), True),
    Rule(_LAYER + "self_attn.v_proj.weight", ("layers", "attn", "v_proj", "kernel"), lambda c: (_kv(c), c.hidden_size), True),
    Rule(_LAYER + "self_attn.o_proj.weight", ("layers", "attn", "o_proj", "kernel"), lambda c: (c.hidden_size, _q(c)), True),
    Rule(_LAYER + "self_attn.q_proj.bias", ("layers", "attn", "q_proj", "bias"), lambda c: (_q(c),), when=_bias),
    Rule(_LAYER + "self_attn.k_proj.bias", ("layers", "attn", "k_proj", "bias"), lambda c: (_kv(c),), when=_bias),
    Rule(_LAYER + "self_attn.v_proj.bias", ("layers", "attn", "v_proj", "bias"), lambda c: (_kv(c),), when=_bias),
    Rule(_LAYER + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), lambda c: (c.intermediate_size, c.hidden_size), True),
    Rule(_LAYER + "mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), lambda c: (c.intermediate_size, c.hidden_size), True),
    Rule(_LAYER + "mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), lambda c: (c.hidden_size, c.intermediate_size), True),
)


def active_rules(config: LlamaConfig) -> list[Rule]:
    return [r for r in RULES if r.when(config)]


def hf_keys(rule: Rule, config: LlamaConfig) -> list[str]:
    return [rule.hf_key.format(i=i) for i in range(config.num_layers)] if rule.per_layer else [rule.hf_key]


# Keys a Hugging Face checkpoint may carry that hold nothing we need.
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)

# ---- config.json <-> LlamaConfig -----------------------------------------------------------------
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
    """Read a transformers config.json (4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
    model_type = hf.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise InputError(f"{source}: unsupported architecture model_type={model_type!r} "
                         f"(architectures={hf.get('architectures')}); supported: {', '.join(_ARCHITECTURES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise InputError(f"{source}: unsupported hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU)")
    if hf.get("mlp_bias"):
        raise InputError(f"{source}: mlp_bias=true is not supported")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise InputError(f"{source}: attention_bias=true on {model_type} (a bias on o_proj too) is not supported")
    window = hf.get("sliding_window") if (model_type == "mistral" or hf.get("use_sliding_window")) else None
    if window is not None and window < hf.get("max_position_embeddings", 0):
        raise InputError(f"{source}: sliding-window attention (sliding_window={window}) is not supported")
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
    scaling = {**legacy, **rope}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise InputError(f"{source}: unsupported rope type {rope_type!r}; supported: 'default', 'llama3'")
    with config_fields(source):
        rope_scaling = None
        if rope_type == "llama3":
            rope_scaling = RopeScaling(
                factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
        heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        return LlamaConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, rope_theta=float(rope_theta),
            rope_scaling=rope_scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2",
            max_position_embeddings=hf.get("max_position_embeddings", 8192), architecture=model_type,
            bos_token_id=hf.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos)


@contextlib.contextmanager
def config_fields(source: str):
    """Turn a missing key, a wrong type or a LlamaConfig check failing, while a config is built from
    the file `source`, into an error that names the file (the config file is bad, not our code)."""
    try:
        yield
    except AlignxError:
        raise
    except KeyError as error:
        raise KeyMismatchError(f"{source}: missing key {error.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise InputError(f"{source}: {error}") from None


def config_to_hf(config: LlamaConfig, torch_dtype: str = "float32"):
    """A transformers config object (the installed version writes its own config.json layout)."""
    import transformers

    c = config
    if c.attention_bias != (c.architecture == "qwen2"):
        raise InputError(f"attention_bias={c.attention_bias} cannot be exported as a {c.architecture} model")
    kwargs = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        head_dim=c.resolved_head_dim, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, max_position_embeddings=c.max_position_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
        hidden_act="silu", torch_dtype=torch_dtype, architectures=[_ARCHITECTURES[c.architecture]])
    if c.rope_scaling is not None:
        kwargs["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(c.rope_scaling)}
    if c.architecture == "llama":
        kwargs.update(attention_bias=False, mlp_bias=False)
        return transformers.LlamaConfig(**kwargs)
    if c.architecture == "qwen2":
        return transformers.Qwen2Config(use_sliding_window=False, **kwargs)
    return transformers.MistralConfig(sliding_window=None, **kwargs)
