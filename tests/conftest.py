"""Shared test setup: CPU JAX in float32 with full-precision matmuls, and session-cached tiny HF checkpoints."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# no persistent compilation cache in tests (hermetic; nothing written to the user's cache folder) unless the
# environment asks for one, e.g. OMNI_JAX_COMPILATION_CACHE=/ci/cache to share compiled programs between CI runs
os.environ.setdefault("OMNI_JAX_COMPILATION_CACHE", "off")
# XLA's default optimization for every model, so results of two paths of ours compare exactly (the tiny models
# would otherwise compile at the fast effort); tests/test_compile_effort.py covers the fast effort
os.environ.setdefault("OMNI_JAX_COMPILE_EFFORT", "full")

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# hypothesis keeps its files (example database, caches) in ./.hypothesis by default: not in the checkout
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "omni_jax-tests-hypothesis")

from hf_fixtures import cached_checkpoint, tiny_config_dict  # noqa: E402


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_fixtures")


@pytest.fixture(scope="session")
def tiny_ckpt(fixture_root) -> Path:
    """The full tiny omni model (thinker + talker + code2wav), real vocab and special ids, fp32."""
    return cached_checkpoint(fixture_root, "tiny_omni", tiny_config_dict(), seed=0)


@pytest.fixture(scope="session")
def tiny_tamed_ckpt(fixture_root) -> Path:
    """``tiny_ckpt`` with its Code2Wav rescaled so the waveform is unsaturated (the same tokens and codec codes)."""
    return cached_checkpoint(fixture_root, "tiny_omni_tamed", tiny_config_dict(), seed=0, tame_code2wav=True)


@pytest.fixture(scope="session")
def tiny_thinker_only_ckpt(fixture_root) -> Path:
    return cached_checkpoint(fixture_root, "tiny_thinker_only", tiny_config_dict(with_talker=False), seed=1)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """An OMNI_JAX_CACHE folder holding the demo checkpoint, built once per session (set the variable to it)."""
    from omni_jax.demo import DEMO_VERSION, build_demo_checkpoint

    root = tmp_path_factory.mktemp("omni_jax_cache")
    build_demo_checkpoint(root / f"demo-{DEMO_VERSION}", progress=False)
    return root


@pytest.fixture(scope="session")
def demo_compilation_cache(tmp_path_factory) -> Path:
    """A persistent compilation cache shared by the tests that run the same demo calls in different processes
    (the README's examples in this one, the quickstart notebook in a kernel): the second compiles less."""
    return tmp_path_factory.mktemp("demo_compilation_cache")


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def nothing_written_to_the_repository_root():
    """Tests write into their temporary folders: a file left in the checkout's root fails the test that made it."""
    before = set(os.listdir(REPO_ROOT))
    yield
    new = sorted(set(os.listdir(REPO_ROOT)) - before - {".pytest_cache", "__pycache__"})
    assert not new, f"this test wrote {new} into the repository root"
