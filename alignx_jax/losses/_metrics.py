"""Per-example metrics with TRL's names; every value is ``[B]`` and carries no gradient.

The caller reduces (mean over the batch, or over devices) exactly as it reduces the losses, so a
sharded step can ``psum`` sums and counts instead of averaging averages.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alignx_jax.losses._inputs import Pair

Metrics = dict[str, jax.Array]


def loss_output(
    pair: Pair, losses: jax.Array, chosen_rewards: jax.Array, rejected_rewards: jax.Array, **extra: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Applies the per-example weights and builds TRL's reward metrics plus loss-specific ``extra`` ones.

    ``rewards/*`` are the implicit rewards (beta times the log-ratio for reference-based losses,
    beta times the policy log-prob for reference-free ones); ``rewards/accuracies`` is 1.0 where the
    chosen reward is strictly greater, as in TRL; ``logps/*`` are the policy log-probs as passed.
    """
    if pair.weights is not None:
        losses = losses * pair.weights
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(losses.dtype),
        "logps/chosen": pair.policy_chosen,
        "logps/rejected": pair.policy_rejected,
        **extra,
    }
    return losses, {name: jax.lax.stop_gradient(jnp.asarray(value, losses.dtype)) for name, value in metrics.items()}
