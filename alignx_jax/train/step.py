"""The training step: `train_step(state, batch, rng) -> (state, metrics)`, a pure function.

    policy   = params                      (full fine-tuning)   | lora.merge(frozen, params)  (LoRA)
    pi_w, pi_l   = pair_logprobs(policy, batch)                   fused kernel, scored tokens only
    ref_w, ref_l = pair_logprobs(frozen, batch) without gradient  (frozen reference, or the LoRA base)
                 | batch["ref_chosen"], batch["ref_rejected"]     (precomputed, from the cache)
    loss = sum over valid pairs of loss_fn(pi_w, pi_l, ref_w, ref_l) / number of valid pairs

Two batch-level options: a twin loss (`spec.twin_loss`, e.g. `losses.cross_user`) adds
`twin_weight * term_i` to each pair whose twin (`batch["pair_twin"]`) is in the same micro-batch;
group-robust weights (`spec.num_groups` > 0) weigh pair i by `N alpha_g / (count_g A)` (g its persona,
`batch["pair_group"]`; N valid pairs, count_g of them in group g, A the present groups' alpha, over the
whole step), so the loss is sum_g alpha_g * mean_g / A; alpha (`state.group_weights`) then takes GRPO's
step with this step's group means (the weights of a step come from the steps before it).

LoRA on the top K layers only (`lora.layers`): the N - K layers below are the base model's in
both, so their output is computed once (`scoring.trunk_states`) and both scorings run only the top
K layers from it; the gradient stops at the trunk. Per micro-batch that is N - K + 4K layer
passes (trunk, policy and reference tops, the top's backward) instead of 4N.

The batch carries a leading micro-batch axis [A, ...]: gradients of the A micro-batches are summed
inside the step (`lax.scan`) and divided by the valid pairs of all of them, so accumulation gives
the same update as one big batch. Hyper-parameters are bound with `functools.partial` (`StepSpec`),
never traced.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from alignx_jax.losses import group_robust
from alignx_jax.models import llama, scoring
from alignx_jax.train import lora
from alignx_jax.train.config import LoraConfig


class TrainState(flax.struct.PyTreeNode):
    """step int32 []; params: what is trained (the model, or the LoRA adapters); opt_state: optax's;
    frozen: the reference model (frozen mode) or the LoRA base, None with precomputed references."""

    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None
    bridge: Any = None  # a preference bridge's trained params (soft conditioning, train/bridge.py), else None
    bridge_opt_state: Any = None
    group_weights: Any = None  # float32 [G]: group-robust weights over the training personas, else None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the step is, fixed for a run (hashable, so it is a static argument)."""

    model: llama.LlamaConfig
    loss_fn: Callable
    loss_hparams: tuple[tuple[str, Any], ...]  # beta included
    reference: str  # "frozen" | "precomputed" | "lora"
    lora: LoraConfig | None
    num_pairs: int  # pair slots per micro-batch
    scored_length: int  # static scored-token count per micro-batch
    kernel_impl: str = "auto"
    # train.bridge.BridgeStep: soft preference tokens for the prompts' slots from `state.bridge`
    # (and the joint bridge loss); None: plain prompts.
    bridge: Any = None
    twin_loss: Callable | None = None  # losses.TWIN_LOSSES entry, over batch["pair_twin"]
    twin_weight: float = 1.0
    num_groups: int = 0  # > 0: group-robust weights over batch["pair_group"] (state.group_weights)
    group_eta: float = 0.0

    @property
    def trunk_layers(self) -> int:
        """Decoder layers below the LoRA adapters, run once for policy and reference (0: none shared)."""
        if self.reference != "lora" or self.bridge is not None:  # soft tokens enter below: nothing shared
            return 0
        return lora.trunk_layers(self.lora, self.model.num_layers)

    @property
    def passes_token_counts(self) -> bool:
        params = inspect.signature(self.loss_fn).parameters
        return "chosen_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def policy_params(state: TrainState, spec: StepSpec):
    """The parameters the policy runs with (adapters merged into the base under LoRA)."""
    return lora.merge(state.frozen, state.params, spec.lora) if spec.reference == "lora" else state.params


def _micro_loss(trainable, state: TrainState, micro: Mapping[str, jax.Array], spec: StepSpec):
    """(summed loss over valid pairs, (summed metrics, valid pairs)) of one micro-batch.

    With a bridge, `trainable` is (policy trainable, bridge params): the policy reads the bridge's
    soft tokens in its prompt slots (the reference reads the slots' placeholder tokens)."""
    bridge_params = None
    if spec.bridge is not None:
        trainable, bridge_params = trainable
    policy = lora.merge(state.frozen, trainable, spec.lora) if spec.reference == "lora" else trainable
    below = spec.trunk_layers
    trunk = scoring.trunk_states(state.frozen, spec.model, micro, below) if below else None
    score = lambda params, differentiable, soft=None: scoring.pair_logprobs(  # noqa: E731
        params, spec.model, micro, num_pairs=spec.num_pairs, scored_length=spec.scored_length,
        differentiable=differentiable, kernel_impl=spec.kernel_impl, soft_tokens=soft, trunk=trunk,
        trunk_layers=below)
    pi = score(policy, True, None if spec.bridge is None else spec.bridge.soft_tokens(bridge_params, micro))
    if spec.reference == "precomputed":
        ref_chosen, ref_rejected = micro["ref_chosen"], micro["ref_rejected"]
    else:  # the frozen reference model, or the LoRA base without adapters
        ref = score(state.frozen, False)
        ref_chosen, ref_rejected = ref.chosen, ref.rejected
    extra = dict(chosen_tokens=pi.chosen_tokens, rejected_tokens=pi.rejected_tokens) if spec.passes_token_counts else {}
    losses, metrics = spec.loss_fn(pi.chosen, pi.rejected, ref_chosen, ref_rejected, **dict(spec.loss_hparams), **extra)
    valid = micro["pair_valid"]
    chex.assert_equal_shape([losses, valid])
    masked_sum = lambda x: jnp.sum(jnp.where(valid, x, 0.0))  # noqa: E731
    sums = {name: masked_sum(value) for name, value in metrics.items() if jnp.shape(value) == valid.shape}
    if spec.num_groups:  # the groups' unweighted losses, for the weights' update after the step
        sums["group_loss_sums"] = group_robust.group_sums(jax.lax.stop_gradient(losses), micro["pair_group"], valid,
                                                          spec.num_groups)
    if spec.twin_loss is not None:
        terms = spec.twin_loss(pi.chosen, pi.rejected, ref_chosen, ref_rejected, micro["pair_twin"],
                               beta=dict(spec.loss_hparams)["beta"])
        sums["twin_loss"] = masked_sum(jax.lax.stop_gradient(terms))
        losses = losses + spec.twin_weight * terms
    if spec.num_groups:
        losses = losses * micro["pair_weight"]
    sums["scored_tokens"] = jnp.sum(pi.chosen_tokens + pi.rejected_tokens)
    sums["tokens"] = jnp.sum(micro["segment_ids"] > 0).astype(jnp.float32)
    total = masked_sum(losses)
    if spec.bridge is not None:
        aux, aux_sums = spec.bridge.aux_loss(bridge_params, micro)
        total, sums = total + aux, {**sums, **aux_sums}
    return total, (sums, jnp.sum(valid).astype(jnp.float32))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *, spec: StepSpec,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule) -> tuple[TrainState, dict]:
    """One optimizer step over the micro-batches of `batch` ([A, B, T] arrays, `pair_valid` [A, P]).

    Returns the new state and scalar metrics: `loss` and TRL's `rewards/*`, `logps/*` (means over
    valid pairs), `grad_norm` (before clipping), `lr` (of this step), `pairs`, `tokens`, `scored_tokens`.
    `rng` is unused by the built-in losses; it is part of the signature for stochastic ones.
    """
    del rng
    grad_fn = jax.value_and_grad(_micro_loss, has_aux=True)
    trainable = state.params if spec.bridge is None else (state.params, state.bridge)

    def accumulate(carry, micro):
        grads, loss_sum, sums, pairs = carry
        (micro_loss, (micro_sums, micro_pairs)), micro_grads = grad_fn(trainable, state, micro, spec)
        grads = jax.tree.map(jnp.add, grads, micro_grads)
        sums = jax.tree.map(jnp.add, sums, micro_sums)
        return (grads, loss_sum + micro_loss, sums, pairs + micro_pairs), None

    group_counts = None
    if spec.num_groups:
        valid = batch["pair_valid"].reshape(-1)
        group_counts = group_robust.group_sums(jnp.ones(valid.shape), batch["pair_group"].reshape(-1), valid,
                                               spec.num_groups)
        weights = group_robust.pair_weights(state.group_weights, batch["pair_group"], group_counts)
        batch = {**batch, "pair_weight": weights}
    first = jax.tree.map(lambda x: x[0], batch)
    _, (sum_shapes, _) = jax.eval_shape(lambda: _micro_loss(trainable, state, first, spec))
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)  # noqa: E731
    carry = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32), zeros(sum_shapes),
             jnp.zeros((), jnp.float32))
    (grads, loss_sum, sums, pairs), _ = jax.lax.scan(accumulate, carry, batch)
    denominator = jnp.maximum(pairs, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    extra = {}
    if spec.bridge is not None:
        grads, bridge_grads = grads
        bridge_updates, bridge_opt_state = spec.bridge.optimizer.update(bridge_grads, state.bridge_opt_state,
                                                                        state.bridge)
        extra = dict(bridge=optax.apply_updates(state.bridge, bridge_updates), bridge_opt_state=bridge_opt_state)
    if spec.num_groups:
        extra["group_weights"] = group_robust.update_weights(state.group_weights, sums.pop("group_loss_sums"),
                                                             group_counts, eta=spec.group_eta)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {name: value / denominator for name, value in sums.items() if name not in ("scored_tokens", "tokens")}
    if spec.num_groups:  # the weights this step's loss used
        metrics.update({"group_robust/max_weight": jnp.max(state.group_weights),
                        "group_robust/min_weight": jnp.min(state.group_weights)})
    metrics.update(loss=loss_sum / denominator, grad_norm=optax.global_norm(grads), lr=schedule(state.step), pairs=pairs,
                   tokens=sums["tokens"], scored_tokens=sums["scored_tokens"])
    if spec.bridge is not None:
        metrics["bridge/grad_norm"] = optax.global_norm(bridge_grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **extra), metrics
