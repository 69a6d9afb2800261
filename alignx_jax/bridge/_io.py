"""A trained bridge on disk, beside its policy: `<model>/bridge/bridge.json` + `bridge.safetensors`.

bridge.json: {"format": 1, "mode", "conditioning", "config" (BridgeConfig), "backbone" (the
encoder backbone's LlamaConfig, `num_layers` = the encoder layer, or null), "item_length",
"max_items"}.
bridge.safetensors: the parameter pytree flattened with '/' ('encoder/query', 'soft/table',
'backbone/layers/attn/q_proj/kernel', ...). Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from alignx_jax.bridge._networks import BridgeConfig
from alignx_jax.errors import InputError, MissingFileError, read_json
from alignx_jax.models import llama

FOLDER = "bridge"
CONFIG_FILE = "bridge.json"
PARAMS_FILE = "bridge.safetensors"
FORMAT = 1
MODES = ("learned", "official", "golden")
CONDITIONINGS = ("text", "soft")


@dataclasses.dataclass
class SavedBridge:
    """What a policy folder's bridge holds (params: numpy pytree)."""

    mode: str
    conditioning: str
    config: BridgeConfig
    backbone_config: llama.LlamaConfig | None
    item_length: int
    params: dict
    max_items: int = 16


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = np.ascontiguousarray(np.asarray(value))
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _llama_config(fields: dict, source: str) -> llama.LlamaConfig:
    try:
        fields = dict(fields)
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = llama.RopeScaling(**fields["rope_scaling"])
        if isinstance(fields.get("eos_token_id"), list):
            fields["eos_token_id"] = tuple(fields["eos_token_id"])
        return llama.LlamaConfig(**fields)
    except (TypeError, ValueError) as error:
        raise InputError(f"{source}: 'backbone' is not a LlamaConfig ({error})") from None


def save(folder: str | os.PathLike, bridge: SavedBridge) -> pathlib.Path:
    """Write `folder` (e.g. out_dir/model/bridge); returns it."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_flatten(bridge.params), str(folder / PARAMS_FILE))
    meta = {"format": FORMAT, "mode": bridge.mode, "conditioning": bridge.conditioning,
            "config": dataclasses.asdict(bridge.config),
            "backbone": None if bridge.backbone_config is None else dataclasses.asdict(bridge.backbone_config),
            "item_length": bridge.item_length, "max_items": bridge.max_items}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def has_bridge(model_folder: str | os.PathLike) -> bool:
    return (pathlib.Path(model_folder) / FOLDER / CONFIG_FILE).is_file()


def load(folder: str | os.PathLike) -> SavedBridge:
    """Read a bridge folder (or a model folder that holds `bridge/`)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = pathlib.Path(folder)
    if (folder / FOLDER / CONFIG_FILE).is_file():
        folder = folder / FOLDER
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: missing, so {folder} holds no preference bridge")
    meta = read_json(config_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{config_path}: not a bridge description of format {FORMAT}")
    if meta.get("mode") not in MODES or meta.get("conditioning") not in CONDITIONINGS:
        raise InputError(f"{config_path}: mode must be one of {MODES} and conditioning one of {CONDITIONINGS}")
    try:
        config = BridgeConfig(**meta["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"{config_path}: 'config' is not a BridgeConfig ({error})") from None
    backbone = None if meta.get("backbone") is None else _llama_config(meta["backbone"], str(config_path))
    try:
        params = _unflatten(load_file(str(folder / PARAMS_FILE)))
    except (FileNotFoundError, SafetensorError, OSError) as error:
        raise InputError(f"{folder / PARAMS_FILE}: not a readable safetensors file ({error})") from None
    return SavedBridge(meta["mode"], meta["conditioning"], config, backbone, int(meta.get("item_length", 0)), params,
                       int(meta.get("max_items", 16)))


def describe(bridge: SavedBridge) -> dict[str, Any]:
    return {"mode": bridge.mode, "conditioning": bridge.conditioning, "soft_tokens": bridge.config.soft_tokens,
            "encoder_layer": bridge.config.encoder_layer}
