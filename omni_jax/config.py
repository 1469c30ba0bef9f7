"""Typed, frozen configuration for every part of Qwen3-Omni.

Defaults are the real Qwen3-Omni-30B-A3B-Instruct values (never the HF config-class defaults, which
differ in a dozen places, e.g. position_id_per_seconds 25 there vs 13 real, num_code_groups 32 vs 16, talker
rope theta 1e4 vs 1e6). ``OmniConfig.from_hf`` reads a ``config.json`` in both the transformers 4.57 spelling
(``rope_scaling`` + ``rope_theta``, ``num_experts``) and the 5.x spelling (``rope_parameters``,
``num_local_experts``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omni_jax.errors import InputFileError

PRESET_DIR = Path(__file__).parent / "presets"
REAL_CONFIG_PATH = PRESET_DIR / "qwen3_omni_30b_a3b_instruct.config.json"


class ConfigError(InputFileError):
    """A config.json that cannot describe a Qwen3-Omni model."""


def _rope(d: Mapping[str, Any], default_theta: float, allowed=("default",)) -> dict:
    """Merge the 4.57 (rope_theta + rope_scaling) and 5.x (rope_parameters) spellings."""
    rope = dict(d.get("rope_scaling") or {})
    rope.update(d.get("rope_parameters") or {})
    if "rope_theta" in d and "rope_theta" not in rope:
        rope["rope_theta"] = d["rope_theta"]
    rope.setdefault("rope_theta", default_theta)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in allowed:
        raise ConfigError(f"unsupported rope_type {rope_type!r} (expected one of {allowed})")
    return rope


def _pick(d: Mapping[str, Any], *names: str, default: Any) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


@dataclass(frozen=True)
class TextConfig:
    """A Qwen3-MoE style decoder: the Thinker's text model, and (with other values) the Talker's."""

    vocab_size: int = 152064
    hidden_size: int = 2048
    num_layers: int = 48
    num_heads: int = 32
    num_kv_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 768
    moe_intermediate_size: int = 768
    num_experts: int = 128
    top_k: int = 8
    norm_topk_prob: bool = True
    shared_expert_intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    mrope_interleaved: bool = True
    max_position_embeddings: int = 65536
    router_aux_loss_coef: float = 0.001
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    hidden_act: str = "silu"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ConfigError(f"mrope_section {self.mrope_section} does not cover head_dim {self.head_dim}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"top_k {self.top_k} outside 1..num_experts={self.num_experts}")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act {self.hidden_act!r} unsupported (Qwen3-Omni uses silu)")
        if self.mlp_only_layers or self.decoder_sparse_step != 1:
            raise ConfigError("dense (non-MoE) decoder layers are not used by Qwen3-Omni and not supported")

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **defaults) -> "TextConfig":
        base = cls(**defaults) if defaults else cls()
        rope = _rope(d, base.rope_theta)
        heads = _pick(d, "num_attention_heads", default=base.num_heads)
        hidden = _pick(d, "hidden_size", default=base.hidden_size)
        return cls(
            vocab_size=_pick(d, "vocab_size", default=base.vocab_size),
            hidden_size=hidden,
            num_layers=_pick(d, "num_hidden_layers", default=base.num_layers),
            num_heads=heads,
            num_kv_heads=_pick(d, "num_key_value_heads", default=base.num_kv_heads),
            head_dim=_pick(d, "head_dim", default=hidden // heads if "hidden_size" in d else base.head_dim),
            intermediate_size=_pick(d, "intermediate_size", default=base.intermediate_size),
            moe_intermediate_size=_pick(d, "moe_intermediate_size", default=base.moe_intermediate_size),
            num_experts=_pick(d, "num_experts", "num_local_experts", default=base.num_experts),
            top_k=_pick(d, "num_experts_per_tok", default=base.top_k),
            norm_topk_prob=bool(_pick(d, "norm_topk_prob", default=base.norm_topk_prob)),
            shared_expert_intermediate_size=_pick(
                d, "shared_expert_intermediate_size", default=base.shared_expert_intermediate_size
            ),
            rms_norm_eps=float(_pick(d, "rms_norm_eps", default=base.rms_norm_eps)),
            rope_theta=float(rope["rope_theta"]),
            mrope_section=tuple(rope.get("mrope_section", base.mrope_section)),
            mrope_interleaved=bool(rope.get("interleaved", rope.get("mrope_interleaved", base.mrope_interleaved))),
            max_position_embeddings=_pick(d, "max_position_embeddings", default=base.max_position_embeddings),
            router_aux_loss_coef=float(_pick(d, "router_aux_loss_coef", default=base.router_aux_loss_coef)),
            decoder_sparse_step=_pick(d, "decoder_sparse_step", default=base.decoder_sparse_step),
            mlp_only_layers=tuple(_pick(d, "mlp_only_layers", default=base.mlp_only_layers)),
            hidden_act=_pick(d, "hidden_act", default=base.hidden_act),
        )


TALKER_TEXT_DEFAULTS = dict(
    vocab_size=3072, hidden_size=1024, num_layers=20, num_heads=16, num_kv_heads=2, head_dim=128,
    intermediate_size=2048, moe_intermediate_size=384, num_experts=128, top_k=6, norm_topk_prob=True,
    shared_expert_intermediate_size=768,
)


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152
    num_heads: int = 16
    intermediate_size: int = 4304
    hidden_act: str = "gelu_pytorch_tanh"
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2048
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "VisionConfig":
        b = cls()
        return cls(
            depth=_pick(d, "depth", default=b.depth),
            hidden_size=_pick(d, "hidden_size", default=b.hidden_size),
            num_heads=_pick(d, "num_heads", default=b.num_heads),
            intermediate_size=_pick(d, "intermediate_size", default=b.intermediate_size),
            hidden_act=_pick(d, "hidden_act", default=b.hidden_act),
            in_channels=_pick(d, "in_channels", "in_chans", default=b.in_channels),
            patch_size=_pick(d, "patch_size", default=b.patch_size),
            temporal_patch_size=_pick(d, "temporal_patch_size", default=b.temporal_patch_size),
            spatial_merge_size=_pick(d, "spatial_merge_size", default=b.spatial_merge_size),
            out_hidden_size=_pick(d, "out_hidden_size", default=b.out_hidden_size),
            num_position_embeddings=_pick(d, "num_position_embeddings", default=b.num_position_embeddings),
            deepstack_visual_indexes=tuple(_pick(d, "deepstack_visual_indexes", default=b.deepstack_visual_indexes)),
            rope_theta=float(_rope(d, b.rope_theta, allowed=("default", "axial"))["rope_theta"]),
        )


@dataclass(frozen=True)
class AudioConfig:
    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    activation_function: str = "gelu"
    scale_embedding: bool = False
    max_source_positions: int = 1500
    n_window: int = 50
    n_window_infer: int = 800
    conv_chunksize: int = 500
    downsample_hidden_size: int = 480
    output_dim: int = 2048

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "AudioConfig":
        b = cls()
        kw = {f.name: _pick(d, f.name, default=getattr(b, f.name)) for f in dataclasses.fields(cls)}
        return cls(**kw)


@dataclass(frozen=True)
class ThinkerConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    position_id_per_seconds: int = 13
    audio_token_id: int = 151675
    audio_start_token_id: int = 151669
    audio_end_token_id: int = 151670
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    user_token_id: int = 872

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "ThinkerConfig":
        b = cls()
        ids = {
            f.name: _pick(d, f.name, default=getattr(b, f.name))
            for f in dataclasses.fields(cls)
            if f.name not in ("text", "vision", "audio")
        }
        return cls(
            text=TextConfig.from_hf(d.get("text_config") or {}),
            vision=VisionConfig.from_hf(d.get("vision_config") or {}),
            audio=AudioConfig.from_hf(d.get("audio_config") or {}),
            **ids,
        )


@dataclass(frozen=True)
class CodePredictorConfig:
    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_layers: int = 5
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    num_code_groups: int = 16

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "CodePredictorConfig":
        b = cls()
        return cls(
            vocab_size=_pick(d, "vocab_size", default=b.vocab_size),
            hidden_size=_pick(d, "hidden_size", default=b.hidden_size),
            intermediate_size=_pick(d, "intermediate_size", default=b.intermediate_size),
            num_layers=_pick(d, "num_hidden_layers", default=b.num_layers),
            num_heads=_pick(d, "num_attention_heads", default=b.num_heads),
            num_kv_heads=_pick(d, "num_key_value_heads", default=b.num_kv_heads),
            head_dim=_pick(d, "head_dim", default=b.head_dim),
            rms_norm_eps=float(_pick(d, "rms_norm_eps", default=b.rms_norm_eps)),
            rope_theta=float(_rope(d, b.rope_theta)["rope_theta"]),
            num_code_groups=_pick(d, "num_code_groups", default=b.num_code_groups),
        )


@dataclass(frozen=True)
class TalkerConfig:
    text: TextConfig = field(default_factory=lambda: TextConfig(**TALKER_TEXT_DEFAULTS))
    code_predictor: CodePredictorConfig = field(default_factory=CodePredictorConfig)
    num_code_groups: int = 16
    thinker_hidden_size: int = 2048
    accept_hidden_layer: int = 24
    codec_eos_token_id: int = 2150
    codec_nothink_id: int = 2155
    codec_think_bos_id: int = 2156
    codec_think_eos_id: int = 2157
    codec_pad_id: int = 2148
    codec_bos_id: int = 2149
    audio_token_id: int = 151675
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    audio_start_token_id: int = 151669
    position_id_per_seconds: int = 13
    spatial_merge_size: int = 2
    speaker_id: tuple[tuple[str, int], ...] = (("aiden", 2303), ("chelsie", 2301), ("ethan", 2302))

    @property
    def speakers(self) -> dict[str, int]:
        return dict(self.speaker_id)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "TalkerConfig":
        b = cls()
        scalars = {
            f.name: _pick(d, f.name, default=getattr(b, f.name))
            for f in dataclasses.fields(cls)
            if f.name not in ("text", "code_predictor", "speaker_id")
        }
        speakers = d.get("speaker_id") or dict(b.speaker_id)
        return cls(
            text=TextConfig.from_hf(d.get("text_config") or {}, **TALKER_TEXT_DEFAULTS),
            code_predictor=CodePredictorConfig.from_hf(d.get("code_predictor_config") or {}),
            speaker_id=tuple(sorted((str(k).lower(), int(v)) for k, v in speakers.items())),
            **scalars,
        )


@dataclass(frozen=True)
class Code2WavConfig:
    codebook_size: int = 2048
    hidden_size: int = 1024
    num_layers: int = 8
    num_heads: int = 16
    num_kv_heads: int = 16
    intermediate_size: int = 3072
    rms_norm_eps: float = 1e-5
    layer_scale_initial_scale: float = 0.01
    sliding_window: int = 72
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8000
    num_quantizers: int = 16
    decoder_dim: int = 1536
    upsampling_ratios: tuple[int, ...] = (2, 2)
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    sample_rate: int = 24000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "Code2WavConfig":
        b = cls()
        return cls(
            codebook_size=_pick(d, "codebook_size", default=b.codebook_size),
            hidden_size=_pick(d, "hidden_size", default=b.hidden_size),
            num_layers=_pick(d, "num_hidden_layers", default=b.num_layers),
            num_heads=_pick(d, "num_attention_heads", default=b.num_heads),
            num_kv_heads=_pick(d, "num_key_value_heads", default=b.num_kv_heads),
            intermediate_size=_pick(d, "intermediate_size", default=b.intermediate_size),
            rms_norm_eps=float(_pick(d, "rms_norm_eps", default=b.rms_norm_eps)),
            layer_scale_initial_scale=float(
                _pick(d, "layer_scale_initial_scale", default=b.layer_scale_initial_scale)
            ),
            sliding_window=_pick(d, "sliding_window", default=b.sliding_window),
            rope_theta=float(_rope(d, b.rope_theta)["rope_theta"]),
            max_position_embeddings=_pick(d, "max_position_embeddings", default=b.max_position_embeddings),
            num_quantizers=_pick(d, "num_quantizers", default=b.num_quantizers),
            decoder_dim=_pick(d, "decoder_dim", default=b.decoder_dim),
            upsampling_ratios=tuple(_pick(d, "upsampling_ratios", default=b.upsampling_ratios)),
            upsample_rates=tuple(_pick(d, "upsample_rates", default=b.upsample_rates)),
        )


@dataclass(frozen=True)
class OmniConfig:
    """The whole model. ``talker``/``code2wav`` are None for thinker-only releases (Thinking, Captioner)."""

    thinker: ThinkerConfig = field(default_factory=ThinkerConfig)
    talker: TalkerConfig | None = field(default_factory=TalkerConfig)
    code2wav: Code2WavConfig | None = field(default_factory=Code2WavConfig)
    enable_audio_output: bool = True
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673
    system_token_id: int = 8948
    user_token_id: int = 872
    assistant_token_id: int = 77091
    pad_token_id: int = 151643

    @property
    def has_talker(self) -> bool:
        return self.talker is not None and self.code2wav is not None

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "OmniConfig":
        """Build from a parsed config.json: the full omni model or a bare thinker config."""
        model_type = d.get("model_type", "qwen3_omni_moe")
        if model_type == "qwen3_omni_moe_thinker" or ("thinker_config" not in d and "text_config" in d):
            return cls(thinker=ThinkerConfig.from_hf(d), talker=None, code2wav=None, enable_audio_output=False)
        if model_type not in ("qwen3_omni_moe", "", None):
            raise ConfigError(f"model_type {model_type!r} is not a Qwen3-Omni model")
        b = cls()
        has_talker = (bool(d.get("talker_config")) and bool(d.get("code2wav_config"))
                      and bool(d.get("enable_audio_output", True)))
        scalars = {
            f.name: _pick(d, f.name, default=getattr(b, f.name))
            for f in dataclasses.fields(cls)
            if f.name not in ("thinker", "talker", "code2wav", "enable_audio_output")
        }
        return cls(
            thinker=ThinkerConfig.from_hf(d.get("thinker_config") or {}),
            talker=TalkerConfig.from_hf(d["talker_config"]) if has_talker else None,
            code2wav=Code2WavConfig.from_hf(d["code2wav_config"]) if has_talker else None,
            enable_audio_output=bool(d.get("enable_audio_output", True)) and has_talker,
            **scalars,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "OmniConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no config.json there") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_hf(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def real(cls) -> "OmniConfig":
        """The Qwen3-Omni-30B-A3B-Instruct config shipped with the package."""
        return cls.from_file(REAL_CONFIG_PATH)

    def replace(self, **kw) -> "OmniConfig":
        return dataclasses.replace(self, **kw)
