"""Validation of a loss's inputs: four per-sequence log-prob vectors plus optional per-example extras.

Every built-in loss takes the same keyword inputs, so a trainer can hand the same batch to any of them:

* ``chosen_tokens`` / ``rejected_tokens``: response token counts ``[B]`` (int or float), for the
  length-normalized losses (ipo, sigmoid_norm, simpo, orpo and the NLL terms). Counts below 1 are
  taken as 1, as TRL clamps them.
* ``policy_chosen_avg`` / ``policy_rejected_avg``: average per-token policy log-probs ``[B]``, an
  alternative to token counts for the losses that work on averages (simpo, orpo, NLL terms); when
  given, they take precedence over the sums divided by the counts.
* ``weights``: per-example weights ``[B]`` that multiply the per-example losses (e.g. WPO weights).

Shapes are static under ``jit``, so these checks run at trace time and cost nothing in the step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Pair(NamedTuple):
    """Validated per-sequence log-probs ``[B]`` in one floating compute dtype (at least float32)."""

    policy_chosen: jax.Array
    policy_rejected: jax.Array
    ref_chosen: jax.Array
    ref_rejected: jax.Array
    chosen_tokens: jax.Array | None
    rejected_tokens: jax.Array | None
    policy_chosen_avg: jax.Array | None
    policy_rejected_avg: jax.Array | None
    weights: jax.Array | None


def _as_vector(loss: str, name: str, value, batch: int | None, *, floating: bool) -> jax.Array:
    array = jnp.asarray(value)
    if floating and not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"loss {loss!r}: {name} must be a floating array of log-probs, got dtype {array.dtype}")
    if not floating and not (jnp.issubdtype(array.dtype, jnp.number) and not jnp.iscomplexobj(array)):
        raise TypeError(f"loss {loss!r}: {name} must be a real numeric array, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"loss {loss!r}: {name} must have shape [B] (one value per sequence), got shape {array.shape}")
    if batch is not None and array.shape[0] != batch:
        raise ValueError(f"loss {loss!r}: {name} has shape {array.shape}, expected ({batch},) like policy_chosen")
    return array


def check_pair(
    loss: str,
    policy_chosen,
    policy_rejected,
    ref_chosen=None,
    ref_rejected=None,
    *,
    chosen_tokens=None,
    rejected_tokens=None,
    policy_chosen_avg=None,
    policy_rejected_avg=None,
    weights=None,
) -> Pair:
    """Checks shapes and dtypes, promotes to one compute dtype and fills a missing reference with zeros.

    A missing reference (both ``ref_chosen`` and ``ref_rejected`` None) is the reference-free mode:
    log pi_ref = 0, so log-ratios are the policy log-probs themselves.
    """
    policy_chosen = _as_vector(loss, "policy_chosen", policy_chosen, None, floating=True)
    batch = policy_chosen.shape[0]
    policy_rejected = _as_vector(loss, "policy_rejected", policy_rejected, batch, floating=True)
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError(
            f"loss {loss!r}: pass both ref_chosen and ref_rejected, or neither (reference-free mode); got only one"
        )
    floats = [policy_chosen, policy_rejected]
    if ref_chosen is not None:
        ref_chosen = _as_vector(loss, "ref_chosen", ref_chosen, batch, floating=True)
        ref_rejected = _as_vector(loss, "ref_rejected", ref_rejected, batch, floating=True)
        floats += [ref_chosen, ref_rejected]
    averages = {"policy_chosen_avg": policy_chosen_avg, "policy_rejected_avg": policy_rejected_avg}
    averages = {k: None if v is None else _as_vector(loss, k, v, batch, floating=True) for k, v in averages.items()}
    floats += [v for v in averages.values() if v is not None]
    # bf16/fp16 log-probs are summed sequence scores: computing the loss in float32 costs nothing.
    dtype = jnp.result_type(jnp.float32, *(x.dtype for x in floats))

    def cast(x):
        return None if x is None else x.astype(dtype)

    extras = {"chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens, "weights": weights}
    extras = {k: None if v is None else cast(_as_vector(loss, k, v, batch, floating=False)) for k, v in extras.items()}
    if ref_chosen is None:
        ref_chosen = ref_rejected = jnp.zeros((batch,), dtype)
    return Pair(
        policy_chosen=cast(policy_chosen),
        policy_rejected=cast(policy_rejected),
        ref_chosen=cast(ref_chosen),
        ref_rejected=cast(ref_rejected),
        chosen_tokens=extras["chosen_tokens"],
        rejected_tokens=extras["rejected_tokens"],
        policy_chosen_avg=cast(averages["policy_chosen_avg"]),
        policy_rejected_avg=cast(averages["policy_rejected_avg"]),
        weights=extras["weights"],
    )


def token_counts(loss: str, pair: Pair) -> tuple[jax.Array, jax.Array]:
    """Chosen and rejected token counts, clamped to at least 1 (TRL's ``clamp(min=1)``)."""
    if pair.chosen_tokens is None or pair.rejected_tokens is None:
        raise ValueError(f"loss {loss!r} is length-normalized: pass chosen_tokens and rejected_tokens ([B] counts)")
    return jnp.maximum(pair.chosen_tokens, 1), jnp.maximum(pair.rejected_tokens, 1)


def average_logps(loss: str, pair: Pair) -> tuple[jax.Array, jax.Array]:
    """Average per-token policy log-probs: given directly (they take precedence, so a trainer may pass
    counts too), or the sums divided by the token counts."""
    given = (pair.policy_chosen_avg is not None, pair.policy_rejected_avg is not None)
    if given == (True, True):
        return pair.policy_chosen_avg, pair.policy_rejected_avg
    if any(given):
        raise ValueError(f"loss {loss!r}: pass both policy_chosen_avg and policy_rejected_avg, or neither")
    if pair.chosen_tokens is None or pair.rejected_tokens is None:
        raise ValueError(
            f"loss {loss!r} works on average log-probs: pass chosen_tokens and rejected_tokens ([B] counts), "
            "or policy_chosen_avg and policy_rejected_avg"
        )
    chosen_tokens, rejected_tokens = token_counts(loss, pair)
    return pair.policy_chosen / chosen_tokens, pair.policy_rejected / rejected_tokens


def chosen_nll(loss: str, pair: Pair) -> jax.Array:
    """Per-example mean token NLL of the chosen response: -log pi(y_w|x) / |y_w|."""
    if pair.policy_chosen_avg is not None:
        return -pair.policy_chosen_avg
    if pair.chosen_tokens is None:
        raise ValueError(
            f"loss {loss!r} has an NLL term (mean over chosen tokens): pass chosen_tokens or policy_chosen_avg"
        )
    return -pair.policy_chosen / jnp.maximum(pair.chosen_tokens, 1)


def check_beta(loss: str, beta) -> None:
    """beta must be positive; a traced beta (a swept hyper-parameter) is not checked."""
    if isinstance(beta, (int, float)) and not beta > 0:
        raise ValueError(f"loss {loss!r}: beta must be > 0, got {beta}")
