"""Model sources: the embedded model, Hugging Face folders, our folders, GGUF files and random presets.

    config = model_config(source, **numerics)            # the architecture without the weights (None: GGUF)
    params, config = load_model(source, shardings=fn)     # weights placed as fn(config) says (a mesh's rules)
    model = from_pretrained(source)                       # a callable, generating `Pretrained`

The one home of "what is this model name": training (`model:` in a config), `alignx eval`,
`alignx generate` and the judges all resolve sources here.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

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


RANDOM = "random"  # a source name: random init of a named preset (`llama.preset`), for tests and benchmarks


def model_config(source: str | os.PathLike, *, preset: str | None = None, overrides: Mapping[str, Any] | None = None,
                 **numerics: Any) -> llama.LlamaConfig | None:
    """The architecture of a model source without loading its weights, with `numerics` (dtype,
    param_dtype, remat, attention_impl) applied: `RANDOM` (the `preset` with `overrides`), one of
    our folders, a Hugging Face folder; None for GGUF (the alias or a .gguf file: read with the weights).
    Raises ValueError / TypeError for a bad preset or override, MissingFileError for a missing source."""
    numerics = {k: v for k, v in numerics.items() if v is not None}
    if str(source) == RANDOM:
        return llama.preset(preset, **{**dict(overrides or {}), **numerics})
    path = pathlib.Path(source)
    if str(source) == gguf_file.EMBEDDED_ALIAS or path.suffix == ".gguf":
        return None
    if not path.exists():
        raise MissingFileError(f"{source}: no such model folder (nor the alias {gguf_file.EMBEDDED_ALIAS!r} or "
                               f"{RANDOM!r})")
    if native.is_native(path):
        base = native.config_from_json((path / native.CONFIG_FILE).read_text(), str(path / native.CONFIG_FILE))
    else:
        base = hf.read_config(path)
    return base.replace(**numerics)


def load_model(source: str | os.PathLike, *, shardings: Callable[[llama.LlamaConfig], Any] | None = None,
               seed: int = 0, preset: str | None = None, overrides: Mapping[str, Any] | None = None,
               param_dtype: str | None = None, dtype: str | None = None, **numerics: Any
               ) -> tuple[dict, llama.LlamaConfig]:
    """(params, config) of a model source, the params placed by `shardings(config)` (e.g.
    `lambda c: models.sharding.param_shardings(c, mesh)`; None: where JAX puts them).

    `RANDOM` initializes directly in the sharded form (key `seed`); folders load each tensor into
    its shard; GGUF loads on the host, then places. `numerics` (remat, attention_impl) go into the config.
    """
    if str(source) == RANDOM:
        config = model_config(source, preset=preset, overrides=overrides, param_dtype=param_dtype, dtype=dtype,
                              **numerics)
        init = jax.jit(llama.init_params, static_argnums=0,
                       out_shardings=None if shardings is None else shardings(config))
        return init(config, jax.random.key(seed)), config
    known = model_config(source, param_dtype=param_dtype, dtype=dtype, **numerics) if shardings is not None else None
    params, loaded = load_params(source, param_dtype=param_dtype, dtype=dtype,
                                 shardings=None if known is None else shardings(known))
    config = loaded.replace(**{k: v for k, v in dict(dtype=dtype, **numerics).items() if v is not None})
    if known is None and shardings is not None:  # GGUF: loaded on the host first, then placed
        params = jax.device_put(params, shardings(config))
    return params, config
