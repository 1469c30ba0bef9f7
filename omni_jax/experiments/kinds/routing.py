"""Inference-time routing sweep: Thinker top-k (8 -> 6, 4, 2), Talker top-k (6 -> 4, 2), and dynamic top-p
routing at matched average experts per token.

Knobs (``[routing]``): ``thinker_top_k`` (list; values above num_experts are skipped), ``top_p_matched``
(bool: a top-p variant for every k of the sweep below its largest k, which caps the experts a token may
get; p is calibrated on the unmodified router so that the mean experts per token equals k), ``talker_top_k`` (list; empty to skip the Talker), ``talker_prompts``
and ``talker_frames`` (how many eval texts are spoken, and frames per text, for the Talker evaluation).
"""

from __future__ import annotations

from omni_jax.experiments.routing_calibration import match_top_p, router_probs
from omni_jax.experiments.schema import Bool, Int, ListOf
from omni_jax.models.decoder import StackOptions
from omni_jax.moe import RoutingConfig

TABLES = ("eval",)
SCHEMA = {
    "thinker_top_k": ListOf([8, 6, 4, 2], "values above num_experts are skipped", item=Int(None, min=1)),
    "top_p_matched": Bool(True),
    "talker_top_k": ListOf([6, 4, 2], "[] skips the Talker", item=Int(None, min=1)),
    "talker_prompts": Int(2, min=1),
    "talker_frames": Int(12, min=1),
}


def run(ctx) -> list[dict]:
    knobs = ctx.spec["routing"]
    cfg = ctx.text_cfg
    base = RoutingConfig.from_text_config(cfg)
    rows = []
    ks = [k for k in knobs["thinker_top_k"] if k <= cfg.num_experts]
    variants = [("thinker", f"top-{cfg.top_k} (reference)", base, cfg.top_k, None)]
    variants += [("thinker", f"top-{k}", base.replace(top_k=k), k, None) for k in ks if k != cfg.top_k]
    cap = max(ks, default=cfg.top_k)
    if knobs["top_p_matched"] and any(k < cap for k in ks):
        probs = router_probs(ctx.text_params, cfg, ctx.thinker_eval(), ctx.batch_size)
        for k in ks:
            if k < cap:
                p = match_top_p(probs, k, cap)
                variants.append(("thinker", f"top-p {p:.3f} (~{k})", base.replace(top_k=cap, top_p=p), k, p))
    for stack, name, routing, target, p in ctx.progress(variants, desc="thinker variants"):
        m = ctx.evaluate_thinker(opts=StackOptions.uniform(cfg, routing))
        rows.append({"variant": name, "stack": stack, "top_k": routing.top_k, "top_p": p,
                     "target_experts": target, **m})
    talker_ks = knobs["talker_top_k"]
    if talker_ks and ctx.cfg.has_talker:
        from omni_jax.experiments.talker_eval import TalkerEval

        tev = TalkerEval.build(ctx, knobs["talker_prompts"], knobs["talker_frames"])
        tcfg = ctx.cfg.talker.text
        tbase = RoutingConfig.from_text_config(tcfg)
        tvariants = [(f"talker top-{tcfg.top_k} (reference)", tbase)]
        tvariants += [(f"talker top-{k}", tbase.replace(top_k=k)) for k in talker_ks
                      if k != tcfg.top_k and 1 <= k <= tcfg.num_experts]
        for name, routing in ctx.progress(tvariants, desc="talker variants"):
            m = tev.evaluate(StackOptions.uniform(tcfg, routing))
            rows.append({"variant": name, "stack": "talker", "top_k": routing.top_k, "top_p": None,
                         "target_experts": routing.top_k, **m})
    plot(ctx, rows)
    return rows


def plot(ctx, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for stack, marker in (("thinker", "o"), ("talker", "s")):
        for family, style in (("top-k", "-"), ("top-p", "--")):
            sel = [r for r in rows if r["stack"] == stack and (r["top_p"] is not None) == (family == "top-p")]
            if not sel:
                continue
            sel.sort(key=lambda r: r["experts_per_token"])
            x = [r["experts_per_token"] for r in sel]
            label = f"{stack} {family}"
            axes[0].plot(x, [r["kl_to_reference"] for r in sel], style, marker=marker, label=label)
            axes[1].plot(x, [r["greedy_agreement"] for r in sel], style, marker=marker, label=label)
            axes[2].plot(x, [r.get("ms_per_token_decode", r.get("ms_per_frame_decode", float("nan")))
                             for r in sel], style, marker=marker, label=label)
    for ax, title in zip(axes, ("KL to reference (nats/token)", "greedy agreement", "decode ms / token (frame)")):
        ax.set_xlabel("experts per token (measured)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ctx.save_figure(fig, "routing_sweep")
