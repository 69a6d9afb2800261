"""alignx_jax."""
