"""The whole Thinker -> Talker -> Code2Wav generation as ONE jitted pure function of (parameters, inputs).

``fused_generate`` compiles a single XLA program per shape bucket: the Thinker's prefill and its decode loop
(``lax.while_loop``, stopping when every row has emitted an EOS), the talker prompt assembled from the
Thinker's outputs, the Talker's prefill and frame loop (code predictor inside; stops at every row's codec
EOS), and Code2Wav's chunked decode of the codes. Static: the configs, routing options, sampling settings,
``max_new_tokens``, ``max_frames`` and the padded prompt shapes; everything else is traced. What depends on
the prompt alone (tokenizing, media preprocessing and encoders, the talker prompt's row plan and position ids)
is prepared on the host before the call, as inputs; cutting each row's waveform to its length happens after.

It gives exactly what the streaming engine (``ThinkerEngine.stream`` + ``speak``) gives — same tokens, codes and
waveform — without the host round trip per step; streaming needs the step-by-step engine, this is for batch
throughput. ``generate_fused`` is the host wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import OmniConfig
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.talker_engine import TalkerSampling, frame_loop, talker_prefill
from omni_jax.generation.talker_prompt import (TalkerMedia, TalkerPlan, assemble_talker_prompt, plan_talker_prompt,
                                               text_widths)
from omni_jax.generation.thinker_engine import CACHE_BUCKET, cache_size_for
from omni_jax.generation.thinker_steps import decode_loop, thinker_prefill
from omni_jax.models import omni, thinker_text
from omni_jax.models.code2wav import decode_window, total_upsample, wav_length
from omni_jax.models.decoder import StackOptions
from omni_jax.models.prompt import round_up
from omni_jax.sharding import to_host


@dataclass
class FusedResult:
    tokens: list[list[int]]  # per row, up to and including the first EOS
    codes: list[np.ndarray] | None  # per row [frames, 16]
    wavs: list[np.ndarray] | None  # per row float32
    sample_rate: int = 24_000
    router_counts: dict | None = None  # [layers, experts] over the batch: Thinker "prompt" (prefill) and
    #                                    "generated" (decode steps), "talker" (frame steps) when it spoke


def _gen_lengths(buf, n_records, eos_ids):
    """Per row: tokens up to and including the first EOS, else every record (as ``generated_lengths``)."""
    is_eos = jnp.isin(buf, jnp.asarray(eos_ids, jnp.int32)) & (jnp.arange(buf.shape[0])[:, None] < n_records)
    return jnp.where(is_eos.any(0), jnp.argmax(is_eos, 0) + 1, n_records).astype(jnp.int32)


def _code2wav_chunks(params, codes, cfg, chunk_size: int, left_context: int):
    """codes [B, Q, F] -> per chunk the decoded samples [B, wav_length(left_context + chunk_size)] (static
    windows, right-padded; the host keeps each row's prefix: the decoder is prefix-consistent)."""
    f = codes.shape[-1]
    starts = range(0, f, chunk_size)
    # the widest window any chunk needs (HF's windows are never wider than the frames there are)
    size = max(min(left_context, s) + min(chunk_size, f - s) for s in starts)
    out = []
    for start in starts:
        ctx = min(left_context, start)
        window = codes[..., start - ctx: min(start + chunk_size, f)]
        window = jnp.pad(window, ((0, 0), (0, 0), (0, size - window.shape[-1])))
        out.append(decode_window(params, window, cfg))
    return jnp.stack(out)  # [chunks, B, samples]


@functools.partial(jax.jit, static_argnames=("cfg", "thinker_opts", "talker_opts", "sampling", "talker_sampling",
                                             "eos_ids", "n_new", "max_frames", "cache_size", "talker_cache_size",
                                             "speech", "chunk_size", "left_context", "has_mm"))
def fused_generate(params, cfg: OmniConfig, thinker_opts: StackOptions, talker_opts: StackOptions,
                   sampling: SamplingConfig, talker_sampling, eos_ids: tuple, n_new: int, max_frames: int,
                   cache_size: int, talker_cache_size: int, speech: bool, chunk_size: int, left_context: int,
                   has_mm: bool, embeds, position_ids, attention_mask, deepstack, input_ids, rope_deltas, seed,
                   plan: dict, talker_seeds):
    """One XLA program: Thinker loop -> talker prompt -> Talker loop -> Code2Wav (see the module docstring).
    ``embeds``: the prompt's input embeddings, or None for the token embeddings of ``input_ids``."""
    text = params["thinker"]["text"]
    state, first = thinker_prefill(text, cfg.thinker.text, thinker_opts, sampling, cache_size, input_ids,
                                   attention_mask, position_ids, rope_deltas, seed, embeds, deepstack)
    buf, n_records, gen_counts = decode_loop(text, cfg.thinker.text, thinker_opts, sampling, state, n_new, eos_ids)
    out = {"tokens": buf, "records": n_records, "prompt_counts": first["stats"].counts, "generated_counts": gen_counts}
    if not speech:
        return out
    embeds = first["embeds"]
    gen_len = _gen_lengths(buf, n_records, eos_ids)
    width, t_width = text_widths(n_new)
    gen_embeds = thinker_text.embed_tokens(text, jnp.maximum(buf.T, 0))  # g1, g2, ... (only fed ones are read)
    gen_embeds = jnp.pad(gen_embeds, ((0, 0), (0, width - n_new if width > n_new else 0), (0, 0)))[:, :width]
    t_plan = TalkerPlan(**plan)
    tap = first["hidden_states"][f"tap_{cfg.talker.accept_hidden_layer - 1}"] if has_mm else None
    t_embeds, trailing, pad = assemble_talker_prompt(t_plan, params["talker"], text["embed"], embeds, tap,
                                                     gen_embeds, gen_len, t_width, has_mm=has_mm)
    trail_len = jnp.maximum(gen_len - 1, 1).astype(jnp.int32)
    next_position = (t_plan.position_ids[0, :, -1] + 1).astype(jnp.float32)
    t_state, _ = talker_prefill(params["talker"], cfg.talker, talker_opts, talker_sampling, talker_cache_size,
                                      t_embeds, t_plan.position_ids, t_plan.mask, talker_seeds)
    frames, valid, t_counts = frame_loop(params["talker"], cfg.talker, talker_opts, talker_sampling, t_state,
                                         max_frames, next_position, trailing, trail_len, pad, talker_seeds)
    codes = jnp.transpose(frames, (1, 2, 0))  # [B, Q, F]
    out.update(frames=frames, valid=valid, talker_counts=t_counts,  # the frames' (as the streaming engine's)
               chunks=_code2wav_chunks(params["code2wav"], codes, cfg.code2wav, chunk_size, left_context))
    return out


def compile_count() -> int:
    return fused_generate._cache_size()


def generate_fused(cfg: OmniConfig, params: dict, prompt, max_new_tokens: int, sampling: SamplingConfig,
                   eos_ids, *, speech: bool = True, speaker_id: int | None = None, talker_sampling=None,
                   max_frames: int = 4095, seed: int = 0, chunk_size: int = 300, left_context: int = 25,
                   media: TalkerMedia | None = None, thinker_opts: StackOptions | None = None,
                   talker_opts: StackOptions | None = None) -> FusedResult:
    """Host wrapper: plan the talker prompt, run ``fused_generate`` once, cut tokens and waveforms per row.

    prompt: the Thinker's ``PreparedPrompt``; the talker row ``b`` samples with ``seed + b`` (as ``speak``).
    thinker_opts / talker_opts: routing and MoE options of the two stacks (default: the reference routing); the
    Thinker's tap for the talker prompt is added here. On a mesh (``jax.set_mesh``) the MoE runs
    expert-parallel and the caches are created sharded."""
    tcfg = cfg.thinker.text
    eos = tuple(sorted(int(e) for e in eos_ids))
    cache_size = cache_size_for(tcfg, prompt.length, max_new_tokens)
    taps = (cfg.talker.accept_hidden_layer - 1,) if speech else ()
    thinker_opts = dataclasses.replace(thinker_opts or StackOptions.uniform(tcfg), taps=taps)
    b = prompt.batch
    plan, talker_cache, has_mm = {}, 0, False
    if speech:
        if media is None:
            extras = prompt.extras or {}
            media = TalkerMedia.from_source(extras.get("media", extras))
        p = plan_talker_prompt(cfg, prompt.input_ids, prompt.attention_mask, speaker_id, media)
        has_mm = p.has_mm
        plan = dict(vars(p))
        talker_opts = talker_opts or StackOptions.uniform(cfg.talker.text)
        talker_cache = round_up(p.mask.shape[1] + max_frames + 1, CACHE_BUCKET)
    else:
        talker_opts = None
    params = omni.with_decode_views(params)  # per-layer weights read in place on CPU
    out = fused_generate(params, cfg, thinker_opts, talker_opts, sampling, talker_sampling or TalkerSampling(),
                         eos, max_new_tokens, max_frames, cache_size, talker_cache, speech, chunk_size, left_context,
                         has_mm, prompt.inputs_embeds, prompt.position_ids, prompt.attention_mask, prompt.deepstack,
                         prompt.input_ids, prompt.rope_deltas, np.uint32(seed), plan,
                         np.arange(seed, seed + b, dtype=np.uint32))
    counts = {"prompt": to_host(out["prompt_counts"]).astype(np.int64),
              "generated": to_host(out["generated_counts"]).astype(np.int64)}
    buf = to_host(out["tokens"])[: int(to_host(out["records"]))]
    tokens = []
    for i in range(b):
        row = []
        for t in buf[:, i]:
            row.append(int(t))
            if int(t) in eos:
                break
        tokens.append(row)
    if not speech:
        return FusedResult(tokens, None, None, router_counts=counts)
    frames, valid = to_host(out["frames"]), to_host(out["valid"])
    chunks = to_host(out["chunks"]).astype(np.float32)  # [chunks, B, samples]
    first = total_upsample(cfg.code2wav)
    codes, wavs = [], []
    for i in range(b):
        c = frames[valid[:, i], i]
        codes.append(c.astype(np.int32))
        pieces = []
        for k, start in enumerate(range(0, len(c), chunk_size)):
            ctx = min(left_context, start)
            n = min(chunk_size, len(c) - start)
            pieces.append(chunks[k, i, ctx * first: ctx * first + wav_length(n, cfg.code2wav)])
        wavs.append(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))
    counts["talker"] = to_host(out["talker_counts"]).astype(np.int64)
    return FusedResult(tokens, codes, wavs, router_counts=counts)
