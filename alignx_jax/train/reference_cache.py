"""Precomputed reference log-probs: one forward pass of the reference over the training records, cached
on disk and keyed by a content hash of (reference weights, records, tokenizer, packing, prompt, seed).

A record's persona draw depends only on (seed, its index), so its reference log-probs are the same
in every epoch and in any shuffle: the cache is two float32 arrays indexed by record, and a training
batch reads them through `pair_source`. A second run with the same inputs finds the file and skips
the pass; any change of weights, records or packing changes the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alignx_jax import data
from alignx_jax.errors import InputError, cause
from alignx_jax.train import data as train_data


def content_key(params: Any, records: Sequence[Mapping[str, Any]], *, tokenizer_name: str, packing: Mapping[str, Any]) -> str:
    """blake2b over every weight's bytes (in tree order, with its path and dtype), the records as JSON,
    and the packing / prompt / seed description."""
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    digest.update(json.dumps({"tokenizer": tokenizer_name, **packing}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def load_or_compute(cache_dir: str | pathlib.Path, key: str, make: Callable[[], dict[str, np.ndarray]]
                    ) -> tuple[dict[str, np.ndarray], pathlib.Path, bool]:
    """(arrays, file, hit): the cached arrays for `key`, or `make()` written atomically to the cache."""
    path = pathlib.Path(cache_dir) / f"reference_logps_{key}.npz"
    if path.exists():
        try:
            with np.load(path) as saved:
                return {name: saved[name] for name in ("ref_chosen", "ref_rejected")}, path, True
        except Exception as error:  # a torn or foreign file: recompute rather than train on garbage
            raise InputError(f"{path}: unreadable reference cache ({cause(error)}); delete it to recompute") from None
    arrays = make()
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return arrays, path, False


def lookup(cache: Mapping[str, np.ndarray], pair_source: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair reference log-probs of a batch (0 on empty slots)."""
    index = np.maximum(pair_source, 0)
    empty = pair_source < 0
    return {name: np.where(empty, 0.0, values[index]).astype(np.float32) for name, values in cache.items()}


def precompute(run, message: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The run's reference log-probs of its training records (`Run.scorer` over the start model, the
    records in order, every process the same batches), from the cache when its key matches."""
    config = run.config
    fmt = run.prompt_format()
    packing = train_data.packing_config(config.data)
    describe = {"packing": dataclasses.asdict(packing), "prompt": dataclasses.asdict(fmt), "seed": config.seed,
                "on_long_response": config.data.on_long_response}
    key = content_key(run.state.params if run.state.frozen is None else run.state.frozen,
                      run.splits.train, tokenizer_name=str(config.model.tokenizer or config.model.name),
                      packing=describe)
    cache_dir = pathlib.Path(config.reference_cache_dir or run.out_dir.parent / ".reference_cache")

    def make():
        message(f"precomputing reference log-probs of {len(run.splits.train)} records")
        batches = data.packed_batches(run.splits.train, tokenizer=run.tokenizer, config=packing, prompt_format=fmt,
                                      seed=config.seed, shuffle=False, shard_index=0, shard_count=1,
                                      on_long_response=config.data.on_long_response)
        chosen, rejected = run.scorer.score_records(run.state.params, run.model, (b.as_dict() for b in batches),
                                                    len(run.splits.train))
        return {"ref_chosen": chosen.astype(np.float32), "ref_rejected": rejected.astype(np.float32)}

    arrays, path, hit = load_or_compute(cache_dir, key, make)
    message(f"reference log-probs {'reused from' if hit else 'cached in'} {path}")
    return arrays
