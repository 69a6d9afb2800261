"""`from_pretrained`: one entry point for the embedded model, Hugging Face folders and our folders."""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.errors import InputError, MissingFileError
from alignx_jax.interop import gguf_file, hf, native
from alignx_jax.interop.tokenizer import load_tokenizer
from alignx_jax.models import decoding, llama

_forward = jax.jit(llama.forward, static_argnames=("config", "return_hidden"))


@dataclasses.dataclass
class Pretrained:
    """A loaded causal LM: `model(tokens [B, T] int32) -> logits [B, T, V]`."""

    params: dict
    config: llama.LlamaConfig
    source: str

    def __call__(self, tokens, *, positions=None, attention_mask=None) -> jax.Array:
        return _forward(self.params, jnp.asarray(tokens, jnp.int32), self.config, positions=positions,
                        attention_mask=attention_mask)

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.source)

    def generate(self, prompts: list[list[int]], sampling: decoding.Sampling = decoding.Sampling(),
                 seed: int = 0) -> list[list[int]]:
        """Continue each token-id prompt; returns the new ids of each, up to and including EOS."""
        return decoding.generate_ids(self.params, prompts, jax.random.key(seed), config=self.config,
                                     sampling=sampling)

    def chat(self, messages_batch: list[list[dict]], sampling: decoding.Sampling = decoding.Sampling(),
             seed: int = 0) -> list[str]:
        """Answer each conversation (a list of {'role', 'content'}) through the model's chat template."""
        tok = self.tokenizer
        prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m in messages_batch]
        prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
        return [tok.decode(ids, skip_special_tokens=True) for ids in self.generate(prompts, sampling, seed)]

    def save_hf(self, folder: str | os.PathLike, *, dtype: str = "float32", **kwargs) -> pathlib.Path:
        return hf.save_hf(self.params, self.config, folder, dtype=dtype, tokenizer=self.tokenizer, **kwargs)

    def save(self, folder: str | os.PathLike) -> pathlib.Path:
        return native.save_native(self.params, self.config, folder, tokenizer=self.tokenizer)


def load_params(path_or_alias: str | os.PathLike, *, param_dtype: str | None = None, dtype: str | None = None,
                shardings=None) -> tuple[dict, llama.LlamaConfig]:
    """(params, config) of the embedded alias, a Hugging Face folder, or one of our folders."""
    if str(path_or_alias) == gguf_file.EMBEDDED_ALIAS:
        return gguf_file.load_gguf(param_dtype=param_dtype or "float32", dtype=dtype or "float32", shardings=shardings)
    path = pathlib.Path(path_or_alias)
    if not path.exists():
        raise MissingFileError(f"{path}: no such model folder (nor the alias {gguf_file.EMBEDDED_ALIAS!r})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError(f"{path}: a file, expected a model folder (Hugging Face or alignx_jax) or a .gguf file")
        return gguf_file.load_gguf(path, param_dtype=param_dtype or "float32", dtype=dtype or "float32",
                                   shardings=shardings)
    if native.is_native(path):
        params, config = native.load_native(path, shardings=shardings)
        changes = {k: v for k, v in dict(param_dtype=param_dtype, dtype=dtype).items() if v}
        if changes.get("param_dtype"):
            params = jax.tree.map(lambda x: x.astype(changes["param_dtype"]), params)
        return params, config.replace(**changes)
    return hf.load_hf(path, param_dtype=param_dtype, dtype=dtype, shardings=shardings)


def from_pretrained(path_or_alias: str | os.PathLike, *, param_dtype: str | None = None, dtype: str | None = None,
                    shardings=None) -> Pretrained:
    """Load 'smollm2-135m-instruct' (the embedded GGUF), a Hugging Face folder or our model folder."""
    params, config = load_params(path_or_alias, param_dtype=param_dtype, dtype=dtype, shardings=shardings)
    return Pretrained(params, config, str(path_or_alias))
