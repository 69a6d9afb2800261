"""Language-model warm-up: next-token loss on the training rows before the preference steps.

    nll = - sum_t log p(tokens[t+1] | tokens[<=t])  /  number of such t
    over positions t whose next token continues the same prompt or chosen branch (the persona
    history, the task and the chosen response; never the rejected branch or a soft slot)

A random-init model has not learned the responses' language, so a preference loss, which sees only
the difference of two responses, has little to steer. Warming it up on the training rows (SFT on
prompt + chosen, the history included) teaches the language first; the warmed model then becomes the
reference of the preference steps (SFT, then DPO). (Measured on the tiny ICA config: the language,
yes; reading the persona from the history, no. docs/experiments.md.)

    state = warm_up(run, state, message)     # `lm_warmup.steps` steps; rows in out_dir/lm_warmup.jsonl
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from alignx_jax import kernels
from alignx_jax.data import REJECTED
from alignx_jax.models import llama, scoring
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train import config as config_lib
from alignx_jax.train import data as train_data
from alignx_jax.train import lora
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.optimizer import make_optimizer
from alignx_jax.train.state import create_state


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


def warm_up(run, state, message: Callable[[str], None]):
    """`lm_warmup.steps` of next-token loss on the training rows (its own data order, rows in
    out_dir/lm_warmup.jsonl); returns the state the preference steps start from: the warmed model as
    the policy and the reference (LoRA: merged into the base, fresh adapters), fresh optimizer states."""
    config, spec = run.config, run.spec
    steps = config.lm_warmup.steps
    optimizer = make_optimizer(config_lib.OptimizerConfig(lr=config.lm_warmup.lr, warmup_steps=max(steps // 10, 1),
                                                          schedule="constant"), steps)
    trainable = state.params if spec.bridge is None else (state.params, state.bridge)
    opt_state = jax.jit(optimizer.init)(trainable)
    iterator = iter(run.batches(seed=config.seed + 1))
    step_fn = jax.jit(warmup_step, static_argnames=("spec", "optimizer"), donate_argnums=(0, 1))
    row_sharding, pair_sharding = train_sharding.batch_shardings(run.mesh)
    log = (run.out_dir / "lm_warmup.jsonl").open("w", buffering=1) if jax.process_index() == 0 else None
    every = max(steps // 10, 1)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for step in range(steps):
            micro = [next(iterator).as_dict() for _ in range(config.optimizer.accumulation)]
            batch, _ = train_data.assemble(micro, buckets=run.buckets, row_sharding=row_sharding,
                                           pair_sharding=pair_sharding, extra=bridge_train.batch_extras(run.bridge, micro))
            tick = time.perf_counter()
            trainable, opt_state, step_metrics = step_fn(trainable, opt_state, state.frozen, batch, spec=spec,
                                                         optimizer=optimizer)
            row = {"step": step + 1, **{k: float(v) for k, v in jax.device_get(step_metrics).items()},
                   "seconds": time.perf_counter() - tick}
            if not math.isfinite(row["nll"]):
                raise FloatingPointError(f"LM warm-up step {step + 1}: the loss is {row['nll']} "
                                         f"(lm_warmup.lr {config.lm_warmup.lr:.3g})")
            if log is not None:
                log.write(json.dumps(row) + "\n")
            if (step + 1) % every == 0:
                message(f"LM warm-up {step + 1}/{steps}: next-token NLL {row['nll']:.3f}")
    if log is not None:
        log.close()
    model_params, bridge_params = trainable if spec.bridge is not None else (trainable, None)
    warm = lora.merge(state.frozen, model_params, spec.lora) if spec.reference == "lora" else model_params
    warm = jax.device_put(warm, train_sharding.param_shardings(run.model, run.mesh))
    fresh, _ = create_state(config, warm, run.model, run.mesh, run.optimizer)
    if bridge_params is not None:
        repl = train_sharding.replicated(run.mesh)
        fresh = fresh.replace(bridge=bridge_params,
                              bridge_opt_state=jax.jit(spec.bridge.optimizer.init, out_shardings=repl)(bridge_params))
    return fresh
