"""Batched KV-cache decoding: greedy or sampled (temperature, top-k, top-p), stopping on EOS.

Prompts are left-padded to a common length T so that every row writes its next token at the same
cache index; each row's positions count only its real tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.models import llama


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling {self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1")


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: [B, V]."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < top_p.
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _next_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    logits = logits.astype(jnp.float32)
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "pad_id"))
def generate(params: dict, prompt: jax.Array, prompt_mask: jax.Array, rng: jax.Array, *,
             config: llama.LlamaConfig, sampling: Sampling, pad_id: int = 0,
             prompt_embeddings: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Continue left-padded prompts [B, T] (prompt_mask True on real tokens).

    prompt_embeddings: optional [B, T, D] input embeddings of the prompt (e.g. with soft preference
    tokens in some positions; `llama.embed_tokens` elsewhere), read instead of the prompt's lookup.

    Returns (tokens [B, max_new_tokens], lengths [B]): the generated ids (EOS included, then
    pad_id) and how many were generated per row, EOS counted.
    """
    chex.assert_rank(prompt, 2)
    chex.assert_equal_shape((prompt, prompt_mask))
    b, t = prompt.shape
    n = sampling.max_new_tokens
    s = t + n
    prompt_mask = prompt_mask.astype(bool)
    eos = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    key_valid = jnp.concatenate([prompt_mask, jnp.zeros((b, n), bool)], axis=1)  # [B, S]
    causal = jnp.arange(s)[None, :] <= jnp.arange(t)[:, None]  # [T, S]
    cache = llama.init_cache(config, b, s)
    logits, cache = llama.forward_with_cache(params, prompt, config, positions=positions,
                                             attention_mask=causal[None] & key_valid[:, None, :],
                                             cache=cache, cache_index=0, input_embeddings=prompt_embeddings)
    rng, step_rng = jax.random.split(rng)
    token = _next_token(logits[:, -1], step_rng, sampling)
    out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos)
    next_pos = positions[:, -1] + 1

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < n) & ~jnp.all(done)

    def body(carry):
        step, token, cache, key_valid, done, out, rng = carry
        index = t + step - 1  # cache slot of `token`
        key_valid = key_valid.at[:, index].set(True)
        logits, cache = llama.forward_with_cache(
            params, token[:, None], config, positions=(next_pos + step - 1)[:, None],
            attention_mask=key_valid[:, None, :], cache=cache, cache_index=index)
        rng, step_rng = jax.random.split(rng)
        new = jnp.where(done, pad_id, _next_token(logits[:, -1], step_rng, sampling))
        out = out.at[:, step].set(new)
        return step + 1, new, cache, key_valid, done | jnp.isin(new, eos), out, rng

    carry = (jnp.int32(1), token, cache, key_valid, done, out, rng)
    _, _, _, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
    is_eos = jnp.isin(out, eos)
    first_eos = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, n)
    return out, first_eos.astype(jnp.int32)


def generate_ids(params: dict, prompts: Sequence[Sequence[int]], rng: jax.Array, *, config: llama.LlamaConfig,
                 sampling: Sampling, width_step: int = 1,
                 soft: tuple[Sequence[Sequence[int]], np.ndarray] | None = None) -> list[list[int]]:
    """Left-pad token-id prompts to one width, decode them in one batch, and cut each row's answer.

    The one home of left-pad-then-generate (`interop.Pretrained.generate`, `evaluation.generate_ids`
    and soft-token generation all call it). width_step: the padded width is a multiple of it, so a
    run of varied prompts compiles a few shapes. soft: (slot positions in each prompt, soft tokens
    [B, K, D]) placed at those positions of the prompt's input embeddings.

    Returns the new ids of each prompt, up to and including EOS.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    width = -(-max(len(p) for p in prompts) // width_step) * width_step
    pad = config.eos_token_ids[0] if config.eos_token_ids else 0
    tokens = np.full((len(prompts), width), pad, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for row, p in enumerate(prompts):  # left padding: every row's next token lands in one slot
        tokens[row, width - len(p):] = p
        mask[row, width - len(p):] = True
    embeddings = None
    if soft is not None:
        slots, soft_tokens = soft
        embeddings = llama.embed_tokens(params, jnp.asarray(tokens), config)
        for row, (p, positions) in enumerate(zip(prompts, slots)):
            at = np.asarray(positions, np.int64) + width - len(p)
            embeddings = embeddings.at[row, at].set(jnp.asarray(soft_tokens[row][:len(at)], embeddings.dtype))
    out, lengths = generate(params, jnp.asarray(tokens), jnp.asarray(mask), rng, config=config, sampling=sampling,
                            pad_id=pad, prompt_embeddings=embeddings)
    out, lengths = np.asarray(out), np.asarray(lengths)
    return [out[i, :lengths[i]].tolist() for i in range(len(prompts))]
