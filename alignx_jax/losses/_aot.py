"""AOT: distributional preference alignment by optimal transport between sorted batch quantities.

These losses are batch-level, not per-example: they sort log-ratios over the batch, so entry i of the
returned ``losses`` belongs to the i-th smallest quantity, not to example i, and the result depends
on which examples share the batch (or the device shard). The mean is what is meaningful; per-example
weights are refused (they would land on the wrong terms), as TRL refuses WPO weighting for them.

Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport", arXiv 2406.05882.
Formulas follow TRL 1.16 ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py, lines 1447-1465).
"""
from __future__ import annotations

import jax.numpy as jnp

from alignx_jax.losses._dpo import smoothed_logistic
from alignx_jax.losses._inputs import Pair, check_beta, check_pair
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import register


def _sorted_output(loss: str, pair: Pair, delta, beta, label_smoothing):
    if pair.weights is not None:
        raise ValueError(f"loss {loss!r} sorts over the batch, so per-example weights would misalign; drop weights")
    losses = smoothed_logistic(beta * delta, label_smoothing)
    rewards = (beta * (pair.policy_chosen - pair.ref_chosen), beta * (pair.policy_rejected - pair.ref_rejected))
    return loss_output(pair, losses, *rewards)


@register("aot")
def aot(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1, label_smoothing=0.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""AOT (paired, batch-level): policy margins stochastically dominate reference margins.

    .. math::
        d = \mathrm{sort}(\log\pi_w - \log\pi_l) - \mathrm{sort}(\log\pi^{ref}_w - \log\pi^{ref}_l),
        \quad L_i = -(1 - \epsilon)\log\sigma(\beta d_i) - \epsilon\log\sigma(-\beta d_i)

    Entry i is the i-th quantile term, not example i (see the module docstring).
    """
    pair = check_pair("aot", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    check_beta("aot", beta)
    delta = jnp.sort(pair.policy_chosen - pair.policy_rejected) - jnp.sort(pair.ref_chosen - pair.ref_rejected)
    return _sorted_output("aot", pair, delta, beta, label_smoothing)


@register("aot_pair")
def aot_pair(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1, label_smoothing=0.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""AOT (unpaired, batch-level): chosen log-ratios stochastically dominate rejected ones (TRL 1.16: aot_unpaired).

    .. math::
        d = \mathrm{sort}(u_w) - \mathrm{sort}(u_l),
        \quad L_i = -(1 - \epsilon)\log\sigma(\beta d_i) - \epsilon\log\sigma(-\beta d_i)

    Named ``aot_pair`` in TRL before 1.0 and ``aot_unpaired`` in TRL 1.16 (both names are registered).
    Entry i is the i-th quantile term, not example i (see the module docstring).
    """
    pair = check_pair("aot_pair", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    check_beta("aot_pair", beta)
    delta = jnp.sort(pair.policy_chosen - pair.ref_chosen) - jnp.sort(pair.policy_rejected - pair.ref_rejected)
    return _sorted_output("aot_pair", pair, delta, beta, label_smoothing)


register("aot_unpaired", aot_pair, description="AOT (unpaired, batch-level): TRL 1.16's name for aot_pair.")
