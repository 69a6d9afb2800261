"""The one scoring service: packed pair batches on a mesh -> per-pair (and per-record) log-probs.

    scorer = PairScorer(mesh)                                     # the training mesh rules: rows over (data, fsdp)
    params = scorer.place(params, config)                         # the model's sharding rules (fsdp, tensor)
    out = scorer(params, config, host_batch)                      # PairLogprobs of numpy [P]: summed log-probs, tokens
    chosen, rejected = scorer.score_records(params, config, batches, num_records)   # filed by `pair_source`
    trunk = scorer.trunk(params, config, host_batch, layers=k)    # the first k layers' output, kept on the mesh
    out = scorer(policy_params, config, host_batch, trunk=trunk, trunk_layers=k)   # only the layers above run

Every caller that scores pairs outside the training step goes through here: `alignx eval`
(`iter_scores`), the training run's held-out evaluation and start-model scores, and the reference
cache. Every process passes the same host batch and contributes its slice of the rows, so the same
code serves one device, a mesh and several hosts. Forward only (`models.scoring.pair_logprobs`
with `differentiable=False`): the scored tokens reach the LM head, the prompts only the decoder.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignx_jax import data, kernels
from alignx_jax.models import scoring
from alignx_jax.models import sharding as model_sharding

BATCH_AXES = ("data", "fsdp")  # rows (and pair slots) split over the data-parallel axes, as in training

_pair_logprobs = jax.jit(scoring.pair_logprobs, static_argnames=("config", "num_pairs", "scored_length", "differentiable",
                                                           "kernel_impl", "trunk_layers"))
_trunk_states = jax.jit(scoring.trunk_states, static_argnames=("config", "layers"))


def default_buckets(max_tokens: int, smallest: int = 64) -> tuple[int, ...]:
    """Scored-token buckets: powers of two from `smallest` up to `max_tokens` (included)."""
    buckets, size = [], smallest
    while size < max_tokens:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (max_tokens,)


def _local(rows: np.ndarray) -> np.ndarray:
    """This process's equal share of a host array's leading axis."""
    share = len(rows) // jax.process_count()
    return rows[jax.process_index() * share:(jax.process_index() + 1) * share]


def _gather(array: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class PairScorer:
    """Scores packed pair batches on `mesh` (default: every device on 'fsdp', training's default).

    kernel_impl: the fused log-prob kernel. buckets: the static scored-token lengths to compile
    (default: powers of two up to the batch's token count).
    """

    def __init__(self, mesh: Mesh | None = None, *, kernel_impl: str = "auto", buckets: Sequence[int] | None = None):
        self.mesh = mesh if mesh is not None else model_sharding.make_mesh()
        self.kernel_impl = kernel_impl
        self.buckets = None if buckets is None else tuple(buckets)
        self.row_sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, None))
        self.pair_sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))

    @property
    def row_multiple(self) -> int:
        """Rows (and pair slots) per batch must be a multiple of this: the data-parallel shards."""
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def rows_for(self, rows: int) -> int:
        """`rows` rounded up to what a batch on this mesh can hold: a multiple of `row_multiple` (each
        data-parallel shard gets whole rows) and of the process count (each process feeds its slice)."""
        multiple = math.lcm(self.row_multiple, jax.process_count())
        return -(-max(rows, 1) // multiple) * multiple

    def place(self, params: Any, config: Any) -> Any:
        """`params` laid out by the model's sharding rules on this mesh (a no-op when they already are)."""
        return jax.device_put(params, model_sharding.param_shardings(config, self.mesh))

    def _device_rows(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """The batch's row arrays on the mesh, this process contributing its slice of the rows."""
        rows, processes = len(batch["tokens"]), jax.process_count()
        if rows % processes:
            raise ValueError(f"{rows} rows do not divide over {processes} processes")
        keys = data.ROW_KEYS + tuple(k for k in data.OPTIONAL_ROW_KEYS if k in batch)
        return {k: jax.make_array_from_process_local_data(self.row_sharding, _local(np.asarray(batch[k])))
                for k in keys}

    def trunk(self, params: Any, config: Any, batch: Mapping[str, np.ndarray], *, layers: int) -> jax.Array:
        """`scoring.trunk_states` of one host batch: the residual stream [B, T, D] after the first
        `layers` decoder layers, left on the mesh (rows over the batch axes) to be passed back as
        `trunk=` for any params that share those layers (a LoRA policy on the top layers and its base)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            return _trunk_states(params, config, self._device_rows(batch), layers=layers)

    def __call__(self, params: Any, config: Any, batch: Mapping[str, np.ndarray], *, num_pairs: int | None = None,
                 soft_tokens: np.ndarray | None = None, trunk: jax.Array | None = None,
                 trunk_layers: int = 0) -> scoring.PairLogprobs:
        """PairLogprobs (numpy [P]) of one host batch (`data.PackedBatch.as_dict()`), the same on every
        process. num_pairs: the pair slots P (default `len(batch["pair_valid"])`); soft_tokens:
        [P, K, D] soft preference tokens for the prompts' slots (None: the slots' own tokens);
        trunk: this batch's `trunk(..., layers=trunk_layers)`, so that only the layers above run."""
        num_pairs = len(batch["pair_valid"]) if num_pairs is None else num_pairs
        if num_pairs % jax.process_count():
            raise ValueError(f"{num_pairs} pair slots do not divide over {jax.process_count()} processes")
        arrays = self._device_rows(batch)
        soft = None if soft_tokens is None else jax.make_array_from_process_local_data(
            self.pair_sharding, _local(np.asarray(soft_tokens, np.float32)))
        buckets = self.buckets or default_buckets(batch["tokens"].size)
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]  # the LM head runs on each device's rows
        length = kernels.bucket_length(scoring.scored_token_count(batch, shards), buckets)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            out = _pair_logprobs(params, config, arrays, num_pairs=num_pairs, scored_length=length,
                                 differentiable=False, kernel_impl=self.kernel_impl, soft_tokens=soft, trunk=trunk,
                                 trunk_layers=trunk_layers)
        return scoring.PairLogprobs(*(_gather(x) for x in out))

    def score_records(self, params: Any, config: Any, batches: Iterable[Mapping[str, np.ndarray]], num_records: int,
                      *, soft_tokens: np.ndarray | None = None, trunks: Sequence[jax.Array] | None = None,
                      trunk_layers: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) summed log-probs per record, float64 [num_records], of packed batches whose
        `pair_source` names each pair's record; NaN where a record's pair was dropped. soft_tokens:
        [num_records, K, D], each pair's looked up by its record; trunks: each batch's `trunk`."""
        chosen = np.full((num_records,), np.nan, np.float64)
        rejected = np.full((num_records,), np.nan, np.float64)
        for i, batch in enumerate(batches):
            soft = None if soft_tokens is None else soft_tokens[np.maximum(batch["pair_source"], 0)]
            trunk = None if trunks is None else trunks[i]
            out = self(params, config, batch, soft_tokens=soft, trunk=trunk, trunk_layers=trunk_layers)
            valid = np.asarray(batch["pair_valid"])
            source = np.asarray(batch["pair_source"])[valid]
            chosen[source], rejected[source] = out.chosen[valid], out.rejected[valid]
        return chosen, rejected
