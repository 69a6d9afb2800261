"""Group-robust weights over personas (GRPO: Ramesh et al., 2024, "Group Robust Preference
Optimization in Reward-free RLHF", arXiv 2405.20304; their `compute_robust_loss`).

The objective is the weighted sum of the groups' mean losses, sum_g alpha_g * mean_g (normalized over
the groups present in a step, `pair_weights`), with alpha on the simplex moved toward the groups that
lose most by an exponentiated-gradient step:

    alpha_g <- alpha_g * exp(eta * mean_g)   (mean_g = 0 for a group absent from the batch),
    alpha   <- alpha / sum(alpha)

Pure functions over [B] per-pair values and int32 group ids (-1: no group, e.g. an empty slot).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def group_sums(values: jax.Array, groups: jax.Array, valid: jax.Array, num_groups: int) -> jax.Array:
    """[G] sums of `values` [B] over the valid slots of each group."""
    chex.assert_equal_shape([values, groups, valid])
    ids = jnp.where(valid & (groups >= 0), groups, num_groups)  # the rest goes to a dropped extra group
    return jax.ops.segment_sum(jnp.where(ids < num_groups, values, 0.0), ids, num_segments=num_groups + 1)[:num_groups]


def pair_weights(alpha: jax.Array, groups: jax.Array, counts: jax.Array) -> jax.Array:
    """[B] per-pair weights w_i = N * alpha_g(i) / (count_g(i) * A), A = sum of alpha over the groups
    present in the step, N = sum(counts), so that sum_i w_i l_i / N = sum_g alpha_g mean_g / A: GRPO's objective
    over the groups of the batch (exactly GRPO's when every group is present; with many personas and
    few pairs per step the loss keeps the plain mean's scale, and uniform weights give the plain
    mean). `counts` [G]: valid pairs per group in the whole step. Slots without a group weigh 1."""
    chex.assert_rank([alpha, counts], 1)
    present = jnp.sum(jnp.where(counts > 0, alpha, 0.0))
    g = jnp.maximum(groups, 0)
    weights = jnp.sum(counts) * alpha[g] / (jnp.maximum(counts[g], 1.0) * jnp.maximum(present, 1e-30))
    return jnp.where(groups >= 0, weights, 1.0)


def update_weights(alpha: jax.Array, loss_sums: jax.Array, counts: jax.Array, *, eta: float) -> jax.Array:
    """alpha_g * exp(eta * mean loss_g), renormalized to sum 1 (GRPO's step; absent groups: mean 0).

    >>> update_weights(jnp.array([0.5, 0.5]), jnp.array([2.0, 0.0]), jnp.array([2.0, 1.0]), eta=1.0)
    Array([0.7310586, 0.2689414], dtype=float32)
    """
    means = loss_sums / jnp.maximum(counts, 1.0)
    # exp(eta * (mean - max)) is the same step after normalization and cannot overflow.
    scaled = eta * means
    new = alpha * jnp.exp(scaled - jnp.max(scaled))
    return new / jnp.sum(new)
