"""Top-p routing matched to a top-k budget: find p so that the unmodified router needs k experts on average.

For one token of one layer, top-p routing (``RoutingConfig.top_p``, capped at ``max_k`` slots) keeps slot j of
the probability-sorted experts while the mass of the slots before it is below p. Given the router logits the
unmodified model produces on a calibration set, the mean number of kept slots is a step function of p,
monotone; ``match_top_p`` bisects it to the target. (Applying top-p changes the hidden states of later layers
and therefore their routing a little: the evaluated ``experts_per_token`` is reported beside the target.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.experiments.evaluate import forward_stats
from omni_jax.models.decoder import StackOptions


def router_probs(text_params, cfg, eval_set, batch_size: int) -> np.ndarray:
    """Sorted (descending) router probabilities of every real token in every layer: [N, E] float32 (N = layers × tokens)."""
    opts = StackOptions.uniform(cfg, router_outputs=True)
    rows = []
    for ids, mask in eval_set.batches(batch_size):
        stats = forward_stats(text_params, cfg, opts, jnp.asarray(ids), jnp.asarray(mask))
        logits = np.asarray(stats.router_logits, np.float32)  # [L, B·T, E]
        keep = np.asarray(mask).reshape(-1).astype(bool)
        p = np.asarray(jax.nn.softmax(jnp.asarray(logits[:, keep]), axis=-1))
        rows.append(-np.sort(-p, axis=-1).reshape(-1, p.shape[-1]))
    return np.concatenate(rows)


def mean_kept(sorted_probs: np.ndarray, p: float, max_k: int) -> float:
    """Mean slots top-p keeps (at most ``max_k``): slot j kept while the mass before it is < p."""
    top = sorted_probs[:, :max_k]
    before = np.cumsum(top, axis=-1) - top
    return float((before < p).sum(-1).mean())


def match_top_p(sorted_probs: np.ndarray, target_k: float, max_k: int, iters: int = 40) -> float:
    """The smallest p whose mean kept slots reaches ``target_k`` (bisection on the monotone step function)."""
    lo, hi = 0.0, 1.0
    if mean_kept(sorted_probs, hi, max_k) <= target_k:
        return 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mean_kept(sorted_probs, mid, max_k) >= target_k:
            hi = mid
        else:
            lo = mid
    return hi
