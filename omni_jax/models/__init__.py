"""Flax NNX modules holding parameters; each calls pure functions from omni_jax.ops / omni_jax.moe."""
