"""Per-response log-probs of packed preference pairs: the one scoring path of training and evaluation.

    hidden = decoder(tokens; positions, segment_ids, roles)        [B, T, D], never [B, T, V] logits
    scored = positions where chosen_mask | rejected_mask           gathered to a static length L
    logp_t = h_t . w_{y_t} - logsumexp_v(h_t . w_v)                kernels.token_logprobs on [L, D]
    chosen[p] = sum of logp_t over pair p's chosen tokens          (rejected likewise)

The batch is a mapping of the `data.PackedBatch` arrays (tokens, positions, segment_ids, roles,
targets, chosen_mask, rejected_mask, pair_ids; all [B, T]); the number of pair slots P is the
static `num_pairs`. Only response tokens reach the LM head: the persona prompt, most of a row,
costs the decoder and nothing else. A policy whose adapters cover only the top layers shares the
layers below with its reference: `trunk_states` runs them once, and `hidden_states(..., trunk=)`
runs only the layers above.

On a mesh (`jax.set_mesh`, with the logical rules of `models/sharding.py` in effect) the LM head runs
where its tokens live: inside `shard_map` over the mesh axes of `activation_batch` (data x fsdp),
each device gathers the scored tokens of its own rows into `scored_length / shards` slots and runs
the fused kernel on them, with the vocabulary split over the axis of `vocab` (tensor); the per-pair
sums are `psum`med over the batch axes. A Mosaic kernel cannot be partitioned by GSPMD at all, and
the XLA loop would be gathered onto every device (every logits tile then summed across chips), so
this is the only placement that scales. `scored_length` must then bound every shard's count times
the shard count: `scored_token_count(batch, shards=...)`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import kernels
from alignx_jax.models import llama


class PairLogprobs(NamedTuple):
    """Summed response log-probs and response token counts, float32 [P] each (0 on empty slots)."""

    chosen: chex.Array
    rejected: chex.Array
    chosen_tokens: chex.Array
    rejected_tokens: chex.Array


def scored_token_count(batch: Mapping[str, chex.Array], shards: int = 1) -> int:
    """How many tokens of a (host) batch are scored; pick `scored_length` from it with
    `kernels.bucket_length` so a run compiles a few shapes. With `shards` > 1 (the rows split into
    that many equal blocks, one per device of the batch axes): the largest block's count times
    `shards`, the length at which every device's share of `scored_length` holds its tokens."""
    scored = np.asarray(batch["chosen_mask"]) | np.asarray(batch["rejected_mask"])
    if shards <= 1:
        return int(scored.sum())
    if len(scored) % shards:
        raise ValueError(f"scored_token_count: {len(scored)} rows do not split into {shards} shards")
    return int(scored.reshape(shards, -1).sum(axis=1).max()) * shards


def soft_prompt_embeddings(params: dict, config: llama.LlamaConfig, batch: Mapping[str, chex.Array],
                           soft_tokens: chex.Array) -> chex.Array:
    """The decoder's input embeddings [B, T, D] of a packed batch with soft prompt tokens in its slots.

        x[b, t] = soft_tokens[pair_ids[b, t], soft_slots[b, t]]   where soft_slots[b, t] >= 0
                = embed(tokens[b, t])                              elsewhere

    soft_tokens: [P, K, D], pair p's K virtual tokens (e.g. `bridge.soft_tokens`); the batch's
    `soft_slots` [B, T] (from `data.pack_rows`) says which slot k a prompt position holds, -1 elsewhere.
    Gradients flow into `soft_tokens` (and into the embedding table at the other positions).
    """
    chex.assert_rank(soft_tokens, 3)
    slots, pairs = batch["soft_slots"], batch["pair_ids"]
    num_pairs, k = soft_tokens.shape[:2]
    gathered = soft_tokens[jnp.clip(pairs, 0, num_pairs - 1), jnp.clip(slots, 0, k - 1)]  # [B, T, D]
    x = llama.embed_tokens(params, batch["tokens"], config)
    return jnp.where((slots >= 0)[..., None], gathered.astype(x.dtype), x)


def hidden_states(params: dict, config: llama.LlamaConfig, batch: Mapping[str, chex.Array],
                  soft_tokens: chex.Array | None = None, *, trunk: chex.Array | None = None,
                  trunk_layers: int = 0) -> chex.Array:
    """The decoder's final hidden states [B, T, D] of a packed batch (its positions, segments and
    roles; soft tokens in its `soft_slots` when given, `soft_prompt_embeddings`). With `trunk`
    (`trunk_states` of the first `trunk_layers` layers) only the layers above it run."""
    if trunk is not None:
        if soft_tokens is not None:
            raise ValueError("hidden_states: soft tokens enter below the trunk; give one or the other")
        top, top_config = llama.layer_slice(params, config, trunk_layers, config.num_layers)
        return _decoder(top, top_config, batch, input_embeddings=trunk)
    embeddings = None if soft_tokens is None else soft_prompt_embeddings(params, config, batch, soft_tokens)
    return _decoder(params, config, batch, input_embeddings=embeddings)


def trunk_states(params: dict, config: llama.LlamaConfig, batch: Mapping[str, chex.Array], layers: int) -> chex.Array:
    """The residual stream [B, T, D] after the first `layers` decoder layers (not normed): what a
    policy whose adapters sit above them shares with its reference, computed once for both."""
    below, below_config = llama.layer_slice(params, config, 0, layers)
    return _decoder(below, below_config, batch, final_norm=False)


def _decoder(params, config, batch, *, input_embeddings=None, final_norm=True):
    return llama.forward(params, batch["tokens"], config, positions=batch["positions"],
                         segment_ids=batch["segment_ids"], roles=batch["roles"], return_hidden=True,
                         input_embeddings=input_embeddings, final_norm=final_norm)


def pair_logprobs(params: dict, config: llama.LlamaConfig, batch: Mapping[str, chex.Array], *, num_pairs: int,
                  scored_length: int, differentiable: bool = True, kernel_impl: str = "auto",
                  soft_tokens: chex.Array | None = None, trunk: chex.Array | None = None,
                  trunk_layers: int = 0) -> PairLogprobs:
    """Per-pair summed log-probs of the chosen and rejected responses of a packed batch.

    Args:
      params, config: the decoder (LoRA adapters already merged, when used).
      batch: the packed arrays, [B, T] each (module docstring).
      num_pairs: P, the batch's pair slots (`len(batch.pair_valid)`).
      scored_length: static L >= the number of scored tokens (a larger count raises nothing but
        drops tokens: choose L on the host with `scored_token_count` and `kernels.bucket_length`).
      differentiable: False runs the forward-only kernel (a frozen reference model).
      kernel_impl: `kernels.token_logprobs`'s impl.
      soft_tokens: optional [P, K, D] soft prompt tokens put into the batch's `soft_slots`
        (`soft_prompt_embeddings`); None scores the slot tokens' own embeddings.
      trunk, trunk_layers: the batch's `trunk_states` of the first `trunk_layers` layers (of these
        params or of others that share those layers); only the layers above run.
    """
    chex.assert_rank(batch["tokens"], 2)
    hidden = hidden_states(params, config, batch, soft_tokens, trunk=trunk, trunk_layers=trunk_layers)
    if not differentiable:
        hidden = jax.lax.stop_gradient(hidden)
    w = llama.lm_head_weight(params, config).astype(hidden.dtype)
    rows = {k: batch[k] for k in ("chosen_mask", "rejected_mask", "targets", "pair_ids")}
    head = functools.partial(_head_sums, num_pairs=num_pairs, differentiable=differentiable, kernel_impl=kernel_impl)
    batch_axes, vocab_axes = _head_axes(hidden.shape[0], w.shape[1])
    if batch_axes is None and vocab_axes is None:
        sums, counts = head(hidden, w, rows, scored_length=scored_length)
    else:
        mesh = jax.sharding.get_abstract_mesh()
        shards = math.prod(mesh.shape[a] for a in batch_axes or ())
        P = jax.sharding.PartitionSpec

        def local(hidden, w, rows):
            sums, counts = head(hidden, w, rows, scored_length=-(-scored_length // shards), vocab_axis=vocab_axes)
            return (jax.lax.psum(sums, batch_axes), jax.lax.psum(counts, batch_axes)) if batch_axes else (sums, counts)

        sums, counts = jax.shard_map(local, in_specs=(P(batch_axes, None, None), P(None, vocab_axes), P(batch_axes, None)),
                                     out_specs=(P(), P()))(hidden, w, rows)
    sums, counts = sums.reshape(num_pairs, 2), counts.reshape(num_pairs, 2)
    return PairLogprobs(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1])


def _head_axes(rows: int, vocab: int):
    """(batch mesh axes, vocabulary mesh axes) of the LM head on the mesh in effect (None: unsplit).

    The mesh axes that the logical rules give `activation_batch` and `vocab`, those of size 1 left out;
    an axis group that does not divide its dimension is dropped (the head then runs unsplit on it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None, None

    def axes(logical: str, size: int):
        entry = nn.logical_to_mesh_axes((logical,))[0]
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        names = tuple(n for n in names if mesh.shape[n] > 1)
        return names if names and size % math.prod(mesh.shape[n] for n in names) == 0 else None

    return axes("activation_batch", rows), axes("vocab", vocab)


def _head_sums(hidden, w, rows, *, num_pairs: int, scored_length: int, differentiable: bool, kernel_impl: str,
               vocab_axis=None):
    """Summed log-probs and token counts per response, float32 [2P] each, of the rows in `hidden` [B, T, D]
    (the whole batch, or one device's rows inside `shard_map`)."""
    chosen_mask = rows["chosen_mask"].reshape(-1)
    scored = kernels.gather_scored_tokens(chosen_mask | rows["rejected_mask"].reshape(-1), scored_length)
    h = hidden.reshape(-1, hidden.shape[-1])[scored.index]
    labels = rows["targets"].reshape(-1)[scored.index]
    score = kernels.token_logprobs if differentiable else kernels.token_logprobs_no_grad
    logp, _ = score(h, w, labels, scored.valid, impl=kernel_impl, vocab_axis=vocab_axis)
    # Response id 2p is pair p's chosen response, 2p + 1 its rejected one; padding drops out (-1).
    pair = rows["pair_ids"].reshape(-1)[scored.index]
    response = jnp.where(scored.valid, 2 * pair + jnp.where(chosen_mask[scored.index], 0, 1), -1)
    sums = kernels.segment_sum(logp, response, 2 * num_pairs)
    counts = kernels.segment_sum(scored.valid.astype(jnp.float32), response, 2 * num_pairs)
    return sums, counts
