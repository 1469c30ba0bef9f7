"""omni_jax: Qwen3-Omni-30B-A3B (Thinker-Talker MoE) in pure JAX / Flax NNX.

    python -m omni_jax.generate --demo            # CLI
    from omni_jax.weights import load_checkpoint  # library
"""

__version__ = "0.1.0"
