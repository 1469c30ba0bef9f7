"""``python -m omni_jax.bench soak [--calls 200] [--json]``: many consecutive generate calls in one process.

On the demo checkpoint: ``--calls`` calls of ``model.generate`` with text + speech, cycling through prompts
of one prompt-length bucket and a few seeds (sampled Thinker and Talker, so the seed matters). Reports:

- host memory: resident set size after every call, and its least-squares slope over the calls after the
  warm-up (MiB per 100 calls); a flat line means nothing accumulates per call;
- compilation: XLA backend compilations per call (JAX's ``backend_compile`` events); after the first call
  of the bucket there should be none;
- determinism: every (prompt, seed) pair is generated several times; the text, codec codes and waveform
  must be identical each time.

Not a timing benchmark: the numbers mean the same on a loaded machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PROMPTS = ["Describe the colour of the sea at dawn.", "Describe the sound of the rain at night.",
           "Describe the smell of fresh bread today.", "Describe the shape of the moon tonight.",
           "Describe the taste of cold water now.", "Describe the feel of warm sand here.",
           "Describe the look of the city at noon.", "Describe the noise of the train at dusk."]


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_per_100(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index, per 100 steps."""
    if len(values) < 2:
        return 0.0
    x = np.arange(len(values), dtype=np.float64)
    return float(np.polyfit(x, np.asarray(values, np.float64), 1)[0] * 100)


def fingerprint(result) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(result.token_ids).encode())
    for a in (result.codec_codes, result.wav):
        h.update(np.ascontiguousarray(a).tobytes() if a is not None else b"-")
    return h.hexdigest()[:16]


def main(argv: list[str]) -> dict:
    import jax

    import omni_jax
    from omni_jax.generation.sampling import SamplingConfig
    from omni_jax.generation.talker_engine import TalkerSampling

    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench soak", description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5, help="seeds cycled through (each prompt x seed repeats)")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--speech-frames", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=10, help="calls left out of the memory slope")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    compiles = [0]

    def on_event(name, seconds, **kw):
        if name == COMPILE_EVENT:
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    model = omni_jax.load(demo=True)
    conversations = [[{"role": "user", "content": [{"type": "text", "text": p}]}] for p in PROMPTS]
    lengths = {len(model.processor([c]).input_ids[0]) for c in conversations}  # padded: one bucket
    thinker = SamplingConfig(do_sample=True, temperature=0.9, top_p=0.95)
    seen: dict[tuple[int, int], str] = {}
    mismatches, rss, compiles_per_call, seconds = [], [], [], []
    for i in range(args.calls):
        p, s = i % len(PROMPTS), (i // len(PROMPTS)) % args.seeds
        before = compiles[0]
        t0 = time.perf_counter()
        out = model.generate(conversations[p], max_new_tokens=args.max_new_tokens, thinker_sampling=thinker,
                             talker_sampling=TalkerSampling(), seed=s, max_speech_frames=args.speech_frames)
        seconds.append(time.perf_counter() - t0)
        compiles_per_call.append(compiles[0] - before)
        rss.append(rss_mib())
        fp = fingerprint(out)
        if seen.setdefault((p, s), fp) != fp:
            mismatches.append({"call": i, "prompt": p, "seed": s})
        if i % 20 == 0 or i == args.calls - 1:
            print(f"call {i + 1:4d}/{args.calls}: rss {rss[-1]:8.1f} MiB, compiles {compiles_per_call[-1]:3d}, "
                  f"{seconds[-1]:5.2f} s, frames {0 if out.codec_codes is None else len(out.codec_codes)}",
                  flush=True)
    late = [i for i, c in enumerate(compiles_per_call) if i > 0 and c]
    repeats = args.calls - len(seen)
    result = {
        "benchmark": "soak", "calls": args.calls, "prompt_buckets": sorted(lengths),
        "distinct_prompt_seed_pairs": len(seen), "repeated_calls_compared": repeats,
        "output_mismatches": mismatches,
        "compiles_first_call": compiles_per_call[0], "calls_compiling_after_the_first": late,
        "compiles_after_the_first": int(sum(compiles_per_call[1:])),
        "rss_mib_first": round(rss[0], 1), "rss_mib_after_warmup": round(rss[min(args.warmup, len(rss) - 1)], 1),
        "rss_mib_last": round(rss[-1], 1),
        "rss_slope_mib_per_100_calls": round(slope_per_100(rss[args.warmup:]), 2),
        "median_call_s": round(float(np.median(seconds)), 3),
    }
    print(f"\nprompt bucket(s) (padded prompt length): {result['prompt_buckets']}")
    print(f"compiles: {result['compiles_first_call']} in the first call, {result['compiles_after_the_first']} after "
          f"it (calls compiling later: {late or 'none'})")
    print(f"host RSS: {result['rss_mib_first']} MiB after call 1, {result['rss_mib_after_warmup']} after call "
          f"{args.warmup + 1}, {result['rss_mib_last']} at the end; slope after the warm-up "
          f"{result['rss_slope_mib_per_100_calls']} MiB per 100 calls")
    print(f"determinism: {repeats} repeated (prompt, seed) calls compared, {len(mismatches)} differed")
    if args.json:
        print(json.dumps(result))
    return result
