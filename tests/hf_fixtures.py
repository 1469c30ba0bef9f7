"""Tiny random Hugging Face Qwen3-Omni checkpoints, built locally (never downloaded).

The tiny config stays structurally identical to the real one: MoE thinker with
head_dim != hidden/heads, interleaved M-RoPE, 3-level deepstack from a >= 4-block ViT, 2-layer AuT with 128
mels and the real windows, MoE talker with shared expert, 16 code groups, code predictor, Code2Wav with
the real upsampling chain. Every parameter is re-drawn after construction (transformers can leave fused
expert weights uninitialised) and rescaled so each part visibly moves the output: a parity test must fail
when the part it covers is broken.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

REAL_VOCAB = 152064

# Test tolerances are stated next to the tests; these are the model sizes.
TINY = dict(
    text=dict(
        vocab_size=REAL_VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, moe_intermediate_size=32,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [6, 5, 5],
                         "interleaved": True, "mrope_interleaved": True},
        max_position_embeddings=4096, tie_word_embeddings=False,
    ),
    vision=dict(
        depth=4, hidden_size=32, num_heads=2, intermediate_size=48, hidden_act="gelu_pytorch_tanh",
        in_channels=3, patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
        num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
    ),
    audio=dict(
        num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
        max_source_positions=1500, n_window=50, n_window_infer=800, conv_chunksize=500,
        downsample_hidden_size=16, output_dim=64, activation_function="gelu", scale_embedding=False,
    ),
    talker_text=dict(
        vocab_size=3072, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, moe_intermediate_size=24, num_experts=8, num_experts_per_tok=3,
        norm_topk_prob=True, shared_expert_intermediate_size=40, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [6, 5, 5],
                         "interleaved": True},
        max_position_embeddings=4096,
    ),
    code_predictor=dict(
        vocab_size=2048, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, num_code_groups=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=4096, layer_types=["full_attention"] * 2,
    ),
    code2wav=dict(
        codebook_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=48, rms_norm_eps=1e-5, layer_scale_initial_scale=0.01, sliding_window=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=8000,
        num_quantizers=16, decoder_dim=48, upsampling_ratios=[2, 2], upsample_rates=[8, 5, 4, 3],
    ),
)

SPECIAL_IDS = dict(
    thinker=dict(position_id_per_seconds=13, audio_token_id=151675, audio_start_token_id=151669,
                 audio_end_token_id=151670, image_token_id=151655, video_token_id=151656,
                 vision_start_token_id=151652, vision_end_token_id=151653, user_token_id=872,
                 tie_word_embeddings=False),
    talker=dict(num_code_groups=16, accept_hidden_layer=2, codec_eos_token_id=2150, codec_nothink_id=2155,
                codec_think_bos_id=2156, codec_think_eos_id=2157, codec_pad_id=2148, codec_bos_id=2149,
                audio_token_id=151675, image_token_id=151655, video_token_id=151656,
                vision_start_token_id=151652, audio_start_token_id=151669, position_id_per_seconds=13,
                spatial_merge_size=2, speaker_id={"chelsie": 2301, "ethan": 2302, "aiden": 2303},
                tie_word_embeddings=False),
    top=dict(im_start_token_id=151644, im_end_token_id=151645, tts_pad_token_id=151671, tts_bos_token_id=151672,
             tts_eos_token_id=151673, system_token_id=8948, user_token_id=872, assistant_token_id=77091),
)


def tiny_config_dict(overrides: dict | None = None, with_talker: bool = True) -> dict:
    """A config.json-style dict (transformers 5.x spelling) for a tiny model; ``overrides`` patches TINY."""
    t = copy.deepcopy(TINY)
    for k, v in (overrides or {}).items():
        t[k].update(v)
    talker_text = dict(t["talker_text"])
    d = {
        "model_type": "qwen3_omni_moe",
        "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
        "enable_audio_output": with_talker,
        "thinker_config": {
            "model_type": "qwen3_omni_moe_thinker",
            "text_config": {"model_type": "qwen3_omni_moe_text", **t["text"]},
            "vision_config": {"model_type": "qwen3_omni_moe_vision_encoder", **t["vision"]},
            "audio_config": {"model_type": "qwen3_omni_moe_audio_encoder", **t["audio"]},
            **SPECIAL_IDS["thinker"],
        },
        **SPECIAL_IDS["top"],
    }
    if with_talker:
        d["talker_config"] = {
            "text_config": {"model_type": "qwen3_omni_moe_talker_text", **talker_text},
            "code_predictor_config": {"model_type": "qwen3_omni_moe_talker_code_predictor", **t["code_predictor"]},
            "thinker_hidden_size": t["text"]["hidden_size"],
            **SPECIAL_IDS["talker"],
        }
        d["code2wav_config"] = dict(t["code2wav"])
    return d


def hf_config(config_dict: dict):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeConfig

    return Qwen3OmniMoeConfig(**copy.deepcopy(config_dict))


# Per-family rescaling, chosen so every part moves the output (at the default init, a tiny model's MoE
# blocks, audio encoder and Code2Wav barely change it).
def _scale_for(name: str) -> tuple[str, float]:
    """(kind, value): 'normal' std, or 'around_one' for norm weights / scales."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight") or ".ln_" in name and name.endswith("weight"):
        return "around_one", 0.2
    if "norm" in name and name.endswith("weight"):
        return "around_one", 0.2
    if name.endswith(".alpha") or name.endswith(".beta"):
        return "normal", 0.3
    if name.endswith("layer_scale.scale") or name.endswith(".scale"):
        return "around_one", 0.3
    if name.endswith(".gamma"):
        return "around_one", 0.3
    if name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
        return "normal", 1.0
    if "embed" in name or "codec_embedding" in name or "code_embedding" in name:
        return "normal", 1.0
    if name.endswith("bias"):
        return "normal", 0.1
    return "fan_in", 1.0


def randomize_(model, seed: int, prefix: str = "") -> None:
    """Re-draw every parameter of a HF model with the scales above (deterministic for a seed). ``prefix``: the
    module's place in the whole model (e.g. ``thinker.model.audio_tower.``), for the scale rules."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            name = prefix + name
            kind, v = _scale_for(name)
            if kind == "around_one":
                p.copy_(1.0 + v * torch.randn(p.shape, generator=gen))
            elif kind == "normal":
                p.copy_(v * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
                if "experts.gate_up_proj" in name or "experts.down_proj" in name:
                    fan_in = p.shape[-1]
                if ".conv" in name and "ConvTranspose" not in name and p.ndim == 3 and "upsample" in name:
                    fan_in = p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / np.sqrt(max(fan_in, 1))))


def build_hf_model(config_dict: dict, seed: int = 0, dtype="float32", attn="eager"):
    """Instantiate a tiny HF Qwen3OmniMoeForConditionalGeneration with rescaled random weights."""
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(seed)
    cfg = hf_config(config_dict)
    cfg._attn_implementation = attn
    for sub in (cfg.thinker_config, getattr(cfg, "talker_config", None), getattr(cfg, "code2wav_config", None)):
        if sub is not None:
            sub._attn_implementation = attn
    model = Qwen3OmniMoeForConditionalGeneration(cfg)
    randomize_(model, seed)
    model = model.to(getattr(torch, dtype)).eval()
    return model


def tame_code2wav_(c2w, seed=0) -> None:
    """Rescale every decoder conv of a HF ``Qwen3OmniMoeCode2Wav`` (weight and bias) in one calibration pass so
    its output std is O(1): the tiny decoder otherwise reaches ~1e5, and its clamped waveform is +-1 almost
    everywhere, which hides any error."""
    import torch

    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeCausalConvNet,
        Qwen3OmniMoeCausalTransConvNet,
    )

    targets = {}
    for name, mod in c2w.decoder.named_modules():
        if isinstance(mod, (Qwen3OmniMoeCausalConvNet, Qwen3OmniMoeCausalTransConvNet)):
            targets[mod] = 0.3 if name.endswith("conv2") else 1.0
    targets[c2w.decoder[-1]] = 0.3

    def hook(mod, inp, out):
        s = targets[mod] / float(out.std())
        mod.conv.weight.mul_(s)
        mod.conv.bias.mul_(s)
        return out * s

    handles = [m.register_forward_hook(hook) for m in targets]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c2w(torch.randint(0, c2w.config.codebook_size, (2, c2w.config.num_quantizers, 24), generator=g))
    for h in handles:
        h.remove()


def save_hf_checkpoint(model, out_dir: str | Path, with_tokenizer: bool = True) -> Path:
    """save_pretrained (original per-expert layout) plus the real tokenizer files and chat template."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    if with_tokenizer:
        from omni_jax.processing.assets import copy_tokenizer_files

        copy_tokenizer_files(out_dir)
    return out_dir


def cached_checkpoint(cache_root: Path, name: str, config_dict: dict, seed: int = 0, tame_code2wav: bool = False
                      ) -> Path:
    """Build once per cache_root (pytest's session tmp dir or a user cache) and reuse. ``tame_code2wav``: the
    Code2Wav rescaled (``tame_code2wav_``) so its waveform is unsaturated, for whole-model waveform checks."""
    out = Path(cache_root) / name
    if (out / "config.json").exists():
        return out
    model = build_hf_model(config_dict, seed=seed)
    if tame_code2wav:
        tame_code2wav_(model.code2wav, seed)
    tmp = Path(str(out) + f".tmp{os.getpid()}")
    save_hf_checkpoint(model, tmp)
    (tmp / "fixture.json").write_text(json.dumps({"seed": seed, "config": config_dict}))
    os.replace(tmp, out)
    return out
