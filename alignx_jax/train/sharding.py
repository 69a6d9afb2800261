"""Devices for a run: `jax.distributed` start-up, the (data, fsdp, tensor) mesh, and where every array lives.

Parameters follow the one rules table (`models/sharding.py`); the optimizer state mirrors the
parameters it tracks (`optax.tree_map_params`), scalars are replicated; LoRA adapters are small and
replicated. Batches split their rows over ('data', 'fsdp').
"""
from __future__ import annotations

import os

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignx_jax.errors import InputError
from alignx_jax.models import llama
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train.config import DistributedConfig, MeshConfig

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(config: DistributedConfig) -> None:
    """`jax.distributed.initialize` from the config ("explicit"), from the cluster's environment
    ("auto": TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), or not
    at all ("off"); nothing when it already ran. On CPU the collectives across processes use gloo."""
    if config.initialize == "off" or jax.distributed.is_initialized():
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.initialize == "explicit":
        missing = [k for k in ("coordinator_address", "num_processes", "process_id") if getattr(config, k) is None]
        if missing:
            raise InputError(f"config key 'distributed.{missing[0]}' is required when distributed.initialize is 'explicit'")
        jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    else:
        jax.distributed.initialize()


def make_mesh(config: MeshConfig) -> Mesh:
    try:
        return model_sharding.make_mesh(config.data, config.fsdp, config.tensor)
    except ValueError as error:
        raise InputError(f"config key 'mesh': {error}") from None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shardings(mesh: Mesh, *, micro_batches: bool = True) -> tuple[NamedSharding, NamedSharding]:
    """(rows [A, B, T] split on B, pairs [A, P] split on P) over the data-parallel axes; without the
    micro-batch axis A: ([B, T], [P])."""
    lead = (None,) if micro_batches else ()
    return (NamedSharding(mesh, PartitionSpec(*lead, BATCH_AXES, None)),
            NamedSharding(mesh, PartitionSpec(*lead, BATCH_AXES)))


def param_shardings(model: llama.LlamaConfig, mesh: Mesh):
    return model_sharding.param_shardings(model, mesh)


def optimizer_shardings(optimizer: optax.GradientTransformation, params_shapes, params_shardings, mesh: Mesh):
    """Shardings of `optimizer.init(params)`: moment trees like the params, everything else replicated."""
    state_shapes = jax.eval_shape(optimizer.init, params_shapes)
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, state_shapes, params_shardings,
                                 transform_non_params=lambda _: replicated(mesh))
