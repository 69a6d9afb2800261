"""Naive full-logits log-probs: the specification every fused kernel is tested against."""
import jax
import jax.numpy as jnp


def naive_token_logprobs(hidden, w, labels, valid=None):
    """``logp = log_softmax(hidden @ w)[label]`` and ``lse = logsumexp(hidden @ w)``, float32 [N].

    Materializes the [N, V] float32 logits (and, under ``jax.grad``, their cotangent): use it for
    tests and benchmarks only. Tokens where ``valid`` is False give 0.
    """
    logits = jnp.dot(hidden, w, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    if valid is None:
        return picked - lse, lse
    return jnp.where(valid, picked - lse, 0.0), jnp.where(valid, lse, 0.0)
