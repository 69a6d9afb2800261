"""Logical axis names -> mesh axes: the one table that decides the parallelism.

Mesh axes: 'data' (pure data parallel), 'fsdp' (data parallel with sharded params and optimizer
state), 'tensor' (Megatron-style: heads, MLP width and vocabulary split). Changing the
parallelism means changing the mesh shape or this table, never model code.
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignx_jax.models import llama

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes or None). The first rule whose mesh axis is still free wins.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (all remaining devices)."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: at most one may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if devices.size % known:
            raise ValueError(f"{devices.size} devices do not divide into mesh sizes {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} need {int(np.prod(sizes))} devices, have {devices.size}")
    return Mesh(devices.reshape(sizes), MESH_AXES)


def param_specs(config: llama.LlamaConfig, mesh_shape: Mapping[str, int], rules=DEFAULT_RULES):
    """PartitionSpecs of every parameter on a mesh of `mesh_shape` ({'data': 2, 'fsdp': 32, ...}),
    from the logical-axis table; needs no devices (memory planning for a pod on a laptop).

    A mesh axis that does not divide the dimension it would shard is dropped for that parameter
    (e.g. SmolLM2's 9 heads on a tensor axis of 2 stay replicated) instead of failing to compile; so
    is a mesh axis of size 1 (it shards nothing), so the specs name only the axes that split a dimension.
    """
    shapes = llama.param_shapes(config)
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    logical = jax.tree.map(lambda spec: nn.logical_to_mesh_axes(tuple(spec), rules), llama.logical_axes(config),
                           is_leaf=is_spec)

    def fit(shape, spec):
        spec = tuple(spec) + (None,) * (len(shape.shape) - len(spec))
        fitted = []
        for dim, axes in zip(shape.shape, spec):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = int(np.prod([mesh_shape[a] for a in names])) if names else 1
            fitted.append(axes if size > 1 and dim % size == 0 else None)
        return PartitionSpec(*fitted)

    return jax.tree.map(fit, shapes, logical, is_leaf=is_spec)


def param_shardings(config: llama.LlamaConfig, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings of every parameter of `config` on `mesh` (see `param_specs`)."""
    specs = param_specs(config, dict(mesh.shape), rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
