"""Evaluation of a (modified) Thinker text model against the unmodified one, teacher-forced on a text set.

Metrics (all over real, non-padding next-token positions):
- ``loss`` / ``perplexity``: next-token cross entropy of the model on the eval texts;
- ``kl_to_reference``: mean per-token KL(reference ‖ model) of the next-token distributions;
- ``greedy_agreement``: fraction of positions where the model's argmax equals the reference's argmax;
- router statistics: ``experts_per_token`` (mean over layers of processed assignments per token: below
  top_k under top-p routing), ``router_entropy`` (nats), ``max_load`` (max / mean expert load, mean over layers);
- ``param_bytes`` / ``expert_param_bytes``: storage of the text model's parameters (quantized storage counted
  as stored);
- ``ms_per_token_prefill`` (teacher-forced forward time / tokens) and ``ms_per_token_decode`` (jitted decode
  step, after compilation).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import TextConfig
from omni_jax.models import thinker_text
from omni_jax.models.decoder import StackOptions
from omni_jax.positions import text_positions


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def forward_logprobs(params, cfg: TextConfig, opts: StackOptions, input_ids, attention_mask):
    """Teacher-forced forward: log-softmax of the logits [B, L, V] (fp32) and the stacked MoE stats."""
    emb = thinker_text.embed_tokens(params, input_ids)
    out = thinker_text.text_forward(params, cfg, opts, emb, text_positions(attention_mask), attention_mask)
    return jax.nn.log_softmax(out["logits"].astype(jnp.float32), axis=-1), out["stats"]


@jax.jit
def position_metrics(logp, ref_logp, targets, valid):
    """Sums over positions where ``valid``: (n, nll of ``targets``, KL(ref ‖ model), argmax agreement)."""
    valid = valid.astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    kl = jnp.sum(jnp.exp(ref_logp) * (ref_logp - logp), axis=-1)
    agree = (jnp.argmax(logp, -1) == jnp.argmax(ref_logp, -1)).astype(jnp.float32)
    return jnp.sum(valid), jnp.sum(nll * valid), jnp.sum(kl * valid), jnp.sum(agree * valid)


def token_metrics(logp, ref_logp, input_ids, attention_mask):
    """Next-token sums: position t predicts token t+1 (both real)."""
    valid = attention_mask[:, 1:] * attention_mask[:, :-1]
    return position_metrics(logp[:, :-1], ref_logp[:, :-1], input_ids[:, 1:], valid)


def tree_bytes(tree) -> int:
    return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in jax.tree.leaves(tree)))


def expert_bytes(text_params: dict) -> int:
    mlp = text_params["layers"]["mlp"]
    return tree_bytes([mlp["gate_up"], mlp["down"]])


@dataclass
class Reference:
    """The unmodified model's log-probs per eval batch (host arrays)."""

    logprobs: list[np.ndarray]


def reference_logprobs(params, cfg: TextConfig, eval_set, batch_size: int, progress=lambda it, **_: it) -> Reference:
    opts = StackOptions.uniform(cfg)
    out = []
    for ids, mask in progress(list(eval_set.batches(batch_size)), desc="reference"):
        logp, _ = forward_logprobs(params, cfg, opts, jnp.asarray(ids), jnp.asarray(mask))
        out.append(np.asarray(logp))
    return Reference(out)


def router_summary(counts: np.ndarray, num_tokens: float, entropy: np.ndarray) -> dict:
    """counts [L, E] summed over the set, entropy [L] token-weighted mean."""
    per_layer = counts.sum(-1) / max(num_tokens, 1.0)
    mean_load = counts.mean(-1)
    max_load = np.where(mean_load > 0, counts.max(-1) / np.maximum(mean_load, 1e-30), 0.0)
    return dict(experts_per_token=float(per_layer.mean()), router_entropy=float(entropy.mean()),
                max_load=float(max_load.mean()))


def evaluate_text_model(params, cfg: TextConfig, opts: StackOptions, eval_set, reference: Reference,
                        batch_size: int, decode_fn=None, progress=lambda it, **_: it) -> dict:
    """The metrics listed in the module docstring (``decode_fn() -> ms per decode token`` if given)."""
    n = nll = kl = agree = 0.0
    counts = None
    ent_sum, tok_sum = 0.0, 0.0
    batches = list(eval_set.batches(batch_size))
    # compile (and warm up) outside the timed region
    forward_logprobs(params, cfg, opts, jnp.asarray(batches[0][0]), jnp.asarray(batches[0][1]))[0].block_until_ready()
    elapsed = 0.0
    for (ids, mask), ref in zip(progress(batches, desc="eval"), reference.logprobs):
        t0 = time.perf_counter()
        logp, stats = forward_logprobs(params, cfg, opts, jnp.asarray(ids), jnp.asarray(mask))
        logp.block_until_ready()
        elapsed += time.perf_counter() - t0
        parts = token_metrics(logp, jnp.asarray(ref), jnp.asarray(ids), jnp.asarray(mask))
        bn, bnll, bkl, bag = (float(x) for x in parts)
        n, nll, kl, agree = n + bn, nll + bnll, kl + bkl, agree + bag
        c = np.asarray(stats.counts, np.int64)
        counts = c if counts is None else counts + c
        toks = np.asarray(stats.num_tokens, np.float64)  # [L]
        ent_sum = ent_sum + np.asarray(stats.entropy, np.float64) * toks
        tok_sum = tok_sum + toks
    loss = nll / max(n, 1.0)
    metrics = dict(loss=loss, perplexity=float(np.exp(min(loss, 50.0))), kl_to_reference=kl / max(n, 1.0),
                   greedy_agreement=agree / max(n, 1.0), eval_tokens=int(n))
    metrics.update(router_summary(counts, float(eval_set.num_tokens), ent_sum / np.maximum(tok_sum, 1.0)))
    metrics.update(param_bytes=tree_bytes(params), expert_param_bytes=expert_bytes(params),
                   ms_per_token_prefill=1e3 * elapsed / max(eval_set.num_tokens, 1))
    if decode_fn is not None:
        metrics["ms_per_token_decode"] = decode_fn()
    metrics["_router_counts"] = counts
    return metrics


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def forward_stats(params, cfg: TextConfig, opts: StackOptions, input_ids, attention_mask):
    """Teacher-forced forward without logits: the stacked MoE stats only (router outputs with
    ``opts.router_outputs``)."""
    emb = thinker_text.embed_tokens(params, input_ids)
    out = thinker_text.text_forward(params, cfg, opts, emb, text_positions(attention_mask), attention_mask,
                                    logits_at="none")
    return out["stats"]


def router_counts(params, cfg: TextConfig, opts: StackOptions, eval_set, batch_size: int,
                  progress=lambda it, **_: it) -> np.ndarray:
    """Expert usage [L, E] (processed assignments, padding excluded) over a text set (no logits computed)."""
    counts = np.zeros((cfg.num_layers, cfg.num_experts), np.int64)
    for ids, mask in progress(list(eval_set.batches(batch_size)), desc="router counts"):
        counts += np.asarray(forward_stats(params, cfg, opts, jnp.asarray(ids), jnp.asarray(mask)).counts, np.int64)
    return counts
