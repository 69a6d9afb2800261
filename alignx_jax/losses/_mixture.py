"""Weighted sums of registered losses (TRL's ``loss_type`` list with ``loss_weights``)."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import jax

from alignx_jax.losses._registry import get, register


def _accepted_keywords(fn, hparams) -> set[str]:
    """The keyword names ``fn`` accepts; all of ``hparams`` when it takes ``**kwargs`` (a user's loss)."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return set(hparams)
    return set(parameters)


@register("mixture")
def mixture(
    policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
    loss_type: Sequence[str] = ("sigmoid",), loss_weights: Sequence[float] | None = None,
    chosen_tokens=None, rejected_tokens=None, policy_chosen_avg=None, policy_rejected_avg=None, weights=None,
    **hparams,
):
    r"""Weighted sum of losses by name, e.g. MPO = sigmoid + bco_pair + sft (TRL's loss_weights).

    .. math:: L_i = \sum_k w_k L^{(k)}_i

    so the batch mean equals TRL's ``sum_k w_k mean(L^(k))``. Each hyper-parameter (beta,
    label_smoothing, ...) goes to every component that accepts it, as TRL shares one config; one that
    no component accepts is an error; the keyword inputs (token counts, averages, weights) go to every
    component that names them. Metrics: the first component's, then each component's extra
    ones not already present, plus ``loss/<name>`` with every component's unweighted [B] losses.
    """
    loss_type = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not loss_type:
        raise ValueError("loss 'mixture': loss_type must name at least one loss")
    if "mixture" in loss_type:
        raise ValueError("loss 'mixture': a mixture cannot contain 'mixture'; list its components instead")
    loss_weights = [1.0] * len(loss_type) if loss_weights is None else list(loss_weights)
    if len(loss_weights) != len(loss_type):
        raise ValueError(
            f"loss 'mixture': loss_weights has {len(loss_weights)} values for {len(loss_type)} losses {loss_type}"
        )
    data = {"chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens, "policy_chosen_avg": policy_chosen_avg,
            "policy_rejected_avg": policy_rejected_avg, "weights": weights}
    components = [get(name) for name in loss_type]
    given = {**{key: value for key, value in data.items() if value is not None}, **hparams}
    accepted = [_accepted_keywords(fn, given) for fn in components]
    if weights is not None:
        refusing = [name for name, names in zip(loss_type, accepted) if "weights" not in names]
        if refusing:
            raise ValueError(f"loss 'mixture': weights given, but {refusing} take no per-example weights")
    unused = sorted(key for key in hparams if not any(key in a for a in accepted))
    if unused:
        raise ValueError(f"loss 'mixture': hyper-parameters {unused} are accepted by none of {loss_type}")
    total, metrics = 0.0, {}
    for name, fn, weight, names in zip(loss_type, components, loss_weights, accepted):
        losses, component_metrics = fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                       **{key: value for key, value in given.items() if key in names})
        total = total + weight * losses
        metrics = {**component_metrics, **metrics}
        metrics[f"loss/{name}"] = jax.lax.stop_gradient(losses)
    return total, metrics
