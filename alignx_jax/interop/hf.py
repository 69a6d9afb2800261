"""Hugging Face folders (config.json + safetensors, single or sharded) <-> our params pytree.

Import reads tensor by tensor from memory-mapped safetensors and places each parameter on the
device (or straight into a target sharding) as soon as it is complete, so host memory stays near
one copy of the model. Export writes the same table backwards. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterable

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from alignx_jax.errors import InputError, KeyMismatchError, MissingFileError, cause
from alignx_jax.interop import _table
from alignx_jax.models import llama

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _np_dtype(name: str):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _read_json(path: pathlib.Path, expected: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({cause(error)}), expected {expected}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: holds a JSON {type(value).__name__}, expected {expected}")
    return value


def read_config(folder: str | os.PathLike) -> llama.LlamaConfig:
    path = pathlib.Path(folder) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing config.json, so {folder} is not a Hugging Face model folder")
    return _table.config_from_hf(_read_json(path, "a transformers model config (an object)"), source=str(path))


def _safe_open(path: pathlib.Path):
    try:
        return safetensors.safe_open(path, framework="numpy")
    except Exception as error:  # SafetensorError, OSError: a truncated or foreign file
        raise InputError(f"{path}: not a readable safetensors file ({cause(error)})") from error


def _weight_map(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file that holds it."""
    index = folder / INDEX_FILE
    if index.is_file():
        mapping = _read_json(index, "a safetensors index with a 'weight_map' object").get("weight_map")
        if not isinstance(mapping, dict):
            raise InputError(f"{index}: no 'weight_map' object (tensor name -> shard file)")
        files = {f: folder / f for f in set(mapping.values())}
        for f, p in files.items():
            if not p.is_file():
                raise MissingFileError(f"{p}: shard listed in {index} is missing")
        return {k: files[f] for k, f in mapping.items()}
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise MissingFileError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (weights load only from safetensors)")
    with _safe_open(single) as f:
        return {k: single for k in f.keys()}


def params_from_tensors(config: llama.LlamaConfig, keys: Iterable[str], get: Callable[[str], np.ndarray],
                        source: str, *, shardings=None) -> dict:
    """Assemble our params from a tensor source (HF names -> arrays), one parameter at a time.

    Each finished parameter is put on the device (`shardings`: an optional pytree of
    jax.sharding.Sharding matching the params) before the next is read.
    """
    keys = set(keys)
    shapes = llama.param_shapes(config)
    dtype = _np_dtype(config.param_dtype)
    wanted = {k for r in _table.active_rules(config) for k in _table.hf_keys(r, config)}
    missing = sorted(wanted - keys)
    if missing:
        raise KeyMismatchError(f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(k for k in keys - wanted if not k.endswith(_table.IGNORED_KEY_SUFFIXES)
                        and not (k == "lm_head.weight" and config.tie_word_embeddings))
    if unexpected:
        raise KeyMismatchError(f"{source}: unexpected tensor(s) {unexpected[:5]} for a {config.architecture} model")
    params: dict = {}
    for rule in _table.active_rules(config):
        target = shapes
        for name in rule.path:
            target = target[name]
        our_shape = tuple(target.shape)
        if rule.per_layer:
            value = np.empty(our_shape, dtype)
            for i, key in enumerate(_table.hf_keys(rule, config)):
                value[i] = _to_ours(rule, get(key), config, our_shape[1:], key, source)
        else:
            key = rule.hf_key
            value = _to_ours(rule, get(key), config, our_shape, key, source).astype(dtype)
        sharding = _lookup(shardings, rule.path) if shardings is not None else None
        node = params
        for name in rule.path[:-1]:
            node = node.setdefault(name, {})
        node[rule.path[-1]] = jax.device_put(value, sharding)
        del value
    return params


def _to_ours(rule: _table.Rule, value: np.ndarray, config: llama.LlamaConfig, shape, key: str, source: str):
    try:
        return rule.to_ours(value, config, shape, key)
    except InputError as error:  # a shape that disagrees with the config: say which file
        raise InputError(f"{source}: {error}") from None


def _lookup(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def load_hf(folder: str | os.PathLike, *, param_dtype: str | None = None, dtype: str | None = None,
            shardings=None) -> tuple[dict, llama.LlamaConfig]:
    """Import a Hugging Face folder. Returns (params, config)."""
    folder = pathlib.Path(folder)
    config = read_config(folder)
    config = config.replace(**{k: v for k, v in dict(param_dtype=param_dtype, dtype=dtype).items() if v})
    weight_map = _weight_map(folder)
    handles = {}

    def get(key):
        path = weight_map[key]
        if path not in handles:
            handles[path] = _safe_open(path)
        try:
            return handles[path].get_tensor(key)
        except Exception as error:  # the header promised the tensor, the bytes do not hold it
            raise InputError(f"{path}: cannot read tensor {key!r} ({cause(error)})") from error

    try:
        params = params_from_tensors(config, weight_map, get, str(folder), shardings=shardings)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
    return params, config


def _device_get(array) -> np.ndarray:
    return np.asarray(jax.device_get(array))


def hf_tensors(params: dict, config: llama.LlamaConfig, dtype: str = "float32", *,
               to_host: Callable[[Any], np.ndarray] = _device_get) -> Iterable[tuple[str, np.ndarray]]:
    """(HF name, array) pairs of our params, lazily, in table order. A stacked (scanned) weight is
    brought to host memory one layer at a time by `to_host` (a multi-host gather, where every process
    takes part in the same order), so the host holds one layer's weight, never the whole model."""
    np_dtype = _np_dtype(dtype)
    for rule in _table.active_rules(config):
        value = _lookup(params, rule.path)
        whole = None if rule.per_layer else to_host(value)
        for i, key in enumerate(_table.hf_keys(rule, config)):
            layer = to_host(value[i]) if rule.per_layer else whole
            yield key, rule.to_hf(layer, config).astype(np_dtype)


def save_hf(params: dict, config: llama.LlamaConfig, folder: str | os.PathLike, *, dtype: str = "float32",
            max_shard_bytes: int = 5 * 2**30, tokenizer=None, to_host: Callable[[Any], np.ndarray] = _device_get,
            write: bool = True) -> pathlib.Path:
    """Write a folder that transformers.AutoModelForCausalLM.from_pretrained loads.

    Shards above `max_shard_bytes` into model-0000k-of-0000n.safetensors with an index.json, as
    transformers does; `tokenizer` (a transformers tokenizer) is saved beside the weights. Weights
    reach the host through `to_host`, one layer at a time (`hf_tensors`); `write=False` only takes
    part in those gathers (the other processes of a multi-host export that process 0 writes).
    """
    folder = pathlib.Path(folder)
    hf_config = _table.config_to_hf(config, torch_dtype=dtype)  # refuses an unexportable config before any write
    if not write:
        for _ in hf_tensors(params, config, dtype, to_host=to_host):
            pass
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    metadata = {"format": "pt"}  # transformers refuses safetensors files without this tag
    # Stream: each shard is written as soon as it is full (host memory ~ one shard), under a
    # temporary name until the number of shards is known.
    written: list[tuple[pathlib.Path, list[str], int]] = []
    shard: dict[str, np.ndarray] = {}
    shard_bytes = 0

    def flush():
        path = folder / f"model-part{len(written):05d}.tmp.safetensors"
        safetensors.numpy.save_file(shard, path, metadata=metadata)
        written.append((path, list(shard), shard_bytes))
        shard.clear()

    for key, value in hf_tensors(params, config, dtype, to_host=to_host):
        if shard and shard_bytes + value.nbytes > max_shard_bytes:
            flush()
            shard_bytes = 0
        shard[key] = value
        shard_bytes += value.nbytes
    flush()
    if len(written) == 1:
        written[0][0].rename(folder / SINGLE_FILE)
    else:
        weight_map = {}
        for n, (path, keys, _) in enumerate(written, start=1):
            name = f"model-{n:05d}-of-{len(written):05d}.safetensors"
            path.rename(folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": sum(w[2] for w in written)}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    hf_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
