"""Interop: model sources (`load_model`, `model_config`, `from_pretrained`), Hugging Face safetensors
folders, GGUF, our own folders, tokenizers."""
from alignx_jax.interop.gguf_file import EMBEDDED_ALIAS, embedded_gguf_path, load_gguf
from alignx_jax.interop.hf import load_hf, read_config, save_hf
from alignx_jax.interop.native import load_native, save_native
from alignx_jax.interop.pretrained import RANDOM, Pretrained, from_pretrained, load_model, load_params, model_config
from alignx_jax.interop.tokenizer import load_tokenizer

__all__ = ["EMBEDDED_ALIAS", "RANDOM", "Pretrained", "embedded_gguf_path", "from_pretrained", "load_gguf", "load_hf",
           "load_model", "load_native", "load_params", "load_tokenizer", "model_config", "read_config", "save_hf",
           "save_native"]
