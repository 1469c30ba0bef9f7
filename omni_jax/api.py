"""The notebook API and THE generation pipeline: load a checkpoint once, then generate text and speech from HF-style
messages. The CLI (``omni_jax.generate``) is a shell over this module.

    import omni_jax
    model = omni_jax.load("path/to/checkpoint", dtype="bfloat16")      # HF or converted directory
    out = model.generate([{"role": "user", "content": [
        {"type": "image", "image": "cat.jpg"},                          # path or HxWx3 array
        {"type": "audio", "audio": "question.wav"},                     # path or 16 kHz waveform
        {"type": "text", "text": "Answer the question about the picture."}]}])
    out.text, out.token_ids, out.codec_codes, out.wav, out.sample_rate, out.reasoning, out.router_counts

``model.generate`` takes one conversation or a list of them (a left-padded batch; each result equals that
conversation generated alone). ``model.stream`` yields text deltas as they are produced, then the speech.
Thinker and Talker sampling are set separately (``thinker_sampling`` / ``talker_sampling``), as the
reference's ``thinker_*`` / ``talker_*`` arguments; routing too (``routing`` / ``talker_routing``: a
``RoutingConfig`` for every layer, one per layer, or a dict of routing settings); memory knobs:
``image_max_pixels``, ``video_fps``, ``video_max_frames``, ``speech=False``.

A call runs in two phases: ``prepare`` checks every argument against the checkpoint's config and does the host
work (chat template, tokens, decoded media) without the weights; ``run`` encodes the media, generates and
speaks. ``OmniModel.open`` gives a model whose weights are loaded on first use (``load_weights``), so bad
input fails before anything expensive.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from omni_jax.errors import UsageError
from omni_jax.generation.sampling import SamplingConfig


@dataclass
class RouterCounts:
    """Expert counts [layers, experts] of one call, over the whole batch: the Thinker's prompt (prefill) and
    generated tokens (decode steps), and the Talker's frames (decode steps) when it spoke."""

    prompt: np.ndarray
    generated: np.ndarray
    talker: np.ndarray | None = None
    prompt_tokens: int = 0  # real prompt tokens of the batch
    decode_steps: int = 0  # Thinker decode steps (tokens fed back)
    talker_steps: int = 0  # Talker frame steps

    @property
    def total(self) -> np.ndarray:
        return self.prompt + self.generated

    def to_json(self) -> dict:
        d = {"num_layers": int(self.prompt.shape[0]), "prompt_tokens": self.prompt_tokens,
             "generated_tokens": self.decode_steps, "prompt_counts": self.prompt.tolist(),
             "generated_counts": self.generated.tolist()}
        if self.talker is not None:
            d.update(talker_num_layers=int(self.talker.shape[0]), talker_frames=self.talker_steps,
                     talker_counts=self.talker.tolist())
        return d


@dataclass
class GenerationResult:
    text: str  # the answer (a thinking model's reasoning is in ``reasoning``)
    token_ids: list[int]  # every generated token, up to and including the first EOS
    codec_codes: np.ndarray | None = None  # [frames, 16]
    wav: np.ndarray | None = None  # float32 [samples] at sample_rate
    sample_rate: int | None = None
    router_counts: np.ndarray | None = None  # [layers, experts]: Thinker expert counts over prompt + generation
    reasoning: str | None = None  # what a thinking model wrote between <think> and </think> (None: no reasoning)
    router: RouterCounts | None = None  # the counts by phase, the Talker's included
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationOptions:
    """Every knob of one generation call (the keyword arguments of ``generate`` / ``stream``)."""

    max_new_tokens: int = 128
    thinker_sampling: SamplingConfig | None = None  # default: greedy
    talker_sampling: Any = None  # TalkerSampling; default: the reference's talker defaults
    speech: bool | None = None  # None: on when the checkpoint has a Talker
    speaker: str = "Ethan"
    seed: int = 0
    use_audio_in_video: bool = False
    image_max_pixels: int | None = None
    video_fps: float | None = None
    video_max_frames: int | None = None
    max_speech_frames: int = 4095
    audio_chunk_frames: int = 300
    routing: Any = None  # Thinker: RoutingConfig | sequence (one per layer) | dict of settings | None
    talker_routing: Any = None  # Talker: likewise
    fused: bool = False


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(GenerationOptions))


@dataclass
class PreparedRequest:
    """A checked call, its host work done (``OmniModel.prepare``): everything ``run`` needs but the weights."""

    single: bool
    batch: Any  # MultimodalBatch
    options: GenerationOptions
    speech: bool
    speaker_id: int | None
    thinker_routing: tuple | None  # one complete RoutingConfig per layer, None: the model's
    talker_routing: tuple | None
    reasoning_opened: list[bool]  # per row: the prompt leaves a <think> open


class OmniModel:
    """A checkpoint with its processors (``omni_jax.load``, or ``OmniModel.open`` to load the weights later)."""

    def __init__(self, directory: Path, cfg, dtype: str = "float32", mesh=None, model=None):
        from omni_jax.processing.multimodal import MultimodalProcessor
        from omni_jax.processing.reasoning import ReasoningTags

        self.directory, self.cfg, self.dtype, self.mesh = Path(directory), cfg, dtype, mesh
        self.processor = MultimodalProcessor.from_dir(directory, cfg)
        self.tokenizer = self.processor.tokenizer
        self.reasoning_tags = ReasoningTags.of(self.tokenizer)
        self.model = None
        self._params = None
        self.load_s: float | None = None
        if model is not None:
            self._set_model(model)

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, *, dtype: str = "auto", mesh=None, distributed=None,
             demo: bool = False, compilation_cache: str | None = None,
             log: Callable[[str], None] | None = None) -> "OmniModel":
        """Config, tokenizer, chat template and preprocessor of a checkpoint directory; no weights yet (they are
        read by ``load_weights`` or on the first generation). See ``load`` for the arguments."""
        from omni_jax import distributed as dist
        from omni_jax import validation
        from omni_jax.compilation import setup_compilation_cache
        from omni_jax.config import OmniConfig
        from omni_jax.demo import announce_if_demo, ensure_demo_checkpoint

        validation.check_load_args(path, dtype, mesh, demo)  # before anything is read or built
        dist_cfg = dist.as_distributed(distributed)
        setup_compilation_cache(compilation_cache)
        dist.initialize(dist_cfg)  # before anything asks JAX for its devices
        dtype = dist.default_dtype() if dtype == "auto" else dtype
        if path is None:
            path = ensure_demo_checkpoint() if log is None else ensure_demo_checkpoint(log=log)
        path = Path(path)
        announce_if_demo(path)  # the demo's directory however it is passed, or one derived from it
        return cls(path, OmniConfig.from_file(path), dtype, resolve_mesh(path, mesh, dtype))

    def load_weights(self, progress: bool = False) -> float:
        """Read the weights (once); returns the seconds it took (0 when they were already loaded)."""
        if self.model is not None:
            return 0.0
        from omni_jax.weights import load_checkpoint

        t0 = time.perf_counter()
        cfg, model = load_checkpoint(self.directory, dtype=self.dtype, mesh=self.mesh, progress=progress)
        self.cfg = cfg
        self._set_model(model)
        self.load_s = time.perf_counter() - t0
        return self.load_s

    def _set_model(self, model) -> None:
        from omni_jax.models.common import pure_params

        import jax

        from omni_jax.compilation import effort_for

        self.model = model
        self._params = pure_params(model)
        self.compile_effort = effort_for(sum(int(x.nbytes) for x in jax.tree.leaves(self._params)))

    @property
    def params(self) -> dict:
        """The pure parameter dict (``thinker``, ``talker``, ``code2wav``); loads the weights on first use."""
        self.load_weights()
        return self._params

    @property
    def has_talker(self) -> bool:
        return self.cfg.has_talker

    # -- phase 1: check and host work (no weights) --------------------------------------------------------
    def prepare(self, messages: Sequence, **options) -> PreparedRequest:
        """Check every option against the checkpoint and do the host work: the chat template, the tokens and the
        decoded media of each conversation. Fails with a one-line ``UsageError`` / ``InputFileError``."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise UsageError(f"unexpected argument {unknown[0]!r} (known: {', '.join(OPTION_NAMES)})")
        o = GenerationOptions(**options)
        from omni_jax.generation.speech import NoTalkerError, speaker_id
        from omni_jax.generation.thinker_engine import cache_size_for
        from omni_jax.moe.routing_spec import resolve_routing
        from omni_jax.processing.multimodal import MediaOptions

        from omni_jax import validation

        checked = validation.check_generate_args(**{k: getattr(o, k) for k in OPTION_NAMES
                                                    if k not in ("routing", "talker_routing")})
        o = dataclasses.replace(o, **checked)
        speech = self.has_talker if o.speech is None else bool(o.speech)
        if speech and not self.has_talker:
            raise NoTalkerError(f"{self.directory}: this checkpoint has no talker, it cannot produce speech")
        sid = speaker_id(self.cfg, o.speaker) if speech else None
        if speech:
            validation.check_against_config(self.cfg, speech=True, speaker=o.speaker,
                                            max_speech_frames=o.max_speech_frames)
        thinker_routing = resolve_routing(o.routing, self.cfg.thinker.text, "routing")
        talker_routing = None
        if o.talker_routing is not None:
            if not self.has_talker:
                raise NoTalkerError(f"talker_routing: {self.directory} has no talker")
            talker_routing = resolve_routing(o.talker_routing, self.cfg.talker.text, "talker_routing")

        single, conversations = validation.check_messages(messages)
        media = MediaOptions(use_audio_in_video=o.use_audio_in_video, image_max_pixels=o.image_max_pixels,
                             video_fps=o.video_fps, video_max_frames=o.video_max_frames)
        batch = self.processor(conversations, media)
        cache_size_for(self.cfg.thinker.text, batch.input_ids.shape[1], o.max_new_tokens)  # too long: fails here
        opened = [self.reasoning_tags.opened_in_prompt(row[mask > 0], self.cfg.im_start_token_id)
                  for row, mask in zip(batch.input_ids, batch.attention_mask)]
        return PreparedRequest(single, batch, o, speech, sid, thinker_routing, talker_routing, opened)

    # -- phase 2: the weights at work ---------------------------------------------------------------------
    def encode(self, request: PreparedRequest):
        """The Thinker's ``PreparedPrompt`` of a request: the media run through their encoders and merged."""
        from omni_jax.models.thinker import prepare_prompt

        return prepare_prompt(self.params["thinker"], self.cfg, request.batch)

    def stack_options(self, request: PreparedRequest):
        """(Thinker, Talker) ``StackOptions`` of a request: its routing; the Thinker taps the layer the Talker
        reads when it speaks. (The mesh is not an option: ``run`` sets it as JAX's context mesh.)"""
        from omni_jax.models.decoder import StackOptions

        th = self.cfg.thinker.text
        taps = (self.cfg.talker.accept_hidden_layer - 1,) if request.speech else ()
        thinker = StackOptions.uniform(th, request.thinker_routing, taps=taps)
        talker = StackOptions.uniform(self.cfg.talker.text, request.talker_routing) if request.speech else None
        return thinker, talker

    def run(self, request: PreparedRequest, on_text: Callable[[int, str], None] | None = None,
            on_audio: Callable[[int, np.ndarray], None] | None = None):
        """Generate for a prepared request: one GenerationResult (a single conversation) or a list of them.

        on_text(row, delta) is called with the text as it is produced, on_audio(row, float32 samples) with the
        speech as Code2Wav decodes it (the fused program calls both once, at its end)."""
        from omni_jax.compilation import compile_effort

        self.load_weights()
        with self.mesh_context(), compile_effort(self.compile_effort):
            if request.options.fused:
                results = self._run_fused(request, on_text, on_audio)
            else:
                results = self._run_steps(request, on_text, on_audio)
        return results[0] if request.single else results

    def mesh_context(self):
        """``jax.set_mesh(self.mesh)`` (nothing without a mesh): the MoE runs expert-parallel and the KV caches
        are created sharded, read from JAX's context mesh."""
        import contextlib

        import jax

        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def _result(self, request: PreparedRequest, row: int, ids: list[int]) -> GenerationResult:
        from omni_jax.processing.reasoning import split_text

        eos = self.cfg.im_end_token_id
        reasoning, text = split_text(self.tokenizer, [t for t in ids if t != eos], self.reasoning_tags,
                                     request.reasoning_opened[row])
        return GenerationResult(text, ids, reasoning=reasoning)

    def _run_steps(self, request: PreparedRequest, on_text, on_audio) -> list[GenerationResult]:
        """The streaming engines: one jitted step per token and per frame, text and audio handed out as made."""
        from omni_jax.generation.ahead import discard
        from omni_jax.generation.thinker_engine import ThinkerEngine
        from omni_jax.sharding import to_host

        o = request.options
        t_start = time.perf_counter()
        t_text = t_audio = None
        thinker_opts, talker_opts = self.stack_options(request)
        engine = ThinkerEngine(self.cfg, self.params["thinker"]["text"], thinker_opts)
        self._compile_ahead(request, engine, talker_opts)
        prompt = self.encode(request)
        eos = {self.cfg.im_end_token_id}
        n = prompt.batch
        ids: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        records = []
        decoders = [self.tokenizer.stream_decoder(skip_special_tokens=True) for _ in range(n)]
        for rec in engine.stream(prompt, o.max_new_tokens, o.thinker_sampling or SamplingConfig.greedy(), eos,
                                 seed=o.seed):
            records.append(rec)
            if t_text is None:
                t_text = time.perf_counter() - t_start
            for i, tok in enumerate(rec.tokens):
                if done[i]:
                    continue
                ids[i].append(int(tok))
                done[i] = int(tok) in eos
                if on_text is not None and not done[i]:
                    delta = decoders[i].push(int(tok))
                    if delta:
                        on_text(i, delta)
        if on_text is not None:
            for i, d in enumerate(decoders):
                tail = d.finish()
                if tail:
                    on_text(i, tail)
        t_thinker = time.perf_counter() - t_start
        counts = RouterCounts(to_host(records[0].stats.counts).astype(np.int64),
                              sum((to_host(r.stats.counts).astype(np.int64) for r in records[1:]),
                                  np.zeros(records[0].stats.counts.shape, np.int64)),
                              prompt_tokens=int(np.asarray(prompt.attention_mask).sum()),
                              decode_steps=len(records) - 1)
        results = [self._result(request, i, r) for i, r in enumerate(ids)]
        if request.speech:
            from omni_jax.generation.speech import speak_stream
            from omni_jax.generation.talker_engine import TalkerSampling

            for event in speak_stream(self.cfg, self.params, records, prompt, speaker=o.speaker,
                                      talker_sampling=o.talker_sampling or TalkerSampling(), seed=o.seed,
                                      max_frames=o.max_speech_frames, chunk_size=o.audio_chunk_frames,
                                      talker_opts=talker_opts, max_new_tokens=o.max_new_tokens):
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
            t = self.cfg.talker.text
            counts.talker = sum((to_host(s.counts).astype(np.int64) for s in res.stats),
                                np.zeros((t.num_layers, t.num_experts), np.int64))
            counts.talker_steps = len(res.stats)
        discard()  # jobs this call did not need (it stopped early)
        timing = {"time_to_first_token_s": t_text, "time_to_first_audio_s": t_audio, "thinker_s": t_thinker,
                  "total_s": time.perf_counter() - t_start}
        for r in results:
            r.router, r.router_counts = counts, counts.total
            r.extras.update(timing)
        return results

    def _compile_ahead(self, request: PreparedRequest, engine, talker_opts) -> None:
        """Compile the programs that run after the Thinker's prefill on a background thread, while this one
        encodes the media and compiles and runs the prefill (``omni_jax.generation.ahead``). Not on a mesh: the
        abstract arguments do not carry the layouts the real calls see, so their programs would be compiled twice."""
        if self.mesh is not None:
            return
        from omni_jax.generation.ahead import compile_ahead
        from omni_jax.models.thinker import prepared_prompt_shape

        o = request.options
        sampling = o.thinker_sampling or SamplingConfig.greedy()
        shape = prepared_prompt_shape(self.params["thinker"], self.cfg, request.batch)
        jobs = engine.compile_ahead_jobs(shape, o.max_new_tokens, sampling) if o.max_new_tokens > 1 else []
        if request.speech and o.max_speech_frames > 0:
            from omni_jax.generation.speech import speech_compile_ahead_jobs
            from omni_jax.generation.talker_engine import TalkerSampling

            jobs += speech_compile_ahead_jobs(self.cfg, self.params, shape, request.speaker_id, o.max_new_tokens,
                                              o.talker_sampling or TalkerSampling(), o.seed, o.max_speech_frames,
                                              talker_opts, o.audio_chunk_frames)
        compile_ahead(jobs)

    def _run_fused(self, request: PreparedRequest, on_text, on_audio) -> list[GenerationResult]:
        """The whole generation as one jitted program (``omni_jax.generation.fused``)."""
        from omni_jax.generation.fused import generate_fused

        o = request.options
        t0 = time.perf_counter()
        prompt = self.encode(request)
        thinker_opts, talker_opts = self.stack_options(request)
        res = generate_fused(self.cfg, self.params, prompt, o.max_new_tokens,
                             o.thinker_sampling or SamplingConfig.greedy(), {self.cfg.im_end_token_id},
                             speech=request.speech, speaker_id=request.speaker_id, talker_sampling=o.talker_sampling,
                             max_frames=o.max_speech_frames, seed=o.seed, chunk_size=o.audio_chunk_frames,
                             thinker_opts=thinker_opts, talker_opts=talker_opts)
        total = time.perf_counter() - t0
        c = res.router_counts
        counts = RouterCounts(c["prompt"], c["generated"], c.get("talker"),
                              prompt_tokens=int(np.asarray(prompt.attention_mask).sum()),
                              decode_steps=max(len(t) for t in res.tokens) - 1,
                              talker_steps=max((len(x) for x in res.codes or []), default=0))
        out = []
        for i, ids in enumerate(res.tokens):
            r = self._result(request, i, ids)
            r.router, r.router_counts = counts, counts.total
            r.extras.update(total_s=total, fused=True)
            if request.speech:
                r.codec_codes, r.wav, r.sample_rate = res.codes[i], res.wavs[i], res.sample_rate
            out.append(r)
        for i, r in enumerate(out):
            if on_text is not None:
                delta = self.tokenizer.decode([t for t in r.token_ids if t != self.cfg.im_end_token_id],
                                              skip_special_tokens=True)
                if delta:
                    on_text(i, delta)
            if on_audio is not None and r.wav is not None and r.wav.size:
                on_audio(i, r.wav)
        return out

    # -- one call -----------------------------------------------------------------------------------------
    def generate(self, messages: Sequence, **options):
        """One conversation -> GenerationResult; a list of conversations -> list of GenerationResult.

        Options (``GenerationOptions``): max_new_tokens (128); thinker_sampling (``SamplingConfig``, default
        greedy); talker_sampling (``TalkerSampling``, default the reference's talker defaults,
        ``TalkerSampling.greedy()`` for deterministic speech); speech (None: on when the checkpoint has a
        Talker); speaker; seed; use_audio_in_video; image_max_pixels / video_fps / video_max_frames;
        max_speech_frames (4095); audio_chunk_frames (300 = HF's ``chunked_decode``: Code2Wav decodes the codes
        in chunks of this many frames with 25 frames of left context);
        routing / talker_routing: ``RoutingConfig`` for every layer of the Thinker / Talker (fields left None
        take the model's: ``RoutingConfig(top_k=4)``), a sequence with one per layer, or a dict of settings
        (``{"top_k": 4, "temperature": 0.5}``, see ``omni_jax.moe.routing_spec``);
        fused: run the whole Thinker -> Talker -> Code2Wav generation as ONE jitted XLA program
        (``omni_jax.generation.fused``: same tokens, codes and waveforms, no host round trip per step).

        ``result.router_counts`` [layers, experts] counts the Thinker's experts over prompt and generation
        (the batch); ``result.router`` has them by phase and the Talker's. ``result.extras`` has
        ``time_to_first_token_s``, ``time_to_first_audio_s`` and ``total_s``."""
        return self.run(self.prepare(messages, **options))

    def stream(self, messages: Sequence, **options) -> Iterator[dict[str, Any]]:
        """Yield ``{"type": "text", "row": i, "delta": str}`` as tokens are produced, then (speech on)
        ``{"type": "audio", "row": i, "wav": float32 array, "sample_rate": 24000}`` pieces as the Talker's frames
        are decoded, then one ``{"type": "result", "result": GenerationResult | list}``.

        Same options as ``generate``; ``audio_chunk_frames`` defaults to 25 here (2 s of speech per piece;
        the pieces concatenate to ``chunked_decode(codes, 25, 25)``; 300 gives ``generate``'s waveform).
        Text deltas are the raw text (a thinking model's reasoning included; the result separates them).
        With ``fused=True`` the events come when the one program has finished. Bad options fail here, before
        the first event. The work runs in a background thread; this iterator hands the events out in order.
        """
        import queue
        import threading

        options.setdefault("audio_chunk_frames", 25)
        request = self.prepare(messages, **options)
        q: queue.Queue = queue.Queue()

        def work():
            try:
                res = self.run(request, on_text=lambda i, d: q.put({"type": "text", "row": i, "delta": d}),
                               on_audio=lambda i, w: q.put({"type": "audio", "row": i, "wav": w,
                                                            "sample_rate": 24_000}))
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


def resolve_mesh(path: Path, mesh, dtype: str):
    """A Mesh for ``mesh`` (a Mesh, a spec string or None); a spec is first checked against the checkpoint's
    config, so that a size that does not divide a weight is named before the device count is looked at."""
    if mesh is None or hasattr(mesh, "devices"):
        return mesh
    from omni_jax.config import OmniConfig
    from omni_jax.models.omni import model_param_info
    from omni_jax.sharding import check_fits, make_mesh, parse_mesh_spec

    parse_mesh_spec(mesh)
    check_fits(model_param_info(OmniConfig.from_file(path), dtype), mesh)
    return make_mesh(mesh)


def load(path: str | Path | None = None, *, dtype: str = "auto", mesh=None, distributed=None, demo: bool = False,
         progress: bool = False, compilation_cache: str | None = None) -> OmniModel:
    """Load a Hugging Face or converted checkpoint directory; ``demo=True`` uses the random-weight demo.

    dtype: "auto" (bfloat16 on GPU / TPU, float32 on CPU), "float32" or "bfloat16".
    mesh: a ``jax.sharding.Mesh`` or a spec such as ``"fsdp=2,expert=4"`` (axes data, fsdp, tensor, expert):
    every weight is split by its declared logical axes and each device reads only its own pieces from the
    checkpoint (no host copy of the model); generation runs under this mesh (expert-parallel MoE, sharded
    KV caches). distributed: True (JAX's environment or cluster detection) or
    ``{"coordinator": "HOST:PORT", "num_processes": N, "process_id": I}``: join a multi-process run first (the
    mesh then spans every process's devices). compilation_cache: a directory for JAX's persistent compilation
    cache or ``"off"`` (default: ``$OMNI_JAX_COMPILATION_CACHE``, else ``~/.cache/omni_jax/jax_compilation``;
    see ``omni_jax.compilation``)."""
    model = OmniModel.open(path, dtype=dtype, mesh=mesh, distributed=distributed, demo=demo,
                           compilation_cache=compilation_cache)
    model.load_weights(progress=progress)
    return model
