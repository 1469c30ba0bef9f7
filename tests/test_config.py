"""omni_jax.config reads the real config in both spellings; defaults are the real model's."""

import copy
import json

import pytest

from omni_jax.config import ConfigError, OmniConfig, TextConfig
from omni_jax.config import REAL_CONFIG_PATH


def real_dict():
    return json.loads(REAL_CONFIG_PATH.read_text())


def to_457_spelling(d: dict) -> dict:
    """rope_parameters -> rope_theta + rope_scaling; talker num_local_experts -> num_experts."""
    d = copy.deepcopy(d)

    def walk(node):
        if isinstance(node, dict):
            if "rope_parameters" in node:
                rp = dict(node.pop("rope_parameters"))
                node["rope_theta"] = rp.pop("rope_theta")
                if len(rp) > 1 or rp.get("rope_type", "default") != "default":
                    node["rope_scaling"] = rp
            if "num_local_experts" in node:
                node["num_experts"] = node.pop("num_local_experts")
            for v in node.values():
                walk(v)

    walk(d)
    return d


def test_real_config_values():
    cfg = OmniConfig.real()
    t = cfg.thinker.text
    assert (t.vocab_size, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim) == (
        152064, 2048, 48, 32, 4, 128)
    assert (t.num_experts, t.top_k, t.moe_intermediate_size, t.rope_theta, t.mrope_section) == (
        128, 8, 768, 1e6, (24, 20, 20))
    assert cfg.thinker.position_id_per_seconds == 13 and cfg.thinker.audio_token_id == 151675
    assert cfg.thinker.vision.out_hidden_size == 2048 and cfg.thinker.audio.output_dim == 2048
    tk = cfg.talker
    assert (tk.text.num_experts, tk.text.top_k, tk.text.norm_topk_prob, tk.text.shared_expert_intermediate_size) == (
        128, 6, True, 768)
    assert tk.text.rope_theta == 1e6 and tk.code_predictor.rope_theta == 1e6
    assert tk.accept_hidden_layer == 24 and tk.num_code_groups == 16 and tk.codec_eos_token_id == 2150
    assert tk.speakers == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    assert cfg.code2wav.sliding_window == 72 and cfg.code2wav.upsample_rates == (8, 5, 4, 3)


def test_defaults_are_the_real_model():
    assert OmniConfig() == OmniConfig.real()


def test_transformers_457_spelling_gives_the_same_config():
    d = to_457_spelling(real_dict())
    assert "rope_parameters" not in json.dumps(d) and '"num_experts": 128' in json.dumps(d)
    assert OmniConfig.from_hf(d) == OmniConfig.real()


def test_thinker_only_and_bad_configs(tmp_path):
    d = real_dict()
    d["enable_audio_output"] = False
    cfg = OmniConfig.from_hf(d)
    assert cfg.talker is None and not cfg.has_talker
    with pytest.raises(ConfigError, match="not a Qwen3-Omni model"):
        OmniConfig.from_hf({"model_type": "llama"})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        OmniConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        TextConfig(num_heads=32, num_kv_heads=5)
