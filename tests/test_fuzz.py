"""Property-based fuzzing of every input decoder and the converter (hypothesis, derandomised).

Random bytes, truncations, bit flips, header overwrites and moved chunks of small real files (made here
with PIL, soundfile and PyAV; a real safetensors shard; the shipped experiment files): the only outcomes
are a valid result or an OmniJaxError with a one-line message, each case under a time limit, and no
partial output (``omni_jax/bench/fuzz_targets.py``). ``python -m omni_jax.bench fuzz`` runs thousands.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_jax.bench.fuzz_targets import flip_bits, make_targets, overwrite, run_case, truncate

EXAMPLES = {"image-png": 300, "image-jpeg": 300, "audio-wav": 300, "audio-flac": 300, "audio-mp3": 300,
            "video-mp4": 150, "toml": 300, "safetensors": 200, "converter": 50}


def mutations(sample: bytes):
    n = len(sample)

    def splice(ab):
        a, b = sorted(ab)
        return sample[:a] + sample[b:] + sample[a:b]

    return st.one_of(
        st.binary(max_size=512),
        st.integers(0, n).map(lambda k: truncate(sample, k)),
        st.lists(st.integers(0, 8 * n - 1), min_size=1, max_size=8).map(lambda bits: flip_bits(sample, bits)),
        st.tuples(st.integers(0, min(n, 128)), st.binary(min_size=1, max_size=8)).map(lambda t: overwrite(sample, *t)),
        st.tuples(st.integers(0, n), st.integers(0, n)).map(splice),
    )


@pytest.fixture(scope="module")
def targets():
    return make_targets(list(EXAMPLES))


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_decoder_gives_a_result_or_one_line_error(targets, name):
    target = targets[name]
    with tempfile.TemporaryDirectory() as d:  # the unmutated sample decodes
        assert run_case(target, target.sample, Path(d)) == "valid"

    @settings(max_examples=EXAMPLES[name], derandomize=True, database=None, deadline=timedelta(seconds=10),
              suppress_health_check=list(HealthCheck))
    @given(mutations(target.sample))
    def case(data):
        with tempfile.TemporaryDirectory() as d:
            run_case(target, data, Path(d))

    case()


def _numeric_text(kind: str):
    from omni_jax.bench.fuzz_targets import EDGE_FLOATS, EDGE_INTS

    if kind == "int":
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(-2**64, 2**64)).map(str)
    return st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-10**6, 10**6).map(str))


def test_cli_numeric_flags_give_a_request_or_one_line_error(tiny_ckpt, tmp_path):
    """Random and out-of-range values of every numeric flag, through the CLI's checks and preparation (no
    weights are read): a prepared request or a one-line OmniJaxError, and nothing written."""
    from omni_jax.bench.fuzz_targets import NUMERIC_FLAGS, run_flags_case

    flag_values = st.sampled_from(sorted(NUMERIC_FLAGS)).flatmap(
        lambda f: st.tuples(st.just(f), _numeric_text(NUMERIC_FLAGS[f])))

    @settings(max_examples=200, derandomize=True, database=None, deadline=timedelta(seconds=10),
              suppress_health_check=list(HealthCheck))
    @given(st.lists(flag_values, min_size=1, max_size=3, unique_by=lambda fv: fv[0]))
    def case(pairs):
        with tempfile.TemporaryDirectory() as d:
            run_flags_case(tiny_ckpt, [x for pair in pairs for x in pair], Path(d))

    case()
