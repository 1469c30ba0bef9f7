"""Teacher-forced evaluation of a (modified) Talker against the unmodified one.

The unmodified model speaks a few eval texts greedily (Thinker -> talker prompt -> greedy codec frames); every
decode step's input embedding is kept. A variant then runs one teacher-forced forward over the talker prompt
and those inputs, and its layer-0 codec distributions at the positions that predict each frame's c0 are
compared with the unmodified talker's: NLL of the reference greedy codes (``loss``), KL, argmax agreement,
router statistics, expert parameter bytes and decode ms per frame.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import TalkerConfig
from omni_jax.experiments.evaluate import expert_bytes, position_metrics, router_summary
from omni_jax.models.decoder import StackOptions
from omni_jax.models.talker import talker_forward


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def _talker_logprobs(params, cfg: TalkerConfig, opts: StackOptions, embeds, position_ids, attention_mask):
    out = talker_forward(params, cfg, opts, embeds, position_ids, attention_mask)
    return jax.nn.log_softmax(out["logits"].astype(jnp.float32), axis=-1), out["stats"]


@dataclass
class TalkerEval:
    ctx: object
    prompt: object  # TalkerPrompt
    embeds: jax.Array  # [B, P+S, H]
    position_ids: jax.Array  # [3, B, P+S]
    attention_mask: jax.Array  # [B, P+S]
    targets: np.ndarray  # [B, P+S] int32 (next c0 at prediction positions)
    target_mask: np.ndarray  # [B, P+S] int32
    reference: np.ndarray  # [B, P+S, V] reference log-probs
    frames: int

    @classmethod
    def build(cls, ctx, n_prompts: int, n_frames: int, thinker_tokens: int = 8) -> "TalkerEval":
        from omni_jax.generation.sampling import SamplingConfig
        from omni_jax.generation.speech import speaker_id
        from omni_jax.generation.talker_engine import TalkerEngine, TalkerSampling
        from omni_jax.generation.talker_prompt import TalkerMedia, build_talker_prompt
        from omni_jax.generation.thinker_engine import ThinkerEngine
        from omni_jax.models.thinker import prepare_prompt
        from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor

        cfg = ctx.cfg
        texts = ctx.thinker_eval().texts[:max(1, n_prompts)]
        convs = [[{"role": "user", "content": [{"type": "text", "text": t}]}] for t in texts]
        processor = MultimodalProcessor.from_dir(ctx.checkpoint, cfg)
        prompt = prepare_prompt(ctx.params["thinker"], cfg, processor(convs, MediaOptions()))
        tap = cfg.talker.accept_hidden_layer - 1
        engine = ThinkerEngine(cfg, ctx.params["thinker"]["text"])
        records = list(engine.stream(prompt, thinker_tokens, SamplingConfig.greedy(), {cfg.im_end_token_id},
                                     opts=StackOptions.uniform(cfg.thinker.text, taps=(tap,))))
        media = TalkerMedia.from_source(prompt.extras.get("media", prompt.extras))
        tp = build_talker_prompt(cfg, ctx.params["talker"], ctx.params["thinker"]["text"]["embed"], records,
                                 prompt.input_ids, prompt.attention_mask, speaker_id(cfg, "Ethan"),
                                 [cfg.im_end_token_id], media)
        talker = TalkerEngine(cfg.talker, ctx.params["talker"])
        steps = list(talker.stream(tp, n_frames, TalkerSampling.greedy(), 0))
        if not steps:
            raise ValueError("the reference talker stopped before its first frame: nothing to evaluate")
        b, p, s = tp.batch, tp.length, len(steps)
        inputs = jnp.stack([r.inputs for r in steps], axis=1).astype(tp.inputs_embeds.dtype)
        embeds = jnp.concatenate([tp.inputs_embeds, inputs], axis=1)
        step_pos = tp.next_position[:, None] + np.arange(s)[None]  # [B, S]
        pos = np.concatenate([tp.position_ids, np.broadcast_to(step_pos[None], (3, b, s))], axis=2)
        active = np.stack([r.valid for r in steps], axis=1).astype(np.int32)  # [B, S]
        mask = np.concatenate([tp.attention_mask, active], axis=1)
        targets = np.zeros((b, p + s), np.int32)
        tmask = np.zeros((b, p + s), np.int32)
        c0 = np.stack([r.frames[:, 0] for r in steps], axis=1)  # [B, S]
        # position p-1 predicts step 0's c0; position p+j predicts step j+1's c0
        targets[:, p - 1], tmask[:, p - 1] = c0[:, 0], active[:, 0]
        for j in range(s - 1):
            targets[:, p + j], tmask[:, p + j] = c0[:, j + 1], active[:, j + 1]
        ev = cls(ctx, tp, embeds, jnp.asarray(pos, jnp.float32), jnp.asarray(mask), targets, tmask, None, s)
        ev.reference = np.asarray(ev._forward(StackOptions.uniform(cfg.talker.text))[0])
        return ev

    def _forward(self, opts, params=None):
        params = self.ctx.params["talker"] if params is None else params
        return _talker_logprobs(params, self.ctx.cfg.talker, opts, self.embeds, self.position_ids,
                                self.attention_mask)

    def evaluate(self, opts: StackOptions, params: dict | None = None) -> dict:
        """Metrics of the Talker with ``opts`` (routing hooks) and ``params`` (default: the loaded Talker's,
        e.g. a quantized copy) against the unmodified Talker."""
        params = self.ctx.params["talker"] if params is None else params
        logp, stats = self._forward(opts, params)
        n, nll, kl, agree = (float(x) for x in position_metrics(logp, jnp.asarray(self.reference),
                                                                jnp.asarray(self.targets),
                                                                jnp.asarray(self.target_mask)))
        counts = np.asarray(stats.counts, np.int64)
        toks = np.asarray(stats.num_tokens, np.float64)
        m = dict(loss=nll / max(n, 1), perplexity=float(np.exp(min(nll / max(n, 1), 50.0))),
                 kl_to_reference=kl / max(n, 1), greedy_agreement=agree / max(n, 1), eval_tokens=int(n))
        m.update(router_summary(counts, float(toks[0]), np.asarray(stats.entropy, np.float64)))
        m.update(expert_param_bytes=expert_bytes(params), ms_per_frame_decode=self.decode_ms(opts, params))
        return m

    def decode_ms(self, opts: StackOptions, params: dict | None = None) -> float:
        from omni_jax.generation.talker_engine import TalkerEngine, TalkerSampling

        params = self.ctx.params["talker"] if params is None else params
        engine = TalkerEngine(self.ctx.cfg.talker, params, opts)
        stamps = [time.perf_counter() for _ in engine.stream(self.prompt, self.frames, TalkerSampling.greedy(), 0)]
        steps = np.diff(stamps)[1:]
        return float(1e3 * np.median(steps)) if len(steps) else float("nan")
