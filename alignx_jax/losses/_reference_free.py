"""Reference-free preference losses: the policy log-probs alone (``ref_chosen``/``ref_rejected`` are
accepted for the common call form and ignored). Rewards are beta times the policy log-probs the loss
uses (averages for simpo and orpo), as TRL's CPO and ORPO trainers log them.

Formulas follow TRL 1.16 ``trl/experimental/cpo/cpo_trainer.py`` (``cpo_loss``, lines 678-749) and
``trl/experimental/orpo/orpo_trainer.py`` (``odds_ratio_loss``, lines 670-702).
"""
from __future__ import annotations

import jax

from alignx_jax.losses._dpo import smoothed_logistic
from alignx_jax.losses._inputs import average_logps, check_beta, check_pair, chosen_nll
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import register


@register("simpo")
def simpo(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=2.0, simpo_gamma=0.5, label_smoothing=0.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""SimPO: reference-free, length-normalized logistic loss with a target margin gamma.

    .. math::
        z = \beta(\bar{\ell}_w - \bar{\ell}_l) - \gamma,\quad
        L = -(1 - \epsilon)\log\sigma(z) - \epsilon\log\sigma(-z)

    with average token log-probs (pass chosen_tokens/rejected_tokens, or policy_chosen_avg/policy_rejected_avg).
    Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", arXiv 2405.14734.
    Defaults: the paper's beta = 2.0 and TRL's simpo_gamma = 0.5.
    """
    pair = check_pair("simpo", policy_chosen, policy_rejected, None, None,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    check_beta("simpo", beta)
    avg_w, avg_l = average_logps("simpo", pair)
    losses = smoothed_logistic(beta * (avg_w - avg_l) - simpo_gamma, label_smoothing)
    return loss_output(pair, losses, beta * avg_w, beta * avg_l)


@register("cpo")
def cpo(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    beta=0.1, cpo_alpha=1.0, label_smoothing=0.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""CPO: reference-free logistic loss on summed log-probs plus cpo_alpha times the chosen NLL.

    .. math::
        L = -(1 - \epsilon)\log\sigma(\beta(\ell_w - \ell_l)) - \epsilon\log\sigma(-\beta(\ell_w - \ell_l))
            + \alpha_{cpo}\,\mathrm{NLL}_w,\quad \mathrm{NLL}_w = -\ell_w / |y_w|

    Xu et al., 2024, "Contrastive Preference Optimization", arXiv 2401.08417. The NLL term is the
    example's mean token NLL (needs chosen_tokens or policy_chosen_avg unless cpo_alpha = 0); TRL
    averages it over all chosen tokens of the batch instead (equal when lengths are equal).
    """
    pair = check_pair("cpo", policy_chosen, policy_rejected, None, None,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    check_beta("cpo", beta)
    losses = smoothed_logistic(beta * (pair.policy_chosen - pair.policy_rejected), label_smoothing)
    extra = {}
    if not (isinstance(cpo_alpha, (int, float)) and cpo_alpha == 0):
        nll = chosen_nll("cpo", pair)
        losses = losses + cpo_alpha * nll
        extra["nll_loss"] = nll
    return loss_output(pair, losses, beta * pair.policy_chosen, beta * pair.policy_rejected, **extra)


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0 (jax.nn.log1mexp(a) is log(1 - exp(-a)))."""
    return jax.nn.log1mexp(-x)


@register("orpo")
def orpo(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""ORPO: chosen NLL minus beta times the log-sigmoid of the odds ratio (reference-free).

    .. math::
        \log\mathrm{odds}(y) = \bar{\ell}(y) - \log(1 - e^{\bar{\ell}(y)}),\quad
        L = -\bar{\ell}_w - \beta\log\sigma(\log\mathrm{odds}(y_w) - \log\mathrm{odds}(y_l))

    with average token log-probs (pass chosen_tokens/rejected_tokens, or policy_chosen_avg/policy_rejected_avg);
    they must be < 0 (at 0 the odds are infinite). Hong et al., 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model", arXiv 2403.07691 (Eqs. 4-7; beta is the paper's lambda).
    Extra metrics as TRL names them: nll_loss, log_odds_ratio (log sigma of the log odds ratio) and
    log_odds_chosen (the log odds ratio), per example.
    """
    pair = check_pair("orpo", policy_chosen, policy_rejected, None, None,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    check_beta("orpo", beta)
    avg_w, avg_l = average_logps("orpo", pair)
    log_odds = (avg_w - avg_l) - (_log1mexp(avg_w) - _log1mexp(avg_l))
    ratio = jax.nn.log_sigmoid(log_odds)
    nll = -avg_w
    return loss_output(pair, nll - beta * ratio, beta * avg_w, beta * avg_l,
                  nll_loss=nll, log_odds_ratio=ratio, log_odds_chosen=log_odds)
