"""Modality routing: which experts serve text, image and audio tokens (per-layer heatmaps of expert load).

A multimodal prompt set (knobs ``[modality]``: ``images`` / ``audios`` lists of files, ``questions``; by
default the demo's synthetic picture and chirp with a few questions) runs through the Thinker's prefill with
the router outputs kept. Every processed assignment is attributed to its token's modality (image / video /
audio placeholder tokens, the rest text; padding excluded). Per modality and layer the expert load is
normalised to a distribution; the rows report per modality its tokens, mean load entropy, the share of the
busiest 10 % of experts, and the Jensen–Shannon divergence of its load from every other modality's (mean
over layers): 0 = the same experts, ln 2 = disjoint experts. Heatmaps: plots/modality_<name>.png and
plots/modality_divergence.png.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.experiments.schema import ExistingPath, ListOf, Str
from omni_jax.models import thinker_text
from omni_jax.models.decoder import StackOptions

TABLES = ()
SCHEMA = {
    "images": ListOf([], "image files; [] = the demo's synthetic picture", item=ExistingPath("")),
    "audios": ListOf([], "audio files; [] = the demo's synthetic chirp", item=ExistingPath("")),
    "questions": ListOf(["What do you see and hear?", "Describe this.", "What is shown here?"],
                        item=Str(None, nonempty=True), min_len=1),
}


def prompt_set(ctx, knobs) -> list[list[dict]]:
    images, audios = list(knobs["images"]), list(knobs["audios"])
    if not images or not audios:
        from omni_jax.demo import demo_media

        img, aud = demo_media(ctx.artifact_dir("media"))
        images, audios = images or [str(img)], audios or [str(aud)]
    convs = []
    for i, q in enumerate(knobs["questions"]):
        content = [{"type": "image", "image": images[i % len(images)]},
                   {"type": "audio", "audio": audios[i % len(audios)]},
                   {"type": "text", "text": q}]
        convs.append([{"role": "user", "content": content}])
    for q in knobs["questions"]:  # text-only and single-media prompts too
        convs.append([{"role": "user", "content": [{"type": "text", "text": q}]}])
    return convs


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def _prefill_routing(params, cfg, opts, embeds, position_ids, attention_mask, deepstack):
    out = thinker_text.text_forward(params, cfg, opts, embeds, position_ids, attention_mask, deepstack=deepstack,
                                    logits_at="none")
    st = out["stats"]
    return st.top_k_experts, st.top_k_weights  # [L, B·P, K]


def modality_of(input_ids: np.ndarray, attention_mask: np.ndarray, thinker_cfg) -> np.ndarray:
    """[B, P] int: 0 text, 1 image, 2 video, 3 audio, -1 padding."""
    m = np.zeros(input_ids.shape, np.int32)
    m[input_ids == thinker_cfg.image_token_id] = 1
    m[input_ids == thinker_cfg.video_token_id] = 2
    m[input_ids == thinker_cfg.audio_token_id] = 3
    m[attention_mask == 0] = -1
    return m


MODALITIES = ("text", "image", "video", "audio")


def load_by_modality(experts: np.ndarray, weights: np.ndarray, modality: np.ndarray, num_experts: int) -> np.ndarray:
    """experts/weights [L, T, K], modality [T] -> counts [4, L, E] of processed assignments."""
    n_layers = experts.shape[0]
    out = np.zeros((len(MODALITIES), n_layers, num_experts), np.int64)
    used = weights > 0
    for mi in range(len(MODALITIES)):
        sel = modality == mi
        for layer in range(n_layers):
            e = experts[layer][sel][used[layer][sel]]
            out[mi, layer] += np.bincount(e, minlength=num_experts)
    return out


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (nats) along the last axis of two distributions."""
    m = 0.5 * (p + q)

    def kl(a, b):
        return np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0), axis=-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def run(ctx) -> list[dict]:
    from omni_jax.models.thinker import prepare_prompt
    from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor

    knobs = ctx.spec["modality"]
    cfg = ctx.cfg
    tcfg = cfg.thinker.text
    processor = MultimodalProcessor.from_dir(ctx.checkpoint, cfg)
    opts = StackOptions.uniform(tcfg, router_outputs=True)
    counts = np.zeros((len(MODALITIES), tcfg.num_layers, tcfg.num_experts), np.int64)
    for conv in ctx.progress(prompt_set(ctx, knobs), desc="prompts"):
        prompt = prepare_prompt(ctx.params["thinker"], cfg, processor([conv], MediaOptions()))
        embeds = prompt.inputs_embeds
        if embeds is None:
            embeds = thinker_text.embed_tokens(ctx.text_params, jnp.asarray(prompt.input_ids))
        experts, weights = _prefill_routing(ctx.text_params, tcfg, opts, embeds, jnp.asarray(prompt.position_ids),
                                            jnp.asarray(prompt.attention_mask), prompt.deepstack)
        mod = modality_of(prompt.input_ids, prompt.attention_mask, cfg.thinker).reshape(-1)
        counts += load_by_modality(np.asarray(experts), np.asarray(weights, np.float32), mod, tcfg.num_experts)
    present = [i for i in range(len(MODALITIES)) if counts[i].sum() > 0]
    dist = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
    rows = []
    for i in present:
        ent = -np.sum(np.where(dist[i] > 0, dist[i] * np.log(np.where(dist[i] > 0, dist[i], 1)), 0), -1)
        top = max(1, tcfg.num_experts // 10)
        top_share = np.sort(dist[i], axis=-1)[:, -top:].sum(-1)
        row = {"variant": MODALITIES[i], "assignments": int(counts[i].sum()),
               "tokens": int(counts[i, 0].sum() // max(tcfg.top_k, 1)), "load_entropy": float(ent.mean()),
               "top10pct_share": float(top_share.mean())}
        for j in present:
            if j != i:
                row[f"js_vs_{MODALITIES[j]}"] = float(js_divergence(dist[i], dist[j]).mean())
        rows.append(row)
    np.save(ctx.artifact_dir("counts") / "modality_counts.npy", counts)
    plot(ctx, dist, present)
    return rows


def plot(ctx, dist: np.ndarray, present: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    vmax = float(dist[present].max()) if present else 1.0
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.6), squeeze=False)
    for ax, i in zip(axes[0], present):
        im = ax.imshow(dist[i], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{MODALITIES[i]} tokens")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0].tolist(), label="share of the modality's assignments")
    ctx.save_figure(fig, "modality_heatmaps")
    if len(present) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for a in range(len(present)):
            for b in range(a + 1, len(present)):
                i, j = present[a], present[b]
                ax.plot(js_divergence(dist[i], dist[j]), marker="o", label=f"{MODALITIES[i]} vs {MODALITIES[j]}")
        ax.set_xlabel("layer")
        ax.set_ylabel("JS divergence (nats)")
        ax.set_title("how differently modalities are routed")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ctx.save_figure(fig, "modality_divergence")
