"""The benchmarks' interleaved timer: every function runs its warmups, then per round ``settle`` untimed runs
and one timed run of each, the order rotated by one each round."""

from omni_jax.bench.timing import time_interleaved


def test_time_interleaved_rotates_and_counts_runs():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    t = time_interleaved(fns, warmup=1, repeat=4, settle=1)
    assert calls[:3] == ["a", "b", "c"]  # warmups
    assert calls[3:] == list("aabbcc" "bbccaa" "ccaabb" "aabbcc")
    assert set(t) == set("abc")
    for r in t.values():
        assert len(r["runs_s"]) == 4
        assert r["min_s"] <= r["median_s"] <= max(r["runs_s"])
