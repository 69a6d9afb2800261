"""Compiled temporary memory of fwd+bwd at N=16384, D=2048, V=128256 (from shapes: nothing allocated)."""
import jax
import jax.numpy as jnp

from alignx_jax import kernels

N, D, V = 16384, 2048, 128256


def _temp_bytes(logprobs):
    def loss(hidden, w, labels):
        return jnp.sum(logprobs(hidden, w, labels)[0])

    shapes = (
        jax.ShapeDtypeStruct((N, D), jnp.float32),
        jax.ShapeDtypeStruct((D, V), jnp.float32),
        jax.ShapeDtypeStruct((N,), jnp.int32),
    )
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_fused_needs_20x_less_temporary_memory_and_under_64_mib():
    naive = _temp_bytes(kernels.naive_token_logprobs)
    fused = _temp_bytes(lambda h, w, y: kernels.token_logprobs(h, w, y, impl="xla"))
    assert naive >= N * V * 4  # the probe does see the fp32 logits
    assert naive / fused >= 20
    assert fused < 64 * 2**20
