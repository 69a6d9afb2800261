"""Precomputed reference log-probs: one forward pass of the reference over the training records, cached
on disk and keyed by a content hash of (reference weights, records, tokenizer, packing, prompt, seed).

A record's persona draw depends only on (seed, its index), so its reference log-probs are the same
in every epoch and in any shuffle: the cache is two float32 arrays indexed by record, and a training
batch reads them through `pair_source`. A second run with the same inputs finds the file and skips
the pass; any change of weights, records or packing changes the key.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alignx_jax.errors import InputError, cause


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


def compute(num_records: int, batches: Iterable[Mapping[str, np.ndarray]],
            score: Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run `score(batch) -> (chosen [P], rejected [P])` over packed `batches` and file the results by
    `pair_source`; records whose pair was dropped stay NaN."""
    chosen = np.full((num_records,), np.nan, np.float32)
    rejected = np.full((num_records,), np.nan, np.float32)
    for batch in batches:
        c, r = score(batch)
        valid = np.asarray(batch["pair_valid"])
        source = np.asarray(batch["pair_source"])[valid]
        chosen[source], rejected[source] = np.asarray(c)[valid], np.asarray(r)[valid]
    return {"ref_chosen": chosen, "ref_rejected": rejected}


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
