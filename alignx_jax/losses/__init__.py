"""Preference losses: pure functions over per-sequence log-probs, in a registry keyed by TRL's names.

Call form of every loss (built-in or your own)::

    losses, metrics = alignx_jax.losses.get("sigmoid")(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, **hparams)

* inputs: summed response log-probs ``[B]`` (float32; bf16/fp16 are computed in float32). Pass
  ``ref_chosen = ref_rejected = None`` for the reference-free mode (log pi_ref = 0); simpo, cpo and
  orpo never use the reference.
* optional keyword inputs, accepted by every built-in loss: ``chosen_tokens`` / ``rejected_tokens``
  (response token counts ``[B]``, for length normalization), ``policy_chosen_avg`` /
  ``policy_rejected_avg`` (average token log-probs ``[B]``, instead of counts for simpo/orpo/NLL),
  ``weights`` (per-example ``[B]`` multipliers of the losses).
* output: per-example ``losses [B]`` (the caller reduces, usually by the mean) and ``metrics``, a dict
  of per-example ``[B]`` arrays without gradient under TRL's names: ``rewards/chosen``,
  ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
  ``logps/rejected``, plus loss-specific ones (``nll_loss``, ``log_odds_ratio``, ...).
* ``aot``, ``aot_pair`` (= ``aot_unpaired``) and ``sft`` (default ``token_average="batch"``) are
  batch-level: their entries are not independent per example; reduce them by the mean only.

Adding a loss: write one function with that call form, decorate it with ``@register("name")``, and
add one test; ``check_pair`` (input checks, reference-free fill) and ``loss_output`` (weights and the
TRL metrics) are the two helpers every built-in uses. A config may also name a loss by import path
(``resolve("my_pkg.losses:my_loss")``).

Beside the per-pair form, two terms read the batch's structure: a twin loss (``cross_user``, over
pairs of one batch that hold the same responses with opposite labels; ``TWIN_LOSSES``) and
group-robust weights over personas (``group_robust``: GRPO's exponentiated-gradient weights).
"""
from alignx_jax.losses import _anchored, _aot, _dpo, _mixture, _nll, _reference_free  # noqa: F401  (registers)
from alignx_jax.losses import _group_robust as group_robust
from alignx_jax.losses._divergence import F_DIVERGENCES, f_divergence_scores
from alignx_jax.losses._inputs import Pair, check_pair
from alignx_jax.losses._metrics import loss_output
from alignx_jax.losses._registry import CALL_FORM, LossFn, check_call_form, descriptions, get, names, register, resolve
from alignx_jax.losses._twins import TWIN_LOSSES, TwinLossFn, cross_user, get_twin_loss, margins, twin_values

__all__ = [
    "CALL_FORM",
    "F_DIVERGENCES",
    "LossFn",
    "TWIN_LOSSES",
    "TwinLossFn",
    "Pair",
    "check_call_form",
    "check_pair",
    "cross_user",
    "descriptions",
    "f_divergence_scores",
    "get",
    "get_twin_loss",
    "group_robust",
    "loss_output",
    "margins",
    "names",
    "register",
    "resolve",
    "twin_values",
]
