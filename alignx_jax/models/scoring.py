"""Per-response log-probs of packed preference pairs: the one scoring path of training and evaluation.

    hidden = decoder(tokens; positions, segment_ids, roles)        [B, T, D], never [B, T, V] logits
    scored = positions where chosen_mask | rejected_mask           gathered to a static length L
    logp_t = h_t . w_{y_t} - logsumexp_v(h_t . w_v)                kernels.token_logprobs on [L, D]
    chosen[p] = sum of logp_t over pair p's chosen tokens          (rejected likewise)

The batch is a mapping of the `data.PackedBatch` arrays (tokens, positions, segment_ids, roles,
targets, chosen_mask, rejected_mask, pair_ids; all [B, T]); the number of pair slots P is the
static `num_pairs`. Only response tokens reach the LM head: the persona prompt, most of a row,
costs the decoder and nothing else.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from alignx_jax import kernels
from alignx_jax.models import llama


class PairLogprobs(NamedTuple):
    """Summed response log-probs and response token counts, float32 [P] each (0 on empty slots)."""

    chosen: chex.Array
    rejected: chex.Array
    chosen_tokens: chex.Array
    rejected_tokens: chex.Array


def scored_token_count(batch: Mapping[str, chex.Array]) -> int:
    """How many tokens of a (host) batch are scored; pick `scored_length` from it with
    `kernels.bucket_length` so a run compiles a few shapes."""
    return int((batch["chosen_mask"] | batch["rejected_mask"]).sum())


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
                  soft_tokens: chex.Array | None = None) -> chex.Array:
    """The decoder's final hidden states [B, T, D] of a packed batch (its positions, segments and
    roles; soft tokens in its `soft_slots` when given, `soft_prompt_embeddings`)."""
    embeddings = None if soft_tokens is None else soft_prompt_embeddings(params, config, batch, soft_tokens)
    return llama.forward(params, batch["tokens"], config, positions=batch["positions"],
                         segment_ids=batch["segment_ids"], roles=batch["roles"], return_hidden=True,
                         input_embeddings=embeddings)


def pair_logprobs(params: dict, config: llama.LlamaConfig, batch: Mapping[str, chex.Array], *, num_pairs: int,
                  scored_length: int, differentiable: bool = True, kernel_impl: str = "auto",
                  soft_tokens: chex.Array | None = None) -> PairLogprobs:
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
    """
    chex.assert_rank(batch["tokens"], 2)
    hidden = hidden_states(params, config, batch, soft_tokens)
    if not differentiable:
        hidden = jax.lax.stop_gradient(hidden)
    chosen_mask = batch["chosen_mask"].reshape(-1)
    scored = kernels.gather_scored_tokens(chosen_mask | batch["rejected_mask"].reshape(-1), scored_length)
    h = hidden.reshape(-1, hidden.shape[-1])[scored.index]
    labels = batch["targets"].reshape(-1)[scored.index]
    w = llama.lm_head_weight(params, config)
    score = kernels.token_logprobs if differentiable else kernels.token_logprobs_no_grad
    logp, _ = score(h, w.astype(h.dtype), labels, scored.valid, impl=kernel_impl)
    # Response id 2p is pair p's chosen response, 2p + 1 its rejected one; padding drops out (-1).
    pair = batch["pair_ids"].reshape(-1)[scored.index]
    response = jnp.where(scored.valid, 2 * pair + jnp.where(chosen_mask[scored.index], 0, 1), -1)
    sums = kernels.segment_sum(logp, response, 2 * num_pairs).reshape(num_pairs, 2)
    counts = kernels.segment_sum(scored.valid.astype(jnp.float32), response, 2 * num_pairs).reshape(num_pairs, 2)
    return PairLogprobs(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1])
