"""Where omni_jax keeps what it builds for the user (the demo checkpoint, compiled CPU kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$OMNI_JAX_CACHE``, else ``$XDG_CACHE_HOME/omni_jax``, else ``~/.cache/omni_jax``."""
    env = os.environ.get("OMNI_JAX_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omni_jax"
