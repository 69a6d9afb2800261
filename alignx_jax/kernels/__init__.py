"""Fused per-token log-probs: hidden states x LM head -> label log-prob, never [N, V] logits.

Public API:
  token_logprobs(hidden, w, labels, valid=None, *, impl=..., vocab_axis=...) -> (logp, lse)
  token_logprobs_no_grad(...)     forward only, for the frozen reference model
  sharded_token_logprobs(..., mesh=, vocab_axis=)   vocabulary split over a mesh axis
  naive_token_logprobs(hidden, w, labels, valid=None)   full-logits reference (tests, benchmarks)
  gather_scored_tokens(mask, length), bucket_length(count, buckets), ScoredTokens
  segment_sum(values, segment_ids, num_segments)   per-response sums
  KernelConfig, IMPLS
  attention(q, k, v, *, segment_ids=None, roles=None, positions=None, impl=...)   packed-rows attention,
      the mask as structure (None: plain causal); block-sparse flash attention in XLA, Pallas-Triton,
      cuDNN or TPU splash
  packed_mask(segment_ids, roles, positions)   the same rule as a dense [B, T, T] mask (reference)
  auto_attention_impl(dtype, head_dim)   which attention implementation "auto" runs here
"""
from alignx_jax.kernels._attention import ATTENTION_IMPLS, attention, packed_mask
from alignx_jax.kernels._attention import auto_impl as auto_attention_impl
from alignx_jax.kernels._dispatch import IMPLS, KernelConfig
from alignx_jax.kernels._gather import ScoredTokens, bucket_length, gather_scored_tokens
from alignx_jax.kernels._reference import naive_token_logprobs
from alignx_jax.kernels._segments import segment_sum
from alignx_jax.kernels._sharded import sharded_token_logprobs
from alignx_jax.kernels._token_logprobs import token_logprobs, token_logprobs_no_grad

__all__ = [
    "ATTENTION_IMPLS",
    "attention",
    "auto_attention_impl",
    "packed_mask",
    "IMPLS",
    "KernelConfig",
    "ScoredTokens",
    "bucket_length",
    "gather_scored_tokens",
    "naive_token_logprobs",
    "segment_sum",
    "sharded_token_logprobs",
    "token_logprobs",
    "token_logprobs_no_grad",
]
