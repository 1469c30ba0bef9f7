"""Speech out: Thinker records -> talker prompt -> codec frames -> 24 kHz waveforms.

``speak`` is what ``Qwen3OmniMoeForConditionalGeneration.generate(return_audio=True)`` does after the Thinker:
build the talker prompt, run the talker (+ code predictor) until each row's codec EOS, then Code2Wav with
``chunked_decode(chunk 300, left context 25)``. Batches of any size work; every row equals that prompt spoken
alone (each row's codes are decoded on their own, through one compiled window shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import jax
import numpy as np

from omni_jax.errors import UsageError
from omni_jax.config import OmniConfig
from omni_jax.generation.ahead import wait_for
from omni_jax.generation.talker_engine import FrameRecord, TalkerEngine, TalkerSampling
from omni_jax.generation.talker_prompt import (TalkerMedia, build_talker_prompt, compile_talker_prompt,
                                               plan_talker_prompt)
from omni_jax.models.code2wav import chunked_decode
from omni_jax.models.decoder import StackOptions
from omni_jax.sharding import to_host

SAMPLE_RATE = 24_000
CHUNK_SIZE, LEFT_CONTEXT = 300, 25
DEFAULT_MAX_FRAMES = 4095  # HF talker_max_new_tokens 4096 (the last sampled token gets no frame)


class UnknownSpeakerError(UsageError):
    """A speaker name the checkpoint's talker does not know."""


class NoTalkerError(UsageError):
    """The checkpoint has no talker / code2wav (a thinker-only release)."""


@dataclass
class SpeechResult:
    codes: list[np.ndarray]  # per row [frames, num_code_groups] int32
    wavs: list[np.ndarray]  # per row float32 [samples] in [-1, 1]
    sample_rate: int = SAMPLE_RATE
    stats: list = field(default_factory=list)  # per decode step: the talker's MoE stats


def write_wav(path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float waveform in [-1, 1] as 16-bit PCM (stdlib ``wave``; no extra dependency)."""
    with WavStreamWriter(path, sample_rate) as w:
        w.write(wav)


class WavStreamWriter:
    """A 16-bit PCM mono wav written piece by piece to ``NAME.partial`` and renamed to ``NAME`` by ``close()``.

    The header is patched after every piece, so ``NAME.partial`` is a valid wav at any moment (a player can
    open it while speech is still being generated). ``NAME`` appears only complete; an existing ``NAME`` is
    untouched until then, and ``abort()`` (or leaving a ``with`` block by an exception, Ctrl-C included)
    removes the partial file instead.
    """

    def __init__(self, path, sample_rate: int = SAMPLE_RATE):
        import wave

        from omni_jax.atomic import PartialFile

        self.path = path
        self._file = PartialFile(path)
        self._f = wave.open(self._file, "wb")
        self._f.setnchannels(1)
        self._f.setsampwidth(2)
        self._f.setframerate(sample_rate)
        self.samples = 0

    @property
    def partial_path(self):
        return self._file.partial

    def write(self, wav: np.ndarray) -> None:
        pcm = np.round(np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
        self._f.writeframes(pcm.tobytes())
        self._file.flush()
        self.samples += pcm.size

    def close(self) -> None:
        """Finish the header and rename the complete file into place."""
        try:
            self._f.close()
        except BaseException:
            self._file.abort()
            raise
        self._file.commit()

    def abort(self) -> None:
        """Drop the partial file (an existing ``NAME`` stays as it was)."""
        import contextlib

        with contextlib.suppress(OSError, ValueError):  # closed now, so it never writes into a removed file later
            self._f.close()
        self._file.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def speaker_id(cfg: OmniConfig, speaker: str) -> int:
    """Codec id of ``speaker`` (case-insensitive, as HF's ``speaker.lower()``)."""
    speakers = cfg.talker.speakers
    sid = speakers.get(str(speaker).lower())
    if sid is None:
        names = ", ".join(n.capitalize() for n in sorted(speakers))
        raise UnknownSpeakerError(f"unknown speaker {speaker!r}; this checkpoint has: {names}")
    return sid


def decode_rows(code2wav_params: dict, cfg: OmniConfig, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-row codes [frames_b, Q] -> waveforms with HF's ``chunked_decode(300, 25)``.

    Rows are decoded one at a time: ``chunked_decode`` runs one compiled window shape [1, Q, 325] whatever the
    batch, so a row's waveform is exactly the one it gets when spoken alone (rows with 0 frames give 0 samples).
    """
    c = cfg.code2wav
    wavs = []
    for x in codes:
        x = np.asarray(x, np.int32)
        if len(x) == 0:
            wavs.append(np.zeros(0, np.float32))
            continue
        wav = chunked_decode(code2wav_params, x.T[None], c, CHUNK_SIZE, LEFT_CONTEXT)[0]
        wavs.append(to_host(wav).astype(np.float32))
    return wavs


def _media(prompt, media) -> TalkerMedia:
    if media is not None:
        return media
    extras = getattr(prompt, "extras", None) or {}
    return TalkerMedia.from_source(extras.get("media", extras))  # prepare_prompt keeps the batch there


def _talker_frames(cfg: OmniConfig, model_params: dict, thinker_records: Sequence, prompt, speaker: str,
                   talker_sampling: TalkerSampling, seed, max_frames: int, thinker_eos_ids, media,
                   talker_opts, max_new_tokens: int | None = None) -> tuple[int, Iterator[FrameRecord]]:
    """(batch size, the talker's FrameRecord stream) for what the Thinker generated."""
    if not cfg.has_talker:
        raise NoTalkerError("this checkpoint has no talker/code2wav: it cannot produce speech")
    sid = speaker_id(cfg, speaker)
    eos = [cfg.im_end_token_id] if thinker_eos_ids is None else list(thinker_eos_ids)
    wait_for("talker_prompt")
    tp = build_talker_prompt(cfg, model_params["talker"], model_params["thinker"]["text"]["embed"],
                             thinker_records, prompt.input_ids, prompt.attention_mask, sid, eos, _media(prompt, media),
                             max_new_tokens=max_new_tokens)
    engine = TalkerEngine(cfg.talker, model_params["talker"], talker_opts)
    return tp.batch, engine.stream(tp, max_frames, talker_sampling, seed)


def speech_compile_ahead_jobs(cfg: OmniConfig, model_params: dict, prompt, speaker_id: int, max_new_tokens: int,
                              talker_sampling: TalkerSampling = TalkerSampling(), seed: int = 0,
                              max_frames: int = DEFAULT_MAX_FRAMES, talker_opts: StackOptions | None = None,
                              chunk_size: int = 50, left_context: int = LEFT_CONTEXT,
                              media: TalkerMedia | None = None) -> list:
    """Compile-ahead jobs (``omni_jax.generation.ahead``) of the programs ``speak_stream(...,
    max_new_tokens=max_new_tokens)`` will run after a Thinker run on ``prompt`` (a ``PreparedPrompt``; its
    ``inputs_embeds`` may be None or a ShapeDtypeStruct): the talker prompt, the Talker's prefill and frame step,
    and Code2Wav's first window (as wide as ``min(chunk_size, max_frames)`` frames need)."""
    from omni_jax.models.code2wav import incremental_capacity, window_width, with_layer_views
    from omni_jax.models.code2wav_incremental import decode_after_jit, initial_state

    text = model_params["thinker"]["text"]
    b, p = prompt.input_ids.shape
    dtype = text["embed"].dtype
    embeds = jax.ShapeDtypeStruct((b, p, text["embed"].shape[-1]), dtype)
    plan = plan_talker_prompt(cfg, prompt.input_ids, prompt.attention_mask, speaker_id, _media(prompt, media))
    engine = TalkerEngine(cfg.talker, model_params["talker"], talker_opts)
    seeds = list(range(seed, seed + b))
    found: dict = {}

    def talker_prompt():
        found["out"] = compile_talker_prompt(plan, model_params["talker"], text["embed"], embeds, embeds,
                                             max_new_tokens)

    def talker(i):
        def job():
            if "jobs" not in found:
                out, trailing, pad = found["out"]
                tp = plan.prompt(out, trailing, np.ones(b, np.int32), pad)
                found["jobs"] = engine.compile_ahead_jobs(tp, max_frames, talker_sampling, seeds)
            found["jobs"][i][1]()

        return job

    c2w = cfg.code2wav
    width = window_width(min(chunk_size, max_frames), left_context + chunk_size)
    window = jax.ShapeDtypeStruct((1, c2w.num_quantizers, width), np.int32)

    def code2wav():
        # the streamer's first piece: decoded incrementally, with the per-layer views, as the streamer runs it
        params = with_layer_views(model_params["code2wav"])
        capacity = incremental_capacity(chunk_size, left_context)
        state = jax.eval_shape(lambda: initial_state(c2w, 1, capacity, params["code_embedding"].dtype))
        decode_after_jit.prepare(params, state, window, np.int32(0), np.int32(width), cfg=c2w, first=True)

    return [("talker_prompt", talker_prompt), ("talker_prefill", talker(0)), ("talker_frame_step", talker(1)),
            ("decode_window", code2wav)]


def _codes(frames: list[list[np.ndarray]], g: int) -> list[np.ndarray]:
    return [np.stack(f).astype(np.int32) if f else np.zeros((0, g), np.int32) for f in frames]


def speak(cfg: OmniConfig, model_params: dict, thinker_records: Sequence, prompt, speaker: str = "Ethan",
          talker_sampling: TalkerSampling = TalkerSampling(), seed: int | Sequence[int] = 0,
          max_frames: int = DEFAULT_MAX_FRAMES, thinker_eos_ids: Sequence[int] | None = None,
          media: TalkerMedia | None = None, talker_opts: StackOptions | None = None) -> SpeechResult:
    """Speak what the Thinker generated.

    model_params: ``pure_params(model)`` of the OmniModel (uses thinker.text.embed, talker, code2wav).
    thinker_records: every ``StepRecord`` ``ThinkerEngine.stream`` yielded, run with
    ``opts=StackOptions.uniform(cfg.thinker.text, taps=(cfg.talker.accept_hidden_layer - 1,))``.
    prompt: the Thinker's ``PreparedPrompt`` (its ``input_ids``/``attention_mask``; media metadata from
    ``media`` or else ``prompt.extras`` keys image_grid_thw / video_grid_thw / video_second_per_grid /
    audio_feature_lengths or feature_attention_mask).
    seed: row b samples with ``seed + b`` (or ``seed[b]``); max_frames: codec frames per row at most
    (HF ``talker_max_new_tokens = max_frames + 1``). thinker_eos_ids default: ``<|im_end|>``.
    """
    batch, records = _talker_frames(cfg, model_params, thinker_records, prompt, speaker, talker_sampling, seed,
                                    max_frames, thinker_eos_ids, media, talker_opts)
    frames: list[list[np.ndarray]] = [[] for _ in range(batch)]
    stats = []
    rec: FrameRecord
    for rec in records:
        for i in np.nonzero(rec.valid)[0]:
            frames[i].append(rec.frames[i])
        stats.append(rec.stats)
    codes = _codes(frames, cfg.talker.num_code_groups)
    return SpeechResult(codes, decode_rows(model_params["code2wav"], cfg, codes), SAMPLE_RATE, stats)


def speak_stream(cfg: OmniConfig, model_params: dict, thinker_records: Sequence, prompt, speaker: str = "Ethan",
                 talker_sampling: TalkerSampling = TalkerSampling(), seed: int | Sequence[int] = 0,
                 max_frames: int = DEFAULT_MAX_FRAMES, thinker_eos_ids: Sequence[int] | None = None,
                 media: TalkerMedia | None = None, talker_opts: StackOptions | None = None,
                 chunk_size: int = 50, left_context: int = LEFT_CONTEXT,
                 max_new_tokens: int | None = None) -> Iterator[dict]:
    """``speak`` as a stream: ``{"type": "audio", "row": b, "wav": piece}`` as soon as ``chunk_size`` new frames
    of row b are decodable (each row has its own ``Code2WavStreamer``), then ``{"type": "speech", "result":
    SpeechResult}``. A row's pieces concatenate to ``chunked_decode(codes, chunk_size, left_context)``
    (with ``chunk_size=300`` that is exactly ``speak``'s waveform, HF's default). max_new_tokens: the Thinker's
    token budget (the talker prompt's shapes then depend on it alone, see ``build_talker_prompt``)."""
    from omni_jax.models.code2wav import Code2WavStreamer

    batch, records = _talker_frames(cfg, model_params, thinker_records, prompt, speaker, talker_sampling, seed,
                                    max_frames, thinker_eos_ids, media, talker_opts, max_new_tokens)
    c2w = model_params["code2wav"]
    streamers = [Code2WavStreamer(c2w, cfg.code2wav, chunk_size, left_context) for _ in range(batch)]
    frames: list[list[np.ndarray]] = [[] for _ in range(batch)]
    pieces: list[list[np.ndarray]] = [[] for _ in range(batch)]
    stats = []
    for rec in records:
        stats.append(rec.stats)
        if len(stats) == min(chunk_size, max_frames):
            wait_for("decode_window")
        for i in np.nonzero(rec.valid)[0]:
            frames[i].append(rec.frames[i])
            for piece in streamers[i].push(np.asarray(rec.frames[i], np.int32)[None, :, None]):
                pieces[i].append(piece[0])
                yield {"type": "audio", "row": int(i), "wav": np.asarray(piece[0], np.float32)}
    wait_for("decode_window")
    for i, st in enumerate(streamers):
        if frames[i]:
            for piece in st.flush():
                pieces[i].append(piece[0])
                yield {"type": "audio", "row": i, "wav": np.asarray(piece[0], np.float32)}
    codes = _codes(frames, cfg.talker.num_code_groups)
    wavs = [np.concatenate(p).astype(np.float32) if p else np.zeros(0, np.float32) for p in pieces]
    yield {"type": "speech", "result": SpeechResult(codes, wavs, SAMPLE_RATE, stats)}
