"""Language-model warm-up: next-token loss on the training rows before the preference steps.

    nll = - sum_t log p(tokens[t+1] | tokens[<=t])  /  number of such t
    over positions t whose next token continues the same prompt or chosen branch (the persona
    history, the task and the chosen response; never the rejected branch or a soft slot)

A random-init model has not learned the responses' language, so a preference loss, which sees only
the difference of two responses, has little to steer. Warming it up on the training rows (SFT on
prompt + chosen, the history included) teaches the language first; the warmed model then becomes the
reference of the preference steps (SFT, then DPO). (Measured on the tiny ICA config: the language,
yes; reading the persona from the history, no. README "Training".)
"""
from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import optax

from alignx_jax import kernels
from alignx_jax.data import REJECTED
from alignx_jax.models import llama, scoring
from alignx_jax.train import lora


def next_token_targets(batch: Mapping[str, chex.Array]) -> tuple[chex.Array, chex.Array]:
    """(labels int32 [B, T], valid bool [B, T]): position t predicts tokens[t + 1] where t + 1 is the
    next position of the same segment (consecutive positions), outside the rejected branch and the
    soft slots. The shared-prefix layout (`data.pack_rows`) and the plain one both qualify."""
    tokens, segments, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    chex.assert_rank(tokens, 2)
    labels = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    follows = ((segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0)
               & (positions[:, 1:] == positions[:, :-1] + 1) & (batch["roles"][:, 1:] != REJECTED))
    if "soft_slots" in batch:
        follows &= batch["soft_slots"][:, 1:] < 0
    valid = jnp.concatenate([follows, jnp.zeros_like(follows[:, :1])], axis=1)
    return labels, valid


def nll_sum(params: dict, model: llama.LlamaConfig, batch: Mapping[str, chex.Array], *,
            soft_tokens: chex.Array | None = None, kernel_impl: str = "auto") -> tuple[chex.Array, chex.Array]:
    """(summed next-token NLL, number of predicted tokens) of a packed batch, float32 scalars; the LM
    head runs through the fused kernel on [B * T, D] hidden states (no [B, T, V] logits)."""
    hidden = scoring.hidden_states(params, model, batch, soft_tokens)
    labels, valid = next_token_targets(batch)
    h = hidden.reshape(-1, hidden.shape[-1])
    w = llama.lm_head_weight(params, model)
    logp, _ = kernels.token_logprobs(h, w.astype(h.dtype), labels.reshape(-1), valid.reshape(-1), impl=kernel_impl)
    return -jnp.sum(logp), jnp.sum(valid).astype(jnp.float32)


def warmup_step(trainable, opt_state, frozen, batch: Mapping[str, jax.Array], *, spec,
                optimizer: optax.GradientTransformation):
    """One warm-up step over the micro-batches of `batch` ([A, B, T] arrays): the mean NLL over all
    their predicted tokens. `trainable`: the model (or LoRA adapters over `frozen`), paired with the
    bridge params when `spec.bridge` conditions the prompts with soft tokens (they learn too).
    Returns (trainable, opt_state, {"nll", "tokens", "grad_norm"})."""

    def micro_nll(trainable, micro):
        model_params, bridge_params = trainable if spec.bridge is not None else (trainable, None)
        policy = lora.merge(frozen, model_params, spec.lora) if spec.reference == "lora" else model_params
        soft = None if spec.bridge is None else spec.bridge.soft_tokens(bridge_params, micro)
        return nll_sum(policy, spec.model, micro, soft_tokens=soft, kernel_impl=spec.kernel_impl)

    grad_fn = jax.value_and_grad(micro_nll, has_aux=True)

    def accumulate(carry, micro):
        grads, total, count = carry
        (nll, tokens), micro_grads = grad_fn(trainable, micro)
        return (jax.tree.map(jnp.add, grads, micro_grads), total + nll, count + tokens), None

    zero = jnp.zeros((), jnp.float32)
    (grads, total, count), _ = jax.lax.scan(accumulate, (jax.tree.map(jnp.zeros_like, trainable), zero, zero), batch)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    metrics = {"nll": total / count, "tokens": count, "grad_norm": optax.global_norm(grads)}
    return optax.apply_updates(trainable, updates), opt_state, metrics
