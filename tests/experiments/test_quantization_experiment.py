"""The quantization experiment through the runner on the tiny checkpoint: rows, memory fractions, quality order.

The tiny checkpoint is fp32, so the expected expert storage is (bits/8 bytes per weight + one 4-byte scale
per group), group = the input dim here (64 for gate_up, 32 for down: smaller than 128), against 4 bytes per
weight. Thinker only: the Talker variants (``stacks = ["talker"]``) go through the lead's TalkerEval, which
costs ~75 s of compiles on this machine; the Talker's quantized forward is tested in
tests/quant/test_quantized_talker.py instead.
"""

from __future__ import annotations

import json

import pytest

from experiment_helpers import SMALL_EVAL, read_rows, write_experiment


def test_quantization_experiment(tiny_ckpt, tmp_path):
    from omni_jax.config import OmniConfig
    from omni_jax.experiments.runner import run_experiment

    exp = write_experiment(tmp_path / "quant.toml", "quantization",
                           {"eval": dict(SMALL_EVAL, decode_tokens=0),  # decode: tests/quant
                            "quantization": {"bits": [8, 4], "group_size": 128, "stacks": ["thinker"]}},
                           name="quant", seed=0)
    out, rows = run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert read_rows(out) == json.loads(json.dumps(rows, default=float))
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["thinker fp (reference)", "thinker int8", "thinker int4"]
    tc = OmniConfig.from_file(tiny_ckpt).thinker.text
    ref, q8, q4 = by["thinker fp (reference)"], by["thinker int8"], by["thinker int4"]
    assert ref["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and ref["expert_bytes_fraction"] == 1.0
    assert 0 < q8["kl_to_reference"] < q4["kl_to_reference"], (q8, q4)  # the check
    assert q8["greedy_agreement"] >= q4["greedy_agreement"]
    assert 0 < q8["max_abs_weight_error"] < q4["max_abs_weight_error"]
    n_gu = tc.num_layers * tc.num_experts * tc.hidden_size * 2 * tc.moe_intermediate_size
    n_dn = tc.num_layers * tc.num_experts * tc.moe_intermediate_size * tc.hidden_size
    assert ref["expert_param_bytes"] == 4 * (n_gu + n_dn)
    for bits, row in ((8, q8), (4, q4)):
        stored = (n_gu + n_dn) * bits // 8 + 4 * (n_gu // tc.hidden_size + n_dn // tc.moe_intermediate_size)
        assert row["bits"] == bits and row["expert_param_bytes"] == stored
        assert row["expert_bytes_fraction"] == pytest.approx(stored / (4 * (n_gu + n_dn)))
        assert row["expert_memory_saved"] == pytest.approx(1 - row["expert_bytes_fraction"])
        assert row["param_bytes"] == ref["param_bytes"] - ref["expert_param_bytes"] + stored
    assert (out / "plots" / "quantization.png").stat().st_size > 1000
