"""omni_jax: Qwen3-Omni-30B-A3B (Thinker-Talker MoE) in pure JAX / Flax NNX.

    python -m omni_jax.generate --demo            # CLI
    from omni_jax.weights import load_checkpoint  # library
"""

__version__ = "0.1.0"


def load(path=None, *, dtype: str = "float32", mesh=None, demo: bool = False, progress: bool = False,
         compilation_cache: str | None = None):
    """``omni_jax.load(DIR, dtype=..., mesh="data=1,expert=8")`` -> a model with ``generate(messages)`` /
    ``stream(messages)`` (see ``omni_jax.api``). The persistent compilation cache is on unless
    ``compilation_cache="off"`` (see ``omni_jax.compilation``)."""
    from omni_jax.api import load as _load

    return _load(path, dtype=dtype, mesh=mesh, demo=demo, progress=progress, compilation_cache=compilation_cache)
