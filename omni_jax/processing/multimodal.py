"""Multimodal conversations -> a left-padded token batch + media tensors + TM-RoPE positions.

The job of HF's ``Qwen3OmniMoeProcessor`` (transformers 5.23):

1. each conversation (messages whose content is a string or items of type text/image/audio/video, media
   given as local paths or arrays) is rendered with the checkpoint's chat template and tokenized; every media
   item leaves one placeholder (``<|image_pad|>``, ``<|audio_pad|>``, ``<|video_pad|>``);
2. media are loaded as the reference pipeline loads them (images: PIL, EXIF transpose, RGB; audio: soundfile
   + soxr_hq to 16 kHz; videos: PyAV rgb24 frames; with ``use_audio_in_video`` the video's audio track is
   decoded with PyAV at its native rate, down-mixed and resampled like ``librosa.load``) and preprocessed
   (``processing.image`` / ``processing.video`` / ``processing.audio``);
3. every audio of the *whole batch* (standalone clips and video tracks, in order of appearance) is
   featurised as one padded batch, as the reference does (a shorter clip's last frames see the batch's
   zero padding);
4. each placeholder is expanded to its encoder's token count: image and video ``t*h*w/4``, audio
   ``_get_feat_extract_output_lengths(frames)``; with ``use_audio_in_video`` a video placeholder becomes
   ``<|audio_start|>`` + video and audio pads interleaved by time + ``<|audio_end|>``
   (``replace_video_with_audio_token``: each video grid sits at ``t * second_per_grid * 13`` position ids,
   one per audio token, the video token first on ties);
5. the token lists are left-padded to a bucketed length (``pad_left``) and ``get_rope_index`` gives the
   position ids and rope deltas (prompts without image or video, audio included, take its text branch,
   ``cumsum(mask) - 1``, as HF does).

Memory knobs (``MediaOptions``): image max/min pixels, video max/min pixels per frame, video frame rate
(sampling; it also sets ``video_second_per_grid = 2 / fps`` as HF does when ``fps`` is passed,
else HF's default fps 1.0: 2 s per grid, whatever the video's real rate) and max frames.

    proc = MultimodalProcessor.from_dir(checkpoint_dir, cfg)
    batch = proc([build_messages("Describe.", images=["cat.png"], audios=["q.wav"])])
    prompt = omni_jax.models.thinker.prepare_prompt(pure_params(model.thinker), cfg, batch)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from omni_jax.errors import InputFileError
from omni_jax.config import OmniConfig
from omni_jax.models.prompt import PROMPT_BUCKET, pad_left
from omni_jax.positions import RopeIndexConfig, audio_output_lengths, get_rope_index
from omni_jax.processing.assets import PREPROCESSOR_FILE
from omni_jax.processing.audio import (SAMPLE_RATE, AudioFeatureConfig, AudioInputError, load_audio,
                                       log_mel_features, min_samples)
from omni_jax.processing.chat import ChatTemplate
from omni_jax.processing.image import VisionPreprocessConfig, num_image_tokens, preprocess_image
from omni_jax.processing.tokenizer import Tokenizer
from omni_jax.processing.video import VideoPreprocessConfig, as_video, preprocess_video

MEDIA_TYPES = ("image", "audio", "video")


class MediaInputError(InputFileError):
    """A conversation or media item the processor cannot use (one line, naming the item or file)."""


@dataclass(frozen=True)
class MediaOptions:
    """Per-call media settings. ``None`` keeps the checkpoint's / HF processor's default."""

    use_audio_in_video: bool = False
    image_max_pixels: int | None = None  # default: preprocessor_config.json (12,845,056 for the real model)
    image_min_pixels: int | None = None
    video_max_pixels: int | None = None  # per frame; default 768*32*32
    video_min_pixels: int | None = None  # per frame; default 128*32*32
    video_fps: float | None = None  # sample frames at this rate (HF do_sample_frames + fps); None: all frames
    video_max_frames: int | None = None  # with video_fps: HF's max_frames (default 768); without: at most this
    #                                      many frames, sampled uniformly (HF's num_frames), when a video has more


@dataclass
class MultimodalBatch:
    """What the processor returns (host arrays), named as HF's processor names them."""

    input_ids: np.ndarray  # [B, P] int32, left-padded
    attention_mask: np.ndarray  # [B, P] int32
    position_ids: np.ndarray  # [3, B, P] float32
    rope_deltas: np.ndarray  # [B] float32
    pixel_values: np.ndarray | None = None  # [N_img_patches, 1536] float32
    image_grid_thw: np.ndarray | None = None  # [n_images, 3] int64
    pixel_values_videos: np.ndarray | None = None  # [N_vid_patches, 1536] float32
    video_grid_thw: np.ndarray | None = None  # [n_videos, 3] int64
    video_second_per_grid: np.ndarray | None = None  # [n_videos] float32
    input_features: np.ndarray | None = None  # [n_audios, 128, T] float32 (standalone + video tracks)
    feature_attention_mask: np.ndarray | None = None  # [n_audios, T] int32
    use_audio_in_video: bool = False
    token_lengths: list[int] = field(default_factory=list)  # unpadded length per prompt

    @property
    def batch(self) -> int:
        return self.input_ids.shape[0]

    def hf_inputs(self) -> dict[str, Any]:
        """The keyword arguments of HF's ``thinker(...)`` / ``thinker.generate(...)`` (numpy; None dropped)."""
        d = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=self.pixel_values,
                 image_grid_thw=self.image_grid_thw, pixel_values_videos=self.pixel_values_videos,
                 video_grid_thw=self.video_grid_thw, video_second_per_grid=self.video_second_per_grid,
                 input_features=self.input_features, feature_attention_mask=self.feature_attention_mask)
        d = {k: v for k, v in d.items() if v is not None}
        if self.use_audio_in_video:
            d["use_audio_in_video"] = True
        return d


# ------------------------------------------------------------------------------------------ media loading
def resample_like_librosa(waveform: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """soxr_hq resampling padded/trimmed to ``ceil(n * target / rate)`` samples (``librosa.resample``)."""
    import soxr

    waveform = np.asarray(waveform, np.float32)
    if rate == target:
        return waveform
    n = math.ceil(waveform.shape[-1] * target / rate)
    out = soxr.resample(waveform, rate, target, quality="soxr_hq")
    return np.ascontiguousarray(np.pad(out, (0, max(0, n - len(out))))[:n], dtype=np.float32)


def load_video_audio(path: str | Path, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio track of a video file: PyAV at its native rate, float, channel mean, soxr_hq to 16 kHz.

    This is what ``librosa.load(video_path, sr=16000)`` gives (the reference pipeline's loader). A video without
    an audio track, or one that cannot be decoded, raises MediaInputError naming the file.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaInputError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaInputError(f"{path}: the video has no audio track (use_audio_in_video needs one)")
            stream = container.streams.audio[0]
            rate, chunks, converter = None, [], None
            for frame in container.decode(stream):
                if converter is None:
                    rate = frame.sample_rate
                    converter = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=rate)
                for out in converter.resample(frame):
                    chunks.append(out.to_ndarray())
            if converter is not None:
                for out in converter.resample(None):
                    chunks.append(out.to_ndarray())
    except MediaInputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise MediaInputError(f"{path}: cannot decode the video's audio track ({type(e).__name__}: {first})") \
            from None
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise MediaInputError(f"{path}: the video's audio track holds no samples")
    waveform = np.concatenate(chunks, axis=-1).astype(np.float32)  # (channels, n)
    waveform = waveform.mean(axis=0) if waveform.shape[0] > 1 else waveform[0]
    if not np.all(np.isfinite(waveform)):
        raise MediaInputError(f"{path}: the video's audio track holds non-finite samples")
    waveform = resample_like_librosa(waveform, rate, sampling_rate)
    if len(waveform) < min_samples(AudioFeatureConfig()):
        raise MediaInputError(f"{path}: the video's audio track is too short ({len(waveform)} samples)")
    return waveform


def as_waveform(audio, name: str) -> np.ndarray:
    """A path (decoded like librosa.load at 16 kHz), a 16 kHz mono float array, or (array, rate)."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    rate = SAMPLE_RATE
    if isinstance(audio, tuple) and len(audio) == 2 and np.isscalar(audio[1]):
        audio, rate = audio
    arr = np.asarray(audio)
    if arr.dtype.kind not in "fiu":
        raise AudioInputError(f"{name}: expected a float waveform, got dtype {arr.dtype}")
    if arr.ndim == 2 and 1 <= min(arr.shape) <= 8:  # (channels, n) or (n, channels): mono by channel mean
        arr = arr.mean(axis=0 if arr.shape[0] <= arr.shape[1] else 1)
    if arr.ndim != 1 or arr.size == 0:
        raise AudioInputError(f"{name}: expected a non-empty mono waveform, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise AudioInputError(f"{name}: the waveform holds non-finite samples")
    return resample_like_librosa(arr, int(rate))


def _describe(value, kind: str, index: int) -> str:
    return str(value) if isinstance(value, (str, Path)) else f"{kind} {index}"


# ------------------------------------------------------------------------------------------ conversations
def media_items(conversation: Sequence[dict]) -> list[tuple[str, Any]]:
    """(type, value) of every image/audio/video item, in message and content order (the template's order)."""
    items = []
    for m, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise MediaInputError(f"message {m}: expected a dict with 'role' and 'content'")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_TYPES:
                value = part.get(kind, part.get("path"))
                if value is None:
                    raise MediaInputError(f"message {m}: a {kind} item without a '{kind}' value")
                if isinstance(value, str) and value.startswith(("http://", "https://")):
                    raise MediaInputError(f"{value}: URLs are not fetched; give a local path or an array")
                items.append((kind, value))
            elif kind not in ("text", None) or not isinstance(part, dict):
                raise MediaInputError(f"message {m}: unsupported content item {part!r:.80}")
    return items


@dataclass
class _Plan:
    """Per prompt: the global indices of its images, standalone audios, and videos (with their track's slot)."""

    images: list[int] = field(default_factory=list)
    audios: list[int] = field(default_factory=list)  # audio slots of standalone audio items
    videos: list[tuple[int, int | None]] = field(default_factory=list)  # (video index, audio slot or None)


class MultimodalProcessor:
    """Tokenizer + chat template + media preprocessing of a checkpoint directory (HF's Qwen3OmniMoeProcessor)."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, cfg: OmniConfig,
                 vision: VisionPreprocessConfig = VisionPreprocessConfig(),
                 video: VideoPreprocessConfig = VideoPreprocessConfig(),
                 audio: AudioFeatureConfig = AudioFeatureConfig(), bucket: int = PROMPT_BUCKET):
        self.tokenizer, self.template, self.cfg = tokenizer, template, cfg
        self.vision, self.video, self.audio, self.bucket = vision, video, audio, bucket
        self.rope_cfg = RopeIndexConfig.from_thinker(cfg.thinker)

    @classmethod
    def from_dir(cls, directory: str | Path, cfg: OmniConfig, bucket: int = PROMPT_BUCKET) -> "MultimodalProcessor":
        """Read tokenizer, chat template and preprocessor_config.json (the real model's if the directory has none)."""
        directory = Path(directory)
        pre = directory / "preprocessor_config.json"
        pre = pre if pre.is_file() else PREPROCESSOR_FILE
        vision = VisionPreprocessConfig.from_file(pre)
        return cls(Tokenizer.from_dir(directory), ChatTemplate.from_dir(directory), cfg, vision,
                   VideoPreprocessConfig(vision=vision), AudioFeatureConfig.from_file(pre), bucket)

    # -- settings -------------------------------------------------------------------------------------
    def _configs(self, o: MediaOptions) -> tuple[VisionPreprocessConfig, VideoPreprocessConfig]:
        image_over = {k: v for k, v in (("max_pixels", o.image_max_pixels), ("min_pixels", o.image_min_pixels))
                      if v is not None}
        video_over = {k: v for k, v in (("max_pixels", o.video_max_pixels), ("min_pixels", o.video_min_pixels),
                                        ("max_frames", o.video_max_frames)) if v is not None}
        return dataclasses.replace(self.vision, **image_over), dataclasses.replace(self.video, **video_over)

    # -- main entry -----------------------------------------------------------------------------------
    def __call__(self, conversations: Sequence, options: MediaOptions | None = None, *,
                 use_audio_in_video: bool | None = None, **template_kwargs) -> MultimodalBatch:
        """One conversation (a list of messages) or a list of conversations -> a MultimodalBatch."""
        o = options or MediaOptions()
        if use_audio_in_video is not None:
            o = dataclasses.replace(o, use_audio_in_video=use_audio_in_video)
        if not conversations:
            raise MediaInputError("no conversation given")
        if isinstance(conversations[0], dict):
            conversations = [conversations]
        image_cfg, video_cfg = self._configs(o)
        t = self.cfg.thinker

        pixel_rows, image_grids, video_rows, video_grids, waveforms, plans, token_lists = [], [], [], [], [], [], []
        for conversation in conversations:
            text = self.template.render(conversation, add_generation_prompt=True, **template_kwargs)
            token_lists.append(self.tokenizer.encode(text))
            plan = _Plan()
            for kind, value in media_items(conversation):
                if kind == "image":
                    rows, grid = preprocess_image(value, image_cfg, name=_describe(value, "image", len(image_grids)))
                    plan.images.append(len(image_grids))
                    pixel_rows.append(rows)
                    image_grids.append(grid)
                elif kind == "audio":
                    plan.audios.append(len(waveforms))
                    waveforms.append(as_waveform(value, _describe(value, "audio", len(waveforms))))
                else:
                    name = _describe(value, "video", len(video_grids))
                    if o.use_audio_in_video and (not isinstance(value, (str, Path)) or Path(value).is_dir()):
                        raise MediaInputError(f"{name}: use_audio_in_video needs a video file with an audio track "
                                              "(got frames without audio)")
                    rows, grid = self._video(value, video_cfg, o, name)  # frames first: bad files report as videos
                    slot = None
                    if o.use_audio_in_video:
                        slot = len(waveforms)
                        waveforms.append(load_video_audio(value, self.audio.sampling_rate))
                    plan.videos.append((len(video_grids), slot))
                    video_rows.append(rows)
                    video_grids.append(grid)
            plans.append(plan)

        features = log_mel_features(waveforms, self.audio) if waveforms else None
        audio_tokens = (audio_output_lengths(features.frame_counts, t.audio.n_window).reshape(-1)
                        if features is not None else np.zeros(0, np.int64))
        second_per_grid = video_cfg.vision.temporal_patch_size / (o.video_fps if o.video_fps is not None else 1.0)

        seqs = [self._expand(ids, plan, image_grids, video_grids, audio_tokens, second_per_grid, o.use_audio_in_video)
                for ids, plan in zip(token_lists, plans)]
        ids, mask = pad_left(seqs, self.cfg.pad_token_id, self.bucket)
        image_grid_thw = np.asarray(image_grids, np.int64) if image_grids else None
        video_grid_thw = np.asarray(video_grids, np.int64) if video_grids else None
        spg = np.full(len(video_grids), second_per_grid, np.float32) if video_grids else None
        pos, deltas = get_rope_index(ids, mask, image_grid_thw, video_grid_thw,
                                     None if features is None else features.frame_counts, spg,
                                     o.use_audio_in_video, cfg=self.rope_cfg)
        return MultimodalBatch(
            input_ids=ids, attention_mask=mask, position_ids=pos, rope_deltas=deltas.reshape(-1),
            pixel_values=np.concatenate(pixel_rows) if pixel_rows else None, image_grid_thw=image_grid_thw,
            pixel_values_videos=np.concatenate(video_rows) if video_rows else None, video_grid_thw=video_grid_thw,
            video_second_per_grid=spg,
            input_features=None if features is None else features.input_features,
            feature_attention_mask=None if features is None else features.feature_attention_mask,
            use_audio_in_video=o.use_audio_in_video, token_lengths=[len(s) for s in seqs])

    @staticmethod
    def _video(value, video_cfg: VideoPreprocessConfig, o: MediaOptions, name: str):
        """Decode and preprocess one video; ``video_fps`` samples by rate, else ``video_max_frames`` caps the count
        (uniform sampling, HF's ``num_frames``)."""
        decoded = as_video(value, name=name)
        if o.video_fps is not None:
            return preprocess_video(decoded, video_cfg, sample_fps=o.video_fps, name=name)
        if o.video_max_frames is not None and len(decoded.frames) > o.video_max_frames:
            return preprocess_video(decoded, video_cfg, num_frames=o.video_max_frames, name=name)
        return preprocess_video(decoded, video_cfg, name=name)

    # -- placeholder expansion ------------------------------------------------------------------------
    def _expand(self, ids: list[int], plan: _Plan, image_grids, video_grids, audio_tokens, second_per_grid: float,
                use_audio_in_video: bool) -> list[int]:
        t = self.cfg.thinker
        merge = self.video.vision.merge_size
        images, audios, videos = list(plan.images), list(plan.audios), list(plan.videos)
        out: list[int] = []
        for tok in ids:
            if tok == t.image_token_id:
                if not images:
                    raise MediaInputError("the prompt has more <|image_pad|> tokens than image items")
                out += [tok] * num_image_tokens(image_grids[images.pop(0)], merge)
            elif tok == t.audio_token_id:
                if not audios:
                    raise MediaInputError("the prompt has more <|audio_pad|> tokens than audio items")
                out += [tok] * int(audio_tokens[audios.pop(0)])
            elif tok == t.video_token_id:
                if not videos:
                    raise MediaInputError("the prompt has more <|video_pad|> tokens than video items")
                v, slot = videos.pop(0)
                if use_audio_in_video and slot is not None:
                    out += interleave_video_audio(video_grids[v], int(audio_tokens[slot]), second_per_grid, merge,
                                                  self.rope_cfg.position_id_per_seconds, t)
                else:
                    out += [tok] * num_image_tokens(video_grids[v], merge)
            else:
                out.append(tok)
        if images or audios or videos:
            raise MediaInputError("the chat template left some media items without a placeholder")
        return out


def interleave_video_audio(grid_thw, n_audio: int, second_per_grid: float, merge: int,
                           position_id_per_seconds: float, t) -> list[int]:
    """``<|audio_start|>`` + video/audio pads merged by time + ``<|audio_end|>``, as HF's
    ``replace_video_with_audio_token``: grid ``k`` sits at ``k * second_per_grid * 13`` position ids, audio token
    ``j`` at ``j``; the video token goes first on ties."""
    gt, gh, gw = (int(x) for x in grid_thw)
    per_grid = (gh // merge) * (gw // merge)
    video_times = np.repeat(np.arange(gt), per_grid) * second_per_grid * position_id_per_seconds
    audio_times = np.arange(n_audio)
    out = [t.audio_start_token_id]
    vi = ai = 0
    while vi < len(video_times) and ai < n_audio:
        if video_times[vi] <= audio_times[ai]:
            out.append(t.video_token_id)
            vi += 1
        else:
            out.append(t.audio_token_id)
            ai += 1
    out += [t.video_token_id] * (len(video_times) - vi) + [t.audio_token_id] * (n_audio - ai)
    out.append(t.audio_end_token_id)
    return out
