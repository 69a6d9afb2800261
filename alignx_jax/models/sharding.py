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
    """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (all remaining devices); see `device_grid`."""
    return Mesh(device_grid(data, fsdp, tensor, devices), MESH_AXES)


def device_grid(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> np.ndarray:
    """The [data, fsdp, tensor] array of devices of a mesh; one size may be -1 (all remaining devices).

    The device order comes from the topology (`jax.experimental.mesh_utils`: on TPU, the torus
    order, so neighbours on an axis are neighbours on the chip network). Batches are fed per process
    (each process's rows are one block of the batch axes, in process order), so the layout must
    group each process's devices that way and keep `tensor` within a process (`layout_problem`);
    when the topology order does not, the devices are grouped by process instead, and when no order
    can, ValueError names why."""
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
    flat = list(devices.flat)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, flat, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError, AttributeError):  # no topology to follow
        grid = devices.reshape(sizes)
    if layout_problem(grid) is not None:
        grid = np.asarray(sorted(flat, key=lambda d: (d.process_index, d.id)), dtype=object).reshape(sizes)
        problem = layout_problem(grid)
        if problem is not None:
            raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: {problem}")
    return grid


def layout_problem(grid: np.ndarray) -> str | None:
    """Why a [data, fsdp, tensor] grid of devices cannot take per-process batches (None: it can). Each
    process feeds its own rows (and numbers its pairs) as one block of the batch axes (data, then
    fsdp), in process order, so: every `tensor` group lies within one process, and the batch shards
    are the processes' blocks in process order."""
    owner = np.vectorize(lambda d: getattr(d, "process_index", 0), otypes=[int])(grid)
    processes = int(owner.max()) + 1
    if processes == 1:
        return None
    blocks = owner.reshape(-1, owner.shape[-1])  # one row per batch shard: its tensor group's processes
    if (blocks != blocks[:, :1]).any():
        return (f"the tensor axis ({owner.shape[-1]}) spans processes: keep mesh.tensor within one host's "
                f"devices")
    shards = blocks[:, 0]
    if len(shards) % processes or (shards != np.repeat(np.arange(processes), len(shards) // processes)).any():
        return (f"the {len(shards)} batch shards (data x fsdp) do not split into {processes} processes' blocks of "
                f"devices in process order")
    return None


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
