"""Compiled programs kept on disk (``omni_jax.executables``): a new process loads them without tracing,
lowering or compiling, runs them with the same results, and never serves a program for other arguments."""

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import executables
from omni_jax.compilation import CompileLog, reset_cache_hit_count, setup_compilation_cache

LOWERED: list[str] = []


def _listener(name, duration, **kwargs):
    if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        LOWERED.append(str(kwargs.get("fun_name", "")))


jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.fixture
def store(tmp_path):
    directory = setup_compilation_cache(tmp_path / "cache")
    jax.clear_caches()
    executables.clear()
    yield directory / executables.SUBDIR
    setup_compilation_cache("off")
    executables.clear()


def new_process():
    """What a new process starts with: nothing compiled, traced or loaded in memory."""
    jax.clear_caches()
    executables.clear()
    LOWERED.clear()
    reset_cache_hit_count()


@executables.program(static_argnames=("scale",), donate_argnames=("state",))
def step(params, state, x, scale: float):
    return {"y": params["w"] @ x * scale + state}, state + 1


def run(scale=2.0, n=3):
    params = {"w": jnp.arange(n * n, dtype=jnp.float32).reshape(n, n)}
    return step(params, jnp.ones(n), jnp.arange(n, dtype=jnp.float32), scale=scale)


def test_a_new_process_loads_the_program_without_tracing_lowering_or_compiling(store):
    first, _ = run()
    assert len(list(store.glob("hlo-*.xla"))) == 1
    new_process()
    with CompileLog() as log:
        again, state = run()
    np.testing.assert_array_equal(again["y"], first["y"])
    np.testing.assert_array_equal(state, np.full(3, 2.0))
    assert log.compiled == 0 and log.programs["jit(step)"].loaded == 1, log.table()
    assert not [n for n in LOWERED if "step" in n], LOWERED


def test_other_static_values_or_shapes_are_other_programs(store):
    a, _ = run(2.0)
    b, _ = run(3.0)
    c, _ = run(2.0, n=4)
    assert len(list(store.glob("hlo-*.xla"))) == 3
    new_process()
    b2, _ = run(3.0)
    np.testing.assert_array_equal(b2["y"], b["y"])
    assert not np.array_equal(a["y"], b["y"]) and c["y"].shape == (4,)


def test_donated_state_is_consumed_by_a_loaded_program(store):
    run()
    new_process()
    params = {"w": jnp.eye(3)}
    state = jnp.zeros(3)
    step(params, state, jnp.ones(3), scale=1.0)
    step(params, state := jnp.zeros(3), jnp.ones(3), scale=1.0)
    assert state.is_deleted()


def test_a_package_edit_that_leaves_the_program_alone_lowers_it_once_and_loads_it(store, monkeypatch):
    first, _ = run()
    new_process()
    monkeypatch.setattr(executables, "source_fingerprint", lambda: "an edited package")
    with CompileLog() as log:
        again, _ = run()  # a new key: traced and lowered, then found by its StableHLO
    np.testing.assert_array_equal(again["y"], first["y"])
    assert log.compiled == 0 and log.programs["jit(step)"].loaded == 1, log.table()
    assert [n for n in LOWERED if "step" in n]
    new_process()
    run()
    assert not [n for n in LOWERED if "step" in n]


def test_an_unreadable_entry_is_compiled_again_and_replaced(store):
    first, _ = run()
    for entry in store.glob("*.xla"):
        entry.write_bytes(b"not an executable")
    new_process()
    with CompileLog() as log:
        again, _ = run()  # JAX's own cache serves it: the entries are removed, not replaced by that executable
    np.testing.assert_array_equal(again["y"], first["y"])
    assert log.programs["jit(step)"].loaded == 1 and not list(store.glob("*.xla")), log.table()

    for jax_entry in store.parent.glob("jit_step*"):  # JAX's entry gone: XLA compiles it, but JAX's cache served
        jax_entry.unlink()  # the small helper programs in this process, so it is not saved (it could share their
    new_process()  # compiled functions, and would then fail to run in the next process)
    with CompileLog() as log:
        run()
    assert log.programs["jit(step)"].compiled == 1 and not list(store.glob("*.xla")), log.table()

    for jax_entry in store.parent.glob("jit_*"):  # JAX's cache empty: everything compiles, the entry is saved
        jax_entry.unlink()
    new_process()
    with CompileLog() as log:
        run()
    assert log.programs["jit(step)"].compiled == 1 and len(list(store.glob("*.xla"))) == 2, log.table()
    new_process()
    with CompileLog() as log:
        run()
    assert log.compiled == 0 and not [n for n in LOWERED if "step" in n]  # the replaced entry loads


def test_unkeyable_statics_traced_calls_and_a_cache_that_is_off_take_the_jit_path(store):
    @executables.program(static_argnames=("f",))
    def apply(x, f):
        return f(x)

    np.testing.assert_allclose(apply(jnp.ones(2), f=jnp.sin), np.sin(np.ones(2)), rtol=1e-6)  # a callable: not keyable
    traced = jax.jit(lambda x: run(2.0, 3)[0]["y"] + x)(jnp.zeros(3))  # inside another trace
    assert traced.shape == (3,)
    assert len(list(store.glob("*.xla"))) == 0
    setup_compilation_cache("off")
    new_process()
    out, _ = run()
    assert out["y"].shape == (3,) and len(list(store.glob("*.xla"))) == 0


def test_static_keys_are_stable_text_or_refused():
    from omni_jax.config import TextConfig
    from omni_jax.models.decoder import StackOptions

    assert executables.static_key(TextConfig()) == executables.static_key(TextConfig())
    assert executables.static_key(jnp.float32) == executables.static_key(np.float32) == "dtype:float32"
    assert executables.static_key(StackOptions(routing=())) != executables.static_key(StackOptions((), taps=(1,)))
    with pytest.raises(Exception, match="function"):
        executables.static_key(lambda x: x)


def test_each_compile_effort_is_its_own_program_and_small_models_compile_fast(store, monkeypatch):
    from omni_jax.compilation import EFFORT_ENV, compile_effort, effort_for
    from omni_jax.errors import UsageError

    full, _ = run()
    with compile_effort("fast"):
        fast, _ = run()
    np.testing.assert_allclose(fast["y"], full["y"], rtol=1e-6)
    assert len(list(store.glob("hlo-*.xla"))) == 2  # the fast program is not served for the full one

    monkeypatch.setenv(EFFORT_ENV, "auto")
    assert effort_for(100 * 2**20) == "fast" and effort_for(2 * 2**30) == "full"
    monkeypatch.setenv(EFFORT_ENV, "full")
    assert effort_for(100 * 2**20) == "full"
    monkeypatch.setenv(EFFORT_ENV, "fastest")
    with pytest.raises(UsageError, match=EFFORT_ENV):
        effort_for(1)
