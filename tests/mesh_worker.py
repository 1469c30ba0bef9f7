"""Run in a subprocess with 8 simulated CPU devices: load the tiny checkpoint onto meshes and generate.

argv: converted_dir hf_dir image audio [--reference] MESH... . A text + image + audio prompt with speech,
greedy: with ``--reference`` the single-device run, then one load per mesh (the HF directory and the converted
one alternate, both placing every weight by its logical axes; compared bit for bit with the single-device
load) and the same generation. Prints one JSON line per run ({"run", "token_ids", "codec_codes", "wav", ...}).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

import omni_jax  # noqa: E402
from omni_jax.generation.talker_engine import TalkerSampling  # noqa: E402
from omni_jax.processing.chat import build_messages  # noqa: E402
from omni_jax.sharding import weight_devices  # noqa: E402
from omni_jax.weights.mapping import flatten  # noqa: E402

PROMPT = "What do you see and hear?"
NEW_TOKENS, SPEECH_FRAMES = 4, 3
# one weight per component: each must be split over every weight-sharding device of the mesh
PROBES = ("thinker.text.layers.mlp.gate_up", "thinker.text.layers.attn.q_proj", "thinker.text.lm_head",
          "thinker.visual.blocks.mlp.fc1.w", "thinker.audio.layers.fc1.w", "talker.layers.mlp.down",
          "talker.code_predictor.layers.gate_up", "code2wav.layers.q")


def result(run: str, res, **extra) -> dict:
    return dict(run=run, token_ids=res.token_ids, codec_codes=np.asarray(res.codec_codes).tolist(),
                wav=np.asarray(res.wav, np.float64).round(6).tolist(), **extra)


def main(converted: str, hf_dir: str, image: str, audio: str, *runs: str):
    msgs = build_messages(PROMPT, images=[image], audios=[audio])
    kw = dict(max_new_tokens=NEW_TOKENS, talker_sampling=TalkerSampling.greedy(), max_speech_frames=SPEECH_FRAMES)
    single = omni_jax.load(converted)
    ref_flat = {k: np.asarray(v) for k, v in flatten(single.params).items()}
    for i, run in enumerate(runs):
        if run == "--reference":
            print(json.dumps(result("single", single.generate(msgs, **kw))), flush=True)
            continue
        model = omni_jax.load(hf_dir if i % 2 else converted, mesh=run)
        flat = flatten(model.params)
        n = weight_devices(model.mesh)
        extra = dict(source="hf" if i % 2 else "converted", weight_devices=n,
                     params_equal=all(np.array_equal(np.asarray(flat[k]), ref_flat[k]) for k in ref_flat),
                     split_n_ways={p: flat[p].size // flat[p].addressable_shards[0].data.size == n for p in PROBES})
        print(json.dumps(result(run, model.generate(msgs, **kw), **extra)), flush=True)

if __name__ == "__main__":
    main(*sys.argv[1:])
