"""The public fused log-prob function: custom VJP around the chosen implementation's tiles."""
import functools

import chex
import jax
import jax.numpy as jnp

from alignx_jax.kernels import _dispatch, _tile, _vocab_shard


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _label_logit_and_lse(hidden, w, labels, valid, config):
    forward, _ = _dispatch.implementation(config)
    return forward(hidden, w, labels, valid)


def _fwd(hidden, w, labels, valid, config):
    picked, lse = _label_logit_and_lse(hidden, w, labels, valid, config)
    # The only residuals: the inputs themselves and one float per token.
    return (picked, lse), (hidden, w, labels, valid, lse)


def _bwd(config, residuals, cotangents):
    hidden, w, labels, valid, lse = residuals
    g_label, g_lse = cotangents
    _, backward = _dispatch.implementation(config)
    d_hidden, d_w = backward(hidden, w, labels, valid, lse, g_label, g_lse)
    return _tile.sum_to_match(d_hidden, hidden), _tile.sum_to_match(d_w, w), None, None


_label_logit_and_lse.defvjp(_fwd, _bwd)


def _check_inputs(hidden, w, labels, valid):
    for name, x, rank in (("hidden", hidden, 2), ("w", w, 2), ("labels", labels, 1)):
        if x.ndim != rank:
            raise ValueError(f"token_logprobs: {name} must have rank {rank}, got shape {x.shape}")
    if hidden.shape[1] != w.shape[0]:
        raise ValueError(f"token_logprobs: hidden {hidden.shape} and w {w.shape} disagree on D")
    if 0 in hidden.shape or 0 in w.shape:
        raise ValueError(f"token_logprobs: empty input, hidden {hidden.shape}, w {w.shape}")
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"token_logprobs: labels {labels.shape} do not match hidden's {hidden.shape[0]} tokens")
    if not jnp.issubdtype(hidden.dtype, jnp.floating) or not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"token_logprobs: hidden ({hidden.dtype}) and w ({w.dtype}) must be floating point")
    if labels.dtype != jnp.int32:
        raise TypeError(f"token_logprobs: labels must be int32, got {labels.dtype}")
    if valid is not None and (valid.shape != labels.shape or valid.dtype != jnp.bool_):
        raise TypeError(f"token_logprobs: valid must be bool {labels.shape}, got {valid.dtype} {valid.shape}")


def _stats(hidden, w, labels, valid, config, vocab_axis, differentiable):
    _check_inputs(hidden, w, labels, valid)
    valid = jnp.ones(labels.shape, jnp.bool_) if valid is None else valid
    config = config.resolved_for(hidden.shape[1], hidden.dtype.itemsize)
    if vocab_axis is not None:
        labels = _vocab_shard.local_labels(labels, w.shape[1], vocab_axis)
    if differentiable:
        picked, lse = _label_logit_and_lse(hidden, w, labels, valid, config)
    else:
        forward, _ = _dispatch.implementation(config)
        picked, lse = forward(*jax.lax.stop_gradient((hidden, w)), labels, valid)
    if vocab_axis is not None:
        picked, lse = _vocab_shard.combine(picked, lse, vocab_axis)
    return jnp.where(valid, picked - lse, 0.0), jnp.where(valid, lse, 0.0)


def token_logprobs(
    hidden: chex.Array,
    w: chex.Array,
    labels: chex.Array,
    valid: chex.Array | None = None,
    *,
    impl: str = "auto",
    block_tokens: int | None = None,
    block_vocab: int | None = None,
    interpret: bool = False,
    vocab_axis: str | None = None,
) -> tuple[chex.Array, chex.Array]:
    """Per-token label log-probs without materializing the [N, V] logits.

    .. math:: \\text{lse}_t = \\log \\sum_v e^{h_t \\cdot w_v}, \\qquad
              \\text{logp}_t = h_t \\cdot w_{y_t} - \\text{lse}_t

    Args:
      hidden: [N, D] float (fp32 or bf16), final hidden states of the scored tokens.
      w: [D, V] LM head (with ``vocab_axis``: this shard's [D, V / shards] columns).
      labels: int32 [N], the next-token ids (global ids when the vocabulary is sharded). A valid
        label outside [0, V) matches no column and gives ``-lse``.
      valid: optional bool [N]; False marks padding: its logp and lse are 0 and it gets no gradient.
      impl: "auto" | "xla" | "pallas_gpu" | "pallas_tpu" (see ``KernelConfig``).
      block_tokens, block_vocab: tile shape; any size works (need not divide N or V).
      interpret: run a Pallas kernel in interpret mode (CPU tests).
      vocab_axis: name of the mesh axis ``w``'s columns are split over, when called inside
        ``shard_map``; partial log-sum-exps are combined across it.

    Returns:
      ``(logp, lse)``, float32 [N] each. Differentiable w.r.t. ``hidden`` and ``w`` by a custom
      VJP that recomputes each tile; the residuals are only the inputs and ``lse``.
    """
    config = _dispatch.KernelConfig(impl, block_tokens, block_vocab, interpret)
    return _stats(hidden, w, labels, valid, config, vocab_axis, differentiable=True)


def token_logprobs_no_grad(
    hidden: chex.Array,
    w: chex.Array,
    labels: chex.Array,
    valid: chex.Array | None = None,
    *,
    impl: str = "auto",
    block_tokens: int | None = None,
    block_vocab: int | None = None,
    interpret: bool = False,
    vocab_axis: str | None = None,
) -> tuple[chex.Array, chex.Array]:
    """Forward-only ``token_logprobs`` for a frozen (reference) model.

    Same arguments and values; the inputs pass through ``stop_gradient`` and the tiles run without
    the custom VJP, so nothing is saved for a backward pass and the gradient is zero.
    """
    config = _dispatch.KernelConfig(impl, block_tokens, block_vocab, interpret)
    return _stats(hidden, w, labels, valid, config, vocab_axis, differentiable=False)
