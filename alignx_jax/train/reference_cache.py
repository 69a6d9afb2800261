"""Precomputed reference log-probs: one forward pass of the reference over the training records, cached
on disk and keyed by a content hash of (reference weights, records, tokenizer, packing, prompt, seed).

A record's persona draw depends only on (seed, its index), so its reference log-probs are the same
in every epoch and in any shuffle: the cache is two float32 arrays indexed by record, and a training
batch reads them through `pair_source`. A second run with the same inputs finds the file and skips
the pass; any change of weights, records or packing changes the key.

Several hosts: each packs only its share of the records; every step scores the processes' batches
put together (`PairScorer` takes the same host batch everywhere and each process contributes its own
rows), so every process ends with every record's values. Weights are hashed where they live (a
checksum per weight, computed on the devices), never copied to one host. Process 0 writes the pass
in pieces of `PIECE_BATCHES` batches as it goes (`reference_logps_<key>.pieces/`), so a killed pass
resumes after its last piece, and decides for all whether the cache file or the pieces exist.
`reference_cache_dir` may be a URL (`gs://bucket/cache`): every file operation goes through
`etils.epath` (fsspec; gcsfs for gs://), never `pathlib`, which turned it into a local `gs:/` folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from alignx_jax import data
from alignx_jax.errors import InputError, cause
from alignx_jax.train import data as train_data
from alignx_jax.train import hosts

NAMES = ("ref_chosen", "ref_rejected")
PIECE_BATCHES = 16  # host batches per piece file: what a killed pass loses at most


def _bits(leaf: jax.Array) -> jax.Array:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[leaf.dtype.itemsize]
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def _checksums(leaves: Sequence[jax.Array]) -> jax.Array:
    """[len(leaves), 2] uint32: two position-weighted sums of each leaf's bits, mod 2**32 (exact integer
    sums: the same for any sharding and reduction order)."""
    sums = []
    for leaf in leaves:
        bits = _bits(leaf)
        position = jnp.zeros(leaf.shape, jnp.uint32)
        stride = 1
        for axis in reversed(range(leaf.ndim)):
            position = position + jax.lax.broadcasted_iota(jnp.uint32, leaf.shape, axis) * np.uint32(stride % 2**32)
            stride *= leaf.shape[axis]
        first = jnp.sum(bits * (position * np.uint32(0x9E3779B1) + np.uint32(1)), dtype=jnp.uint32)
        second = jnp.sum((bits ^ (position * np.uint32(0x85EBCA77) + np.uint32(0x27D4EB2F))) * np.uint32(0xC2B2AE3D),
                         dtype=jnp.uint32)
        sums.append(jnp.stack([first, second]))
    return jnp.stack(sums)


def weights_fingerprint(params: Any, mesh) -> bytes:
    """Every weight's path, dtype, shape and two 32-bit checksums of its bits, computed on the devices
    where the weight lives (a sharded weight is never gathered), the same bytes on every process."""
    paths, leaves = zip(*jax.tree_util.tree_leaves_with_path(params), strict=True)
    sums = jax.jit(_checksums, out_shardings=NamedSharding(mesh, PartitionSpec()))(list(leaves))
    sums = np.asarray(sums.addressable_data(0))
    described = [f"{jax.tree_util.keystr(p)}:{leaf.dtype}:{leaf.shape}:{s[0]}:{s[1]}"
                 for p, leaf, s in zip(paths, leaves, sums, strict=True)]
    return "\n".join(described).encode()


def records_fingerprint(own_records: Iterable[Mapping[str, Any]]) -> bytes:
    """blake2b of this process's records as JSON, gathered from every process in process order."""
    digest = hashlib.blake2b(digest_size=16)
    for record in own_records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    own = np.frombuffer(digest.digest(), np.uint8)
    if jax.process_count() == 1:
        return own.tobytes()
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(own)).tobytes()


def content_key(params: Any, mesh, own_records: Iterable[Mapping[str, Any]], *, tokenizer_name: str,
                packing: Mapping[str, Any]) -> str:
    """blake2b over the weights' fingerprint, the records and the packing / prompt / seed description."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(weights_fingerprint(params, mesh))
    digest.update(records_fingerprint(own_records))
    digest.update(json.dumps({"tokenizer": tokenizer_name, **packing}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _save(path: epath.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`np.savez` written to a temporary name and renamed: a kill leaves the old file or the new one."""
    tmp = path.parent / (path.name + f".tmp{os.getpid()}.npz")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _load(path: epath.Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f, np.load(f) as saved:
        return {name: saved[name] for name in saved.files}


def _read_pieces(folder: epath.Path, num_records: int) -> tuple[int, np.ndarray]:
    """(pieces, values [2, num_records]): the leading run of readable piece files, NaN elsewhere."""
    values = np.full((2, num_records), np.nan, np.float32)
    count = 0
    while (folder / f"{count:06d}.npz").exists():
        try:
            piece = _load(folder / f"{count:06d}.npz")
            values[:, piece["source"]] = piece["values"]
        except Exception:  # a torn last piece: score its batches again
            break
        count += 1
    return count, values


def _empty_batch(packing: data.PackingConfig, soft: bool) -> dict[str, np.ndarray]:
    """A host batch of padding only (no pair): what a process whose records are done contributes."""
    rows, length, slots = packing.rows, packing.seq_lengths[0], packing.num_pair_slots
    batch = {key: np.zeros((rows, length), np.int32) for key in ("tokens", "positions", "segment_ids", "roles", "targets")}
    batch.update(chosen_mask=np.zeros((rows, length), bool), rejected_mask=np.zeros((rows, length), bool),
                 pair_ids=np.full((rows, length), -1, np.int32), pair_valid=np.zeros((slots,), bool),
                 pair_source=np.full((slots,), -1, np.int32))
    if soft:
        batch["soft_slots"] = np.full((rows, length), -1, np.int32)
    return batch


def global_batches(local: Iterator[Mapping[str, np.ndarray]], packing: data.PackingConfig, *, soft: bool = False
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Every process's next local batch put together in process order (rows padded to the longest,
    pair ids offset by each process's pair slots): the same host batch on every process, whose row
    slice `p` is process p's own. A process whose records are done adds padding, until all are."""
    if jax.process_count() == 1:
        yield from local
        return
    from jax.experimental import multihost_utils

    while True:
        batch = next(local, None)
        if hosts.all_processes(batch is None):
            return
        batch = dict(_empty_batch(packing, soft) if batch is None else batch)
        (length,) = train_data.all_max([batch["tokens"].shape[1]])
        batch = train_data.pad_rows(batch, length)
        slots = len(batch["pair_valid"])
        stored = {k: v.astype(np.int32) for k, v in batch.items()}  # bool masks travel as int32
        gathered = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(stored).items()}
        gathered["pair_ids"] = np.where(gathered["pair_ids"] >= 0, gathered["pair_ids"]
                                        + np.arange(jax.process_count())[:, None, None] * slots, -1)
        yield {k: np.concatenate(list(v)).astype(batch[k].dtype) for k, v in gathered.items()}


def precompute(run, message: Callable[[str], None], *, stop: Callable[[], bool] = lambda: False
               ) -> dict[str, np.ndarray] | None:
    """The run's reference log-probs of its training records (`Run.scorer` over the start model), from
    the cache when its key matches, else scored in pieces (resuming after the last piece written).
    None when `stop()` turned true on any process (SIGTERM): every process stops after the same piece."""
    config = run.config
    fmt = run.prompt_format()
    packing = train_data.packing_config(config.data, jax.process_count())
    describe = {"packing": dataclasses.asdict(train_data.packing_config(config.data)), "prompt": dataclasses.asdict(fmt),
                "seed": config.seed, "on_long_response": config.data.on_long_response}
    params = run.state.params if run.state.frozen is None else run.state.frozen
    key = content_key(params, run.mesh, run.splits.own_train,
                      tokenizer_name=str(config.model.tokenizer or config.model.name), packing=describe)
    cache_dir = epath.Path(config.reference_cache_dir or run.out_dir.parent / ".reference_cache")
    path = cache_dir / f"reference_logps_{key}.npz"
    pieces = cache_dir / f"reference_logps_{key}.pieces_of_{PIECE_BATCHES}"  # resumable only in pieces of one size
    num_records = len(run.splits.train)
    main = jax.process_index() == 0
    values = np.zeros((2, num_records), np.float32)
    hit, broken = main and path.exists(), ""
    if hit:
        try:
            saved = _load(path)
            values = np.stack([saved[name] for name in NAMES]).astype(np.float32)
        except Exception as error:  # a torn or foreign file: refuse rather than train on garbage
            broken = f" ({cause(error)})"
    if hosts.any_process(bool(broken)):  # every process stops, not process 0 alone
        raise InputError(f"{path}: unreadable reference cache{broken}; delete it to recompute")
    if hosts.any_process(hit):
        values = hosts.from_process_zero(values)
        message(f"reference log-probs reused from {path}")
        return dict(zip(NAMES, values, strict=True))

    done, values = _read_pieces(pieces, num_records) if main else (0, values)
    done, values = hosts.from_process_zero((np.int64(done), values))
    done = int(done)
    message(f"precomputing reference log-probs of {num_records} records"
            + (f" (resuming after {done} pieces of {PIECE_BATCHES} batches)" if done else ""))
    local = (b.as_dict() for b in data.packed_batches(
        run.splits.train, tokenizer=run.tokenizer, config=packing, prompt_format=fmt, seed=config.seed, shuffle=False,
        on_long_response=config.data.on_long_response))
    batches = global_batches(itertools.islice(local, done * PIECE_BATCHES, None), packing, soft=fmt.soft_tokens > 0)
    if main:
        pieces.mkdir(parents=True, exist_ok=True)
    for piece in itertools.count(done):
        chunk = list(itertools.islice(batches, PIECE_BATCHES))
        if not chunk:
            break
        chosen, rejected = run.scorer.score_records(params, run.model, chunk, num_records)
        source = np.flatnonzero(~np.isnan(chosen))
        values[:, source] = chosen[source], rejected[source]
        if main:
            _save(pieces / f"{piece:06d}.npz", {"source": source, "values": values[:, source]})
        if hosts.any_process(stop()):
            return None
    if main:
        _save(path, dict(zip(NAMES, values, strict=True)))
        pieces.rmtree()
    message(f"reference log-probs cached in {path}")
    return dict(zip(NAMES, values, strict=True))


def lookup(cache: Mapping[str, np.ndarray], pair_source: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair reference log-probs of a batch (0 on empty slots)."""
    index = np.maximum(pair_source, 0)
    empty = pair_source < 0
    return {name: np.where(empty, 0.0, values[index]).astype(np.float32) for name, values in cache.items()}
