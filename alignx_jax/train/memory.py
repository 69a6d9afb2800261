"""Per-device memory of a training run, planned without devices (an 8B pod config checked on a laptop).

    trained      the model's shards (models/sharding.param_specs on the config's mesh) in full
                 fine-tuning, or the LoRA adapters (replicated)
    optimizer    AdamW's two moments of what is trained; gradients: one more copy
    reference    the frozen copy (frozen mode) or the LoRA base = the parameters; none when precomputed
    accumulation the summed gradients of the micro-batches (a second gradient copy) when accumulating
    optimizer_temporaries  AdamW's updates before they are applied (one more copy of what is trained)
    gathered     FSDP's all-gathered weights of one decoder layer (forward, and the backward's copy with
                 that layer's full fp32 weight gradient before its reduce-scatter), over `tensor` only
    lm_head      the LM head inside its shard_map: the gathered [D, V / tensor] weight and its gradient
                 (compute dtype, then fp32 before the reduce-scatter) on every device
    activations  one micro-batch's rows on this device: with remat, each layer's input [tokens, D] is
                 kept and one layer's working set is live; without, every layer's working set is kept.
                 The working set counts q/k/v/o, the MLP's gate/up/hidden and the residuals, twice
                 (forward values and their gradients); flash attention keeps no [T, T] scores.

Checked against XLA's own per-device total by `alignx compile` (docs/pods.md, docs/benchmarks.md).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np

from alignx_jax.models import llama
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import lora
from alignx_jax.train.config import TrainConfig

GIB = 2**30


def _local_size(shape: tuple[int, ...], spec, mesh_shape: Mapping[str, int]) -> int:
    size = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size *= math.ceil(dim / int(np.prod([mesh_shape[a] for a in names])) if names else dim)
    return size


def per_device_gib(config: TrainConfig, model: llama.LlamaConfig, mesh_shape: Mapping[str, int]) -> dict[str, float]:
    """GiB per device of each part (module docstring) and their `total`."""
    shapes = llama.param_shapes(model)
    specs = model_sharding.param_specs(model, mesh_shape)
    param_bytes = np.dtype(model.param_dtype).itemsize
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    local = jax.tree.map(lambda s, spec: _local_size(s.shape, spec, mesh_shape), shapes, specs, is_leaf=is_spec)
    params = sum(jax.tree.leaves(local)) * param_bytes
    if config.reference == "lora":
        adapters = jax.eval_shape(lambda p: lora.init_adapters(p, config.lora, jax.random.key(0)), shapes)
        trained = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(adapters))
    else:
        trained = params
    reference = 0 if config.reference == "precomputed" else params
    act_bytes = np.dtype(model.dtype).itemsize
    rows = config.data.rows / (mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1))
    tokens = rows * config.data.seq_lengths[-1]
    tensor = mesh_shape.get("tensor", 1)
    d, h = model.hidden_size, model.resolved_head_dim
    width = 4 * d + (2 * model.num_heads + 2 * model.num_kv_heads) * h / tensor + 3 * model.intermediate_size / tensor
    layer = 2 * tokens * width * act_bytes
    if model.remat:
        activations = model.num_layers * tokens * d * act_bytes + layer
    else:
        activations = model.num_layers * layer
    full_fine_tuning = config.reference != "lora"
    accumulation = trained if config.optimizer.accumulation > 1 else 0
    layer_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["layers"])) / model.num_layers
    gathered = layer_params / tensor * (2 * act_bytes + 4) if full_fine_tuning else layer_params / tensor * act_bytes
    head = d * model.vocab_size / tensor
    lm_head = head * (2 * act_bytes + 4) if full_fine_tuning else head * act_bytes
    parts = {"trained": trained, "optimizer": 2 * trained, "gradients": trained, "accumulation": accumulation,
             "optimizer_temporaries": trained, "reference": reference, "gathered": gathered, "lm_head": lm_head,
             "activations": activations}
    gib = {name: value / GIB for name, value in parts.items()}
    gib["total"] = sum(gib.values())
    return gib
