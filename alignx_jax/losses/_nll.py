"""The NLL (SFT) term on the chosen response, alone or added to DPO (RPO)."""
from __future__ import annotations

import jax.numpy as jnp

from alignx_jax.losses._dpo import sigmoid
from alignx_jax.losses._inputs import check_pair, chosen_nll
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import register

TOKEN_AVERAGES = ("batch", "example")


@register("sft")
def sft(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1, token_average="batch",
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""NLL of the chosen responses, an add-on term for mixtures (TRL's sft loss_type).

    .. math::
        \text{batch}: L_i = -\frac{\sum_j \ell_{w,j}}{\sum_j |y_{w,j}|}\ \text{(same for every i)}
        \qquad \text{example}: L_i = -\frac{\ell_{w,i}}{|y_{w,i}|}

    ``token_average="batch"`` is TRL 1.16 (lines 1495-1502): the mean NLL over all chosen tokens of
    the batch, repeated per example, so it is batch-level like aot. ``"example"`` is the per-example
    mean token NLL (accepts policy_chosen_avg too). beta only scales the reward metrics.
    """
    pair = check_pair("sft", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    if token_average not in TOKEN_AVERAGES:
        raise ValueError(f"loss 'sft': token_average must be one of {TOKEN_AVERAGES}, got {token_average!r}")
    if token_average == "example":
        losses = chosen_nll("sft", pair)
    else:
        if pair.chosen_tokens is None:
            raise ValueError("loss 'sft' with token_average='batch' needs chosen_tokens ([B] counts)")
        total = -jnp.sum(pair.policy_chosen) / jnp.maximum(jnp.sum(pair.chosen_tokens), 1)
        losses = jnp.broadcast_to(total, pair.policy_chosen.shape)
    rewards = (beta * (pair.policy_chosen - pair.ref_chosen), beta * (pair.policy_rejected - pair.ref_rejected))
    return loss_output(pair, losses, *rewards, nll_loss=losses)


@register("rpo")
def rpo(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=0.1, rpo_alpha=1.0,
    label_smoothing=0.0,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
):
    r"""RPO: DPO plus rpo_alpha times the chosen response's mean token NLL.

    .. math:: L = L_{\text{sigmoid}} + \alpha_{rpo}\left(-\frac{\ell_w}{|y_w|}\right)

    Pang et al., 2024, "Iterative Reasoning Preference Optimization", arXiv 2404.19733 (Eq. 1, with the
    length-normalized NLL). Equals ``mixture`` of sigmoid and sft(token_average="example") with
    loss_weights (1, rpo_alpha); needs chosen_tokens or policy_chosen_avg.
    """
    losses, metrics = sigmoid(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
                              label_smoothing=label_smoothing, chosen_tokens=chosen_tokens,
                              rejected_tokens=rejected_tokens, policy_chosen_avg=policy_chosen_avg,
                              policy_rejected_avg=policy_rejected_avg)
    pair = check_pair("rpo", policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                      policy_chosen_avg=policy_chosen_avg, policy_rejected_avg=policy_rejected_avg, weights=weights)
    nll = chosen_nll("rpo", pair)
    rewards = (metrics["rewards/chosen"], metrics["rewards/rejected"])
    return loss_output(pair, losses + rpo_alpha * nll, *rewards, nll_loss=nll)
