"""Our own model folder: `alignx_model.json` (the LlamaConfig) + `params/` (an orbax checkpoint).

`alignx convert hf-to-jax` writes it; from_pretrained and `convert jax-to-hf` read it. Tokenizer
files, when known, are saved beside them so the folder is self-contained.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import orbax.checkpoint as ocp

from alignx_jax.errors import InputError, MissingFileError, cause
from alignx_jax.interop._table import config_fields
from alignx_jax.models import llama

CONFIG_FILE = "alignx_model.json"
PARAMS_DIR = "params"


def config_to_json(config: llama.LlamaConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2)


def config_from_json(text: str, source: str = CONFIG_FILE) -> llama.LlamaConfig:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(fields, dict):
        raise InputError(f"{source}: holds a JSON {type(fields).__name__}, expected an object of LlamaConfig fields")
    known = {f.name for f in dataclasses.fields(llama.LlamaConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"{source}: unknown LlamaConfig field(s) {unknown}")
    missing = [f.name for f in dataclasses.fields(llama.LlamaConfig)
               if f.default is dataclasses.MISSING and f.name not in fields]
    if missing:
        raise InputError(f"{source}: missing LlamaConfig field(s) {missing}")
    with config_fields(source):  # a missing field, a wrong type or a failed LlamaConfig check
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = llama.RopeScaling(**fields["rope_scaling"])
        if isinstance(fields.get("eos_token_id"), list):
            fields["eos_token_id"] = tuple(fields["eos_token_id"])
        return llama.LlamaConfig(**fields)


def is_native(folder: str | os.PathLike) -> bool:
    return (pathlib.Path(folder) / CONFIG_FILE).is_file()


def save_native(params: dict, config: llama.LlamaConfig, folder: str | os.PathLike, *, tokenizer=None) -> pathlib.Path:
    """Write the folder. With several processes every one calls it (orbax writes the sharded params
    collectively); process 0 writes the config and tokenizer files."""
    folder = pathlib.Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (folder / CONFIG_FILE).write_text(config_to_json(config))
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    return folder


def load_native(folder: str | os.PathLike, *, shardings=None) -> tuple[dict, llama.LlamaConfig]:
    """Restore (params, config); `shardings` (a pytree of Sharding) places params directly."""
    folder = pathlib.Path(folder).absolute()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: missing, so {folder} is not an alignx_jax model folder")
    if not (folder / PARAMS_DIR).is_dir():
        raise MissingFileError(f"{folder / PARAMS_DIR}: missing parameter checkpoint")
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{config_path}: not UTF-8 text ({cause(e)}), expected a JSON LlamaConfig") from None
    config = config_from_json(text, str(config_path))
    shapes = llama.param_shapes(config)
    if shardings is not None:
        shapes = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    try:
        params = ocp.StandardCheckpointer().restore(folder / PARAMS_DIR, shapes)
    except Exception as e:  # orbax raises several types for truncated or mismatched checkpoints
        raise InputError(f"{folder / PARAMS_DIR}: cannot restore the parameters that {config_path.name} describes, "
                         f"expected an orbax checkpoint written by `alignx convert hf-to-jax` ({cause(e)})") from e
    return params, config
