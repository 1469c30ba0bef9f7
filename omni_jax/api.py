"""The notebook API: load a checkpoint once, then generate text and speech from HF-style messages.

    import omni_jax
    model = omni_jax.load("path/to/checkpoint", dtype="bfloat16")      # HF or converted directory
    out = model.generate([{"role": "user", "content": [
        {"type": "image", "image": "cat.jpg"},                          # path or HxWx3 array
        {"type": "audio", "audio": "question.wav"},                     # path or 16 kHz waveform
        {"type": "text", "text": "Answer the question about the picture."}]}])
    out.text, out.token_ids, out.codec_codes, out.wav, out.sample_rate

``model.generate`` takes one conversation or a list of them (a left-padded batch; each result equals that
conversation generated alone). ``model.stream`` yields text deltas as they are produced, then the speech.
Thinker and Talker sampling are set separately (``thinker_sampling`` / ``talker_sampling``), as the
reference's ``thinker_*`` / ``talker_*`` arguments; memory knobs: ``image_max_pixels``, ``video_fps``,
``video_max_frames``, ``speech=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from omni_jax.generation.sampling import SamplingConfig


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    codec_codes: np.ndarray | None = None  # [frames, 16]
    wav: np.ndarray | None = None  # float32 [samples] at sample_rate
    sample_rate: int | None = None
    router_counts: np.ndarray | None = None  # [layers, experts]: Thinker expert counts over prompt + generation
    extras: dict = field(default_factory=dict)


def _is_conversation(x) -> bool:
    return isinstance(x, (list, tuple)) and (not x or isinstance(x[0], dict))


class OmniModel:
    """A loaded checkpoint with its processors (created by ``omni_jax.load``)."""

    def __init__(self, directory: Path, cfg, model, dtype: str, mesh=None):
        from omni_jax.models.common import pure_params
        from omni_jax.processing.multimodal import MultimodalProcessor

        self.directory, self.cfg, self.model, self.dtype, self.mesh = directory, cfg, model, dtype, mesh
        self.params = pure_params(model)
        self.processor = MultimodalProcessor.from_dir(directory, cfg)
        self.tokenizer = self.processor.tokenizer

    @property
    def has_talker(self) -> bool:
        return self.cfg.has_talker

    def _prepare(self, conversations, use_audio_in_video, image_max_pixels, video_fps, video_max_frames):
        from omni_jax.models.thinker import prepare_prompt
        from omni_jax.processing.multimodal import MediaOptions

        options = MediaOptions(use_audio_in_video=use_audio_in_video, image_max_pixels=image_max_pixels,
                               video_fps=video_fps, video_max_frames=video_max_frames)
        batch = self.processor(list(conversations), options)
        return prepare_prompt(self.params["thinker"], self.cfg, batch)

    def _check(self, messages, speech, speaker):
        """(single, conversations, speech on, speaker codec id or None); fails early on bad speech requests."""
        single = _is_conversation(messages)
        conversations = [messages] if single else list(messages)
        speech = self.has_talker if speech is None else speech
        if speech and not self.has_talker:
            raise ValueError(f"{self.directory}: this checkpoint has no talker, it cannot produce speech")
        if not speech:
            return single, conversations, False, None
        from omni_jax.generation.speech import speaker_id

        return single, conversations, True, speaker_id(self.cfg, speaker)

    def _run(self, messages, max_new_tokens, thinker_sampling, talker_sampling, speech, speaker, seed,
             use_audio_in_video, image_max_pixels, video_fps, video_max_frames, max_speech_frames=4095,
             audio_chunk_frames=300, on_text=None, on_audio=None):
        import time

        t_start = time.perf_counter()
        t_text = t_audio = None
        from omni_jax.generation.thinker_engine import ThinkerEngine
        from omni_jax.models.decoder import StackOptions

        single, conversations, speech, _ = self._check(messages, speech, speaker)
        prompt = self._prepare(conversations, use_audio_in_video, image_max_pixels, video_fps, video_max_frames)
        text_cfg = self.cfg.thinker.text
        taps = (self.cfg.talker.accept_hidden_layer - 1,) if speech else ()
        opts = StackOptions.uniform(text_cfg, taps=taps, mesh=self.mesh)
        engine = ThinkerEngine(self.cfg, self.params["thinker"]["text"], opts)
        eos = {self.cfg.im_end_token_id}
        ids = [[] for _ in conversations]
        done = [False] * len(conversations)
        records = []
        counts = np.zeros((text_cfg.num_layers, text_cfg.num_experts), np.int64)
        decoders = [self.tokenizer.stream_decoder(skip_special_tokens=True) for _ in conversations]
        for rec in engine.stream(prompt, max_new_tokens, thinker_sampling or SamplingConfig.greedy(), eos,
                                 seed=seed, opts=opts):
            records.append(rec)
            if t_text is None:
                t_text = time.perf_counter() - t_start
            counts += np.asarray(rec.stats.counts)
            for i, tok in enumerate(rec.tokens):
                if done[i]:
                    continue
                ids[i].append(int(tok))
                done[i] = int(tok) in eos
                if on_text is not None and not done[i]:
                    delta = decoders[i].push(int(tok))
                    if delta:
                        on_text(i, delta)
        t_thinker = time.perf_counter() - t_start
        results = [GenerationResult(self.tokenizer.decode([t for t in r if t not in eos], skip_special_tokens=True),
                                    r, router_counts=counts) for r in ids]
        if speech:
            from omni_jax.generation.speech import speak_stream
            from omni_jax.generation.talker_engine import TalkerSampling

            for event in speak_stream(self.cfg, self.params, records, prompt, speaker=speaker,
                                      talker_sampling=talker_sampling or TalkerSampling(), seed=seed,
                                      max_frames=max_speech_frames, chunk_size=audio_chunk_frames,
                                      talker_opts=StackOptions.uniform(self.cfg.talker.text, mesh=self.mesh)):
                if event["type"] == "audio":
                    if t_audio is None:
                        t_audio = time.perf_counter() - t_start
                    if on_audio is not None:
                        on_audio(event["row"], event["wav"])
                    continue
                res = event["result"]
            for r, codes, wav in zip(results, res.codes, res.wavs):
                r.codec_codes = np.asarray(codes).reshape(-1, self.cfg.talker.num_code_groups)
                r.wav, r.sample_rate = wav, res.sample_rate
        timing = {"time_to_first_token_s": t_text, "time_to_first_audio_s": t_audio, "thinker_s": t_thinker,
                  "total_s": time.perf_counter() - t_start}
        for r in results:
            r.extras.update(timing)
        return results[0] if single else results

    def _run_fused(self, messages, max_new_tokens, thinker_sampling, talker_sampling, speech, speaker, seed,
                   use_audio_in_video, image_max_pixels, video_fps, video_max_frames, max_speech_frames,
                   audio_chunk_frames):
        import time

        from omni_jax.generation.fused import generate_fused

        single, conversations, speech, sid = self._check(messages, speech, speaker)
        t0 = time.perf_counter()
        prompt = self._prepare(conversations, use_audio_in_video, image_max_pixels, video_fps, video_max_frames)
        eos = {self.cfg.im_end_token_id}
        res = generate_fused(self.cfg, self.params, prompt, max_new_tokens, thinker_sampling or SamplingConfig.greedy(),
                             eos, speech=speech, speaker_id=sid, talker_sampling=talker_sampling,
                             max_frames=max_speech_frames, seed=seed, chunk_size=audio_chunk_frames, mesh=self.mesh)
        out = []
        for i, ids in enumerate(res.tokens):
            r = GenerationResult(self.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True),
                                 ids, extras={"total_s": time.perf_counter() - t0, "fused": True})
            if speech:
                r.codec_codes, r.wav, r.sample_rate = res.codes[i], res.wavs[i], res.sample_rate
            out.append(r)
        return out[0] if single else out

    def generate(self, messages: Sequence, *, max_new_tokens: int = 128, thinker_sampling: SamplingConfig | None = None,
                 talker_sampling=None, speech: bool | None = None, speaker: str = "Ethan", seed: int = 0,
                 use_audio_in_video: bool = False, image_max_pixels: int | None = None,
                 video_fps: float | None = None, video_max_frames: int | None = None,
                 max_speech_frames: int = 4095, audio_chunk_frames: int = 300, fused: bool = False):
        """One conversation -> GenerationResult; a list of conversations -> list of GenerationResult.

        fused: run the whole Thinker -> Talker -> Code2Wav generation as ONE jitted XLA program
        (``omni_jax.generation.fused``: same tokens, codes and waveforms, no host round trip per step; no
        router counts or per-token timing).

        thinker_sampling: ``SamplingConfig`` (default greedy); talker_sampling: ``TalkerSampling`` (default:
        the reference's talker defaults; ``TalkerSampling.greedy()`` for deterministic speech).
        speech: None = on when the checkpoint has a Talker. audio_chunk_frames: Code2Wav decodes the codes in
        chunks of this many frames with 25 frames of left context (300 = HF's ``chunked_decode``).
        ``result.extras`` has ``time_to_first_token_s``, ``time_to_first_audio_s`` and ``total_s``."""
        if fused:
            return self._run_fused(messages, max_new_tokens, thinker_sampling, talker_sampling, speech, speaker,
                                   seed, use_audio_in_video, image_max_pixels, video_fps, video_max_frames,
                                   max_speech_frames, audio_chunk_frames)
        return self._run(messages, max_new_tokens, thinker_sampling, talker_sampling, speech, speaker, seed,
                         use_audio_in_video, image_max_pixels, video_fps, video_max_frames, max_speech_frames,
                         audio_chunk_frames)

    def stream(self, messages: Sequence, **kwargs) -> Iterator[dict[str, Any]]:
        """Yield ``{"type": "text", "row": i, "delta": str}`` as tokens are produced, then (speech on)
        ``{"type": "audio", "row": i, "wav": float32 array, "sample_rate": 24000}`` pieces as the Talker's frames
        are decoded, then one ``{"type": "result", "result": GenerationResult | list}``.

        Same arguments as ``generate``; ``audio_chunk_frames`` defaults to 25 here (2 s of speech per piece;
        the pieces concatenate to ``chunked_decode(codes, 25, 25)``; 300 gives ``generate``'s waveform).
        Timing of the first text token and the first audio piece is in ``result.extras``.
        The work runs in a background thread; this iterator hands the events out in order.
        """
        kwargs.setdefault("audio_chunk_frames", 25)
        import queue
        import threading

        q: queue.Queue = queue.Queue()

        def work():
            try:
                res = self._run(messages, on_text=lambda i, d: q.put({"type": "text", "row": i, "delta": d}),
                                on_audio=lambda i, w: q.put({"type": "audio", "row": i, "wav": w,
                                                             "sample_rate": 24_000}),
                                **_defaults(kwargs))
                q.put({"type": "result", "result": res})
            except BaseException as e:  # surfaced in the consumer's thread
                q.put({"type": "error", "error": e})

        threading.Thread(target=work, daemon=True).start()
        while True:
            item = q.get()
            if item["type"] == "error":
                raise item["error"]
            yield item
            if item["type"] == "result":
                return


def _defaults(kwargs: dict) -> dict:
    d = dict(max_new_tokens=128, thinker_sampling=None, talker_sampling=None, speech=None, speaker="Ethan", seed=0,
             use_audio_in_video=False, image_max_pixels=None, video_fps=None, video_max_frames=None,
             max_speech_frames=4095, audio_chunk_frames=300)
    unknown = set(kwargs) - set(d)
    if unknown:
        raise TypeError(f"unexpected arguments: {sorted(unknown)}")
    d.update(kwargs)
    return d


def load(path: str | Path | None = None, *, dtype: str = "float32", mesh=None, demo: bool = False,
         progress: bool = False) -> OmniModel:
    """Load a Hugging Face or converted checkpoint directory; ``demo=True`` uses the random-weight demo.

    mesh: a ``jax.sharding.Mesh`` or a spec such as ``"data=1,expert=8"``: the MoE experts are split over the
    ``expert`` axis (expert-parallel MoE in every forward); a converted checkpoint is restored straight onto
    the devices, one storage unit at a time."""
    from omni_jax.weights import load_checkpoint

    if path is None:
        if not demo:
            raise ValueError("give a checkpoint directory (or demo=True for the random-weight demo)")
        from omni_jax.demo import ensure_demo_checkpoint

        path = ensure_demo_checkpoint()
    path = Path(path)
    from omni_jax.demo import announce_if_demo

    announce_if_demo(path)  # the demo's directory, however it was passed, or one derived from it
    if isinstance(mesh, str):
        from omni_jax.sharding import make_mesh

        mesh = make_mesh(mesh)
    cfg, model = load_checkpoint(path, dtype=dtype, mesh=mesh, progress=progress)
    return OmniModel(path, cfg, model, dtype, mesh)
