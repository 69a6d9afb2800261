"""Losses that anchor each response's log-ratio u(y) = log pi(y|x) - log pi_ref(y|x) on its own, not
only the margin u(y_w) - u(y_l): they push the absolute rewards (chosen up, rejected down, or both down).

Formulas follow TRL 1.16 ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py, lines 1419-1482);
``dpop``, which TRL lacks, follows its paper. TRL offers no f-divergence transform for them (its log Z
term only cancels in a margin, lines 808-816).
"""
from __future__ import annotations

import jax

from alignx_jax.losses._inputs import Pair, check_beta, check_pair
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import register


def _rewards(loss: str, pair: Pair, beta):
    check_beta(loss, beta)
    return beta * (pair.policy_chosen - pair.ref_chosen), beta * (pair.policy_rejected - pair.ref_rejected)


@register("bco_pair")
def bco_pair(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""BCO on pairs: binary classification of chosen (reward up) vs rejected (reward down).

    .. math:: L = -\log\sigma(\beta u_w) - \log\sigma(-\beta u_l)

    Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment", arXiv 2404.04656.
    As in TRL 1.16, without the paper's running reward shift delta.
    """
    pair = check_pair("bco_pair", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    r_w, r_l = _rewards("bco_pair", pair, beta)
    return loss_output(pair, -jax.nn.log_sigmoid(r_w) - jax.nn.log_sigmoid(-r_l), r_w, r_l)


@register("nca_pair")
def nca_pair(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""NCA on pairs: noise-contrastive alignment of absolute rewards.

    .. math:: L = -\log\sigma(\beta u_w) - \tfrac12\log\sigma(-\beta u_w) - \tfrac12\log\sigma(-\beta u_l)

    Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards", arXiv 2402.05369.
    """
    pair = check_pair("nca_pair", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    r_w, r_l = _rewards("nca_pair", pair, beta)
    losses = -jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w) - 0.5 * jax.nn.log_sigmoid(-r_l)
    return loss_output(pair, losses, r_w, r_l)


@register("sppo_hard")
def sppo_hard(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""SPPO with hard win probabilities (1 for the chosen, 0 for the rejected response).

    .. math:: L = \left(u_w - \frac{1}{2\beta}\right)^2 + \left(u_l + \frac{1}{2\beta}\right)^2

    Wu et al., 2024, "Self-Play Preference Optimization for Language Model Alignment", arXiv 2405.00675
    (Eq. 4.7 with P = 1 / 0; the paper's soft version estimates P with PairRM outside the loss).
    """
    pair = check_pair("sppo_hard", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    r_w, r_l = _rewards("sppo_hard", pair, beta)
    # Written on the log-ratios (not r / beta^2) so that beta enters once, as the target 1/(2 beta).
    u_w, u_l = pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected
    return loss_output(pair, (u_w - 0.5 / beta) ** 2 + (u_l + 0.5 / beta) ** 2, r_w, r_l)


@register("apo_zero")
def apo_zero(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""APO-zero: raise the chosen and lower the rejected likelihood (chosen better than the model's own output).

    .. math:: L = 1 - \sigma(\beta u_w) + \sigma(\beta u_l)

    D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive Revisions", arXiv 2408.06266 (Eq. 7).
    """
    pair = check_pair("apo_zero", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    r_w, r_l = _rewards("apo_zero", pair, beta)
    return loss_output(pair, jax.nn.sigmoid(-r_w) + jax.nn.sigmoid(r_l), r_w, r_l)  # 1 - sigma(x) = sigma(-x)


@register("apo_down")
def apo_down(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""APO-down: lower both likelihoods, the rejected more (chosen worse than the model's own output).

    .. math:: L = \sigma(\beta u_w) + 1 - \sigma(\beta (u_w - u_l))

    D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive Revisions", arXiv 2408.06266 (Eq. 8).
    """
    pair = check_pair("apo_down", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    r_w, r_l = _rewards("apo_down", pair, beta)
    return loss_output(pair, jax.nn.sigmoid(r_w) + jax.nn.sigmoid(-(r_w - r_l)), r_w, r_l)


@register("dpop")
def dpop(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1, dpop_lambda=50.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""DPO-Positive: DPO whose margin pays for every nat the chosen response falls below the reference.

    .. math:: L = -\log\sigma\left(\beta\left(u_w - u_l - \lambda \max(0, -u_w)\right)\right)

    Pal et al., 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    arXiv 2402.13228 (Eq. 3; lambda = ``dpop_lambda``, 50 in the paper). Where DPO can win a margin by
    lowering both responses (the chosen one less), this loss cannot: equal to ``sigmoid`` while the
    policy keeps the chosen response at least as likely as the reference does.
    """
    pair = check_pair("dpop", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    if isinstance(dpop_lambda, (int, float)) and dpop_lambda < 0:
        raise ValueError(f"loss 'dpop': dpop_lambda must be >= 0, got {dpop_lambda}")
    r_w, r_l = _rewards("dpop", pair, beta)
    u_w, u_l = pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected
    return loss_output(pair, -jax.nn.log_sigmoid(beta * (u_w - u_l - dpop_lambda * jax.nn.relu(-u_w))), r_w, r_l)
