"""Run in a subprocess with 8 simulated CPU devices: restore a converted checkpoint onto meshes and generate.

argv: converted_dir hf_dir. Prints one JSON line with what the test checks.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import omni_jax  # noqa: E402
from omni_jax.generation.talker_engine import TalkerSampling  # noqa: E402
from omni_jax.processing.chat import build_messages  # noqa: E402
from omni_jax.weights.mapping import flatten  # noqa: E402

converted, hf_dir = sys.argv[1], sys.argv[2]
msgs = build_messages("Tell me about experts")
kw = dict(max_new_tokens=5, talker_sampling=TalkerSampling.greedy(), max_speech_frames=4)
single = omni_jax.load(converted)
ref = single.generate(msgs, **kw)
ref_flat = flatten(single.params)
out = {"devices": len(jax.devices()), "meshes": {}}
for spec in ("data=1,expert=8", "data=2,expert=4"):
    model = omni_jax.load(converted, mesh=spec)
    flat = flatten(model.params)
    gate_up = model.params["thinker"]["text"]["layers"]["mlp"]["gate_up"]
    speech = spec == "data=1,expert=8"  # the second mesh checks placement and text only (time)
    res = model.generate(msgs, **kw) if speech else model.generate(msgs, speech=False, max_new_tokens=5)
    out["meshes"][spec] = {
        "params_equal": all(np.array_equal(np.asarray(flat[k]), np.asarray(ref_flat[k])) for k in ref_flat),
        "expert_shard_shape": list(gate_up.addressable_shards[0].data.shape),
        "expert_devices": len({s.device for s in gate_up.addressable_shards}),
        "router_replicated": model.params["thinker"]["text"]["layers"]["mlp"]["router"].sharding.is_fully_replicated,
        "tokens_equal": res.token_ids == ref.token_ids,
        "codes_equal": bool(np.array_equal(res.codec_codes, ref.codec_codes)) if speech else None,
        "wav_max_diff": float(np.max(np.abs(res.wav - ref.wav))) if speech else None,
    }
hf_mesh = omni_jax.load(hf_dir, mesh="data=1,expert=8")  # an HF directory goes through the host, same result
hf_flat = flatten(hf_mesh.params)
out["hf_dir_params_equal"] = all(np.array_equal(np.asarray(hf_flat[k]), np.asarray(ref_flat[k])) for k in ref_flat)
out["hf_dir_expert_devices"] = len({s.device for s in hf_mesh.params["thinker"]["text"]["layers"]["mlp"]["gate_up"]
                                    .addressable_shards})
out["full_shape"] = list(gate_up.shape)
print(json.dumps(out))
