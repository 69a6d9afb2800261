"""DPO-style losses of the score margin Delta = s(y_w) - s(y_l), where s is the log-ratio
u = log pi - log pi_ref or one of its f-divergence transforms (``f_divergence_type``).

Formulas follow TRL 1.16 ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py, lines 1383-1510);
the f-divergence transform applies to exactly these losses, as in TRL (lines 808-816).
Every loss returns ``(losses [B], metrics)``; see ``alignx_jax.losses`` for the shared keyword inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alignx_jax.losses._divergence import check_f_divergence, f_divergence_scores
from alignx_jax.losses._inputs import Pair, check_beta, check_pair, token_counts
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import register


def _scores(loss: str, pair: Pair, beta, f_divergence_type: str, f_alpha_divergence_coef: float):
    """Chosen and rejected scores s(y) and the rewards beta * u(y) (TRL's rewards ignore the transform)."""
    check_beta(loss, beta)
    check_f_divergence(loss, f_divergence_type)
    chosen_logratios = pair.policy_chosen - pair.ref_chosen
    rejected_logratios = pair.policy_rejected - pair.ref_rejected
    chosen_scores = f_divergence_scores(chosen_logratios, f_divergence_type, f_alpha_divergence_coef)
    rejected_scores = f_divergence_scores(rejected_logratios, f_divergence_type, f_alpha_divergence_coef)
    return chosen_scores, rejected_scores, beta * chosen_logratios, beta * rejected_logratios


def smoothed_logistic(logits: jax.Array, label_smoothing) -> jax.Array:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): the logistic loss with flipped-label probability eps."""
    # log sigma(-z) = log(1 - sigma(z)), in the form that stays finite for large |z|.
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


@register("sigmoid")
def sigmoid(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""DPO (logistic) loss; label_smoothing > 0 gives conservative DPO (cDPO).

    .. math::
        L = -(1 - \epsilon) \log\sigma(\beta\Delta) - \epsilon \log\sigma(-\beta\Delta),
        \quad \Delta = s(y_w) - s(y_l)

    Rafailov et al., 2023, "Direct Preference Optimization", arXiv 2305.18290; cDPO: Mitchell, 2023,
    "A note on DPO with noisy preferences". TRL 1.16 dropped label smoothing from ``sigmoid``; with
    ``label_smoothing=0`` this is its loss exactly.

    >>> losses, metrics = sigmoid(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5]))
    >>> losses  # -log sigmoid(0.1 * ((-1 + 1.5) - (-2 + 1.5)))
    Array([0.64439666], dtype=float32)
    """
    pair = check_pair("sigmoid", policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens=chosen_tokens,
                      rejected_tokens=rejected_tokens, policy_chosen_avg=policy_chosen_avg,
                      policy_rejected_avg=policy_rejected_avg, weights=weights)
    if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"loss 'sigmoid': label_smoothing must be in [0, 1], got {label_smoothing}")
    s_w, s_l, r_w, r_l = _scores("sigmoid", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    return loss_output(pair, smoothed_logistic(beta * (s_w - s_l), label_smoothing), r_w, r_l)


@register("hinge")
def hinge(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""SLiC hinge loss on the reward margin.

    .. math:: L = \max(0, 1 - \beta\Delta)

    Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", arXiv 2305.10425.
    """
    pair = check_pair("hinge", policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens=chosen_tokens,
                      rejected_tokens=rejected_tokens, policy_chosen_avg=policy_chosen_avg,
                      policy_rejected_avg=policy_rejected_avg, weights=weights)
    s_w, s_l, r_w, r_l = _scores("hinge", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    return loss_output(pair, jax.nn.relu(1.0 - beta * (s_w - s_l)), r_w, r_l)


@register("ipo")
def ipo(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""IPO squared loss on the per-token score margin (needs chosen_tokens, rejected_tokens).

    .. math:: L = \left(\frac{s(y_w)}{|y_w|} - \frac{s(y_l)}{|y_l|} - \frac{1}{2\beta}\right)^2

    Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv 2310.12036 (Eq. 17; beta is the paper's tau). The division by token counts is TRL's (confirmed
    with the IPO authors, per TRL); pass token counts of 1 for the paper's sequence-level form.
    """
    pair = check_pair("ipo", policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens=chosen_tokens,
                      rejected_tokens=rejected_tokens, policy_chosen_avg=policy_chosen_avg,
                      policy_rejected_avg=policy_rejected_avg, weights=weights)
    s_w, s_l, r_w, r_l = _scores("ipo", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    n_w, n_l = token_counts("ipo", pair)
    return loss_output(pair, (s_w / n_w - s_l / n_l - 1.0 / (2.0 * beta)) ** 2, r_w, r_l)


@register("robust")
def robust(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""Robust DPO: an unbiased loss under preference labels flipped with probability label_smoothing.

    .. math::
        L = \frac{-(1 - \epsilon)\log\sigma(\beta\Delta) + \epsilon\log\sigma(-\beta\Delta)}{1 - 2\epsilon},
        \quad 0 \le \epsilon < 1/2

    Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback", arXiv 2403.00409.
    """
    pair = check_pair("robust", policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens=chosen_tokens,
                      rejected_tokens=rejected_tokens, policy_chosen_avg=policy_chosen_avg,
                      policy_rejected_avg=policy_rejected_avg, weights=weights)
    if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss 'robust': label_smoothing must be in [0, 0.5), got {label_smoothing}")
    s_w, s_l, r_w, r_l = _scores("robust", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    logits = beta * (s_w - s_l)
    clean = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
    flipped = -label_smoothing * jax.nn.log_sigmoid(-logits)
    return loss_output(pair, (clean - flipped) / (1.0 - 2.0 * label_smoothing), r_w, r_l)


@register("exo_pair")
def exo_pair(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, label_smoothing=1e-3, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""EXO (pairwise): reverse KL from the model's pair distribution to the smoothed label distribution.

    .. math::
        L = \sigma(\beta\Delta)\,[\log\sigma(\beta\Delta) - \log(1 - \epsilon)]
          + \sigma(-\beta\Delta)\,[\log\sigma(-\beta\Delta) - \log\epsilon], \quad 0 < \epsilon < 1

    Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment", arXiv 2402.00856
    (Eq. 16); the paper recommends epsilon = label_smoothing = 1e-3 (the default here).
    """
    pair = check_pair("exo_pair", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    if isinstance(label_smoothing, (int, float)) and not 0.0 < label_smoothing < 1.0:
        raise ValueError(
            f"loss 'exo_pair': label_smoothing must be in (0, 1) (log epsilon is a term), got {label_smoothing}"
        )
    s_w, s_l, r_w, r_l = _scores("exo_pair", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    logits = beta * (s_w - s_l)
    losses = jax.nn.sigmoid(logits) * (jax.nn.log_sigmoid(logits) - jnp.log1p(-label_smoothing)) + jax.nn.sigmoid(
        -logits
    ) * (jax.nn.log_sigmoid(-logits) - jnp.log(label_smoothing))
    return loss_output(pair, losses, r_w, r_l)


@register("discopop")
def discopop(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, discopop_tau=0.05, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""DiscoPOP: log-ratio modulated blend of the logistic and exponential losses.

    .. math::
        z = \beta\Delta,\quad m = \sigma(z/\tau),\quad L = (1 - m)(-\log\sigma(z)) + m\,e^{-z}

    Chris Lu et al., 2024, "Discovering Preference Optimization Algorithms with and for Large Language
    Models", arXiv 2406.08414 (Eq. 5); tau = discopop_tau = 0.05 as the paper recommends.
    """
    pair = check_pair("discopop", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    if isinstance(discopop_tau, (int, float)) and not discopop_tau > 0:
        raise ValueError(f"loss 'discopop': discopop_tau must be > 0, got {discopop_tau}")
    s_w, s_l, r_w, r_l = _scores("discopop", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    z = beta * (s_w - s_l)
    # 1 - m = sigma(-z/tau), and m * exp(-z) = exp(log sigma(z/tau) - z): for z -> -inf the naive
    # product is inf * 0 = nan, while this form is exp(-inf) = 0 for tau < 1.
    logistic = jax.nn.sigmoid(-z / discopop_tau) * -jax.nn.log_sigmoid(z)
    exponential = jnp.exp(jax.nn.log_sigmoid(z / discopop_tau) - z)
    losses = logistic + exponential
    return loss_output(pair, losses, r_w, r_l)


@register("sigmoid_norm")
def sigmoid_norm(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""Length-normalized DPO: the logistic loss on per-token scores (needs chosen_tokens, rejected_tokens).

    .. math:: L = -\log\sigma\left(\beta\left(\frac{s(y_w)}{|y_w|} - \frac{s(y_l)}{|y_l|}\right)\right)

    TRL's ``sigmoid_norm``; length normalization as in SimPO (Meng et al., 2024, arXiv 2405.14734) but
    keeping the reference model.
    """
    pair = check_pair("sigmoid_norm", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    s_w, s_l, r_w, r_l = _scores("sigmoid_norm", pair, beta, f_divergence_type, f_alpha_divergence_coef)
    n_w, n_l = token_counts("sigmoid_norm", pair)
    return loss_output(pair, -jax.nn.log_sigmoid(beta * (s_w / n_w - s_l / n_l)), r_w, r_l)
