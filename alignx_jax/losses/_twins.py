"""Batch-level preference terms over twin pairs: two pair slots of one batch that hold the same
post and the same two responses with opposite labels (two users who disagree; mirror twins).

A per-pair loss cannot express them: they read the batch's structure, `twin [B]` (the slot of each
pair's twin in the same batch, -1 when it has none). Call form of a twin loss::

    fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, twin, *, beta) -> terms [B]

Each pair slot with a twin gets a term (so each twin pair counts twice, once per slot); the caller
adds ``weight * terms`` to the per-pair losses before reducing them.
"""
from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

TwinLossFn = Callable[..., jax.Array]


def margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> jax.Array:
    """m = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), each pair in its own labels."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def twin_values(values: jax.Array, twin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(values at each slot's twin, has_twin): 0 and False where `twin` is -1."""
    chex.assert_rank([values, twin], 1)
    chex.assert_equal_shape([values, twin])
    has_twin = twin >= 0
    return jnp.where(has_twin, values[jnp.maximum(twin, 0)], 0.0), has_twin


def cross_user(policy_chosen, policy_rejected, ref_chosen, ref_rejected, twin, *, beta=0.1) -> jax.Array:
    r"""Cross-user term: the same chosen-vs-rejected must score higher under its user than under the twin.

    .. math:: L_i = -\log\sigma\big(\beta\,(m_A - m_B)\big) = -\log\sigma\big(\beta\,(m_i + m_{t(i)})\big)

    where m_A = m_i is pair i's margin under its user A, and m_B the margin of the same chosen over
    the same rejected under twin B, whose own pair t(i) holds them with the labels swapped, so
    m_B = -m_{t(i)}. A persona-blind change adds the same amount to m_A and m_B: its gradient through
    this term is zero; only reading the user lowers it. 0 for slots without a twin.

    >>> cross_user(jnp.array([-1.0, -3.0]), jnp.array([-2.0, -1.0]), jnp.zeros(2), jnp.zeros(2),
    ...            jnp.array([1, 0]))  # m = [1, -2]: -log sigmoid(0.1 * (1 - 2)) twice
    Array([0.7443967, 0.7443967], dtype=float32)
    """
    m = margins(*(jnp.asarray(x, jnp.float32) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)))
    m_twin, has_twin = twin_values(m, jnp.asarray(twin))
    return jnp.where(has_twin, -jax.nn.log_sigmoid(beta * (m + m_twin)), 0.0)


TWIN_LOSSES: dict[str, TwinLossFn] = {"cross_user": cross_user}


def get_twin_loss(name: str) -> TwinLossFn:
    """The twin loss called `name` (`TWIN_LOSSES`)."""
    try:
        return TWIN_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown twin loss {name!r}; known: {', '.join(sorted(TWIN_LOSSES))}") from None
