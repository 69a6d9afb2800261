"""f-divergence score transforms of f-DPO (Wang et al., 2023, "Beyond Reverse KL", arXiv 2309.16240).

DPO's implicit reward uses the log-ratio u = log pi(y|x) - log pi_ref(y|x), which is the derivative
f'(t) of the reverse KL at t = pi/pi_ref (up to a constant). Other f-divergences replace u by f'(t):

.. math::
    \\text{reverse\\_kl}: u \\qquad \\text{forward\\_kl}: 1 - e^{-u} \\qquad
    \\text{js\\_divergence}: \\log 2 + \\log\\sigma(u) \\qquad
    \\text{alpha\\_divergence}: \\frac{e^{(\\alpha - 1) u} - 1}{\\alpha - 1}

Transcribed from TRL 1.16 ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py, lines 1353-1381),
including its clamp of the alpha-divergence exponent at 80 (line 1375; exp(80) is finite in float32). We clamp
forward_kl's exponent at the same bound so that the scores stay finite at |u| = 1e4, where TRL's
``1 - exp(-u)`` overflows; below the bound the two agree exactly.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# exp(80) ~ 5.5e34 is representable in float32 (max ~3.4e38); TRL clamps the alpha-divergence here.
_MAX_EXPONENT = 80.0


def check_f_divergence(loss: str, f_divergence_type: str) -> None:
    if f_divergence_type not in F_DIVERGENCES:
        raise ValueError(
            f"loss {loss!r}: unknown f_divergence_type {f_divergence_type!r}; expected one of {F_DIVERGENCES}"
        )


def f_divergence_scores(
    logratios: jax.Array, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> jax.Array:
    """Maps log-ratios ``[B]`` to f-divergence scores ``[B]`` (``reverse_kl`` is the identity).

    >>> f_divergence_scores(jnp.array([0.0, 1.0]), "js_divergence")  # log 2 + log sigmoid(u)
    Array([0.        , 0.37988...], dtype=float32)
    """
    check_f_divergence("f_divergence_scores", f_divergence_type)
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1.0 - jnp.exp(jnp.minimum(-logratios, _MAX_EXPONENT))
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(logratios)
    if abs(f_alpha_divergence_coef - 1.0) < 1e-6:  # alpha -> 1 is the reverse KL (TRL's limit case)
        return logratios
    alpha_minus_one = f_alpha_divergence_coef - 1.0
    return (jnp.exp(jnp.minimum(alpha_minus_one * logratios, _MAX_EXPONENT)) - 1.0) / alpha_minus_one
