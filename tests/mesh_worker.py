"""Run in a subprocess with 8 simulated CPU devices: load the tiny checkpoint onto each mesh and generate.

argv: converted_dir hf_dir media_dir. A text + image + audio prompt with speech, greedy: the single-device
run, then one load per mesh (the HF directory and the converted one alternate, both placing every weight by
its logical axes) and the same generation. Prints one JSON line with what the test checks.
"""

import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import omni_jax  # noqa: E402
from multimodal_helpers import write_audio, write_image  # noqa: E402
from omni_jax.generation.talker_engine import TalkerSampling  # noqa: E402
from omni_jax.processing.chat import build_messages  # noqa: E402
from omni_jax.sharding import weight_devices  # noqa: E402
from omni_jax.weights.mapping import flatten  # noqa: E402

MESHES = ("expert=8", "fsdp=8", "fsdp=2,expert=4", "tensor=2,expert=4", "data=2,fsdp=2,expert=2")
# one weight per component: each must be split over every weight-sharding device of the mesh
PROBES = ("thinker.text.layers.mlp.gate_up", "thinker.text.layers.attn.q_proj", "thinker.text.lm_head",
          "thinker.visual.blocks.mlp.fc1.w", "thinker.audio.layers.fc1.w", "talker.layers.mlp.down",
          "talker.code_predictor.layers.gate_up", "code2wav.layers.q")


def main(converted: str, hf_dir: str, media_dir: str):
    img = write_image(os.path.join(media_dir, "m.png"), 64, 96, 0)
    aud = write_audio(os.path.join(media_dir, "m.wav"), 1.5, 16000, 0)
    msgs = build_messages("What do you see and hear?", images=[str(img)], audios=[str(aud)])
    kw = dict(max_new_tokens=4, talker_sampling=TalkerSampling.greedy(), max_speech_frames=3)
    t0 = time.perf_counter()
    single = omni_jax.load(converted)
    ref = single.generate(msgs, **kw)
    ref_flat = flatten(single.params)
    out = {"devices": len(jax.devices()), "ref_tokens": ref.token_ids, "ref_frames": len(ref.codec_codes),
           "seconds": {"single": time.perf_counter() - t0}, "meshes": {}}
    for i, spec in enumerate(MESHES):
        t0 = time.perf_counter()
        model = omni_jax.load(hf_dir if i % 2 else converted, mesh=spec)
        flat = flatten(model.params)
        res = model.generate(msgs, **kw)
        n = weight_devices(model.mesh)
        out["meshes"][spec] = {
            "source": "hf" if i % 2 else "converted",
            "params_equal": all(np.array_equal(np.asarray(flat[k]), np.asarray(ref_flat[k])) for k in ref_flat),
            "split_n_ways": {p: flat[p].size // flat[p].addressable_shards[0].data.size == n for p in PROBES},
            "weight_devices": n,
            "tokens_equal": res.token_ids == ref.token_ids,
            "codes_equal": bool(np.array_equal(res.codec_codes, ref.codec_codes)),
            "wav_corr": float(np.corrcoef(res.wav, ref.wav)[0, 1]),
            "wav_max_diff": float(np.max(np.abs(res.wav - ref.wav))),
        }
        out["seconds"][spec] = time.perf_counter() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
