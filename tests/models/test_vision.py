"""VisionEncoder against HF ``model.thinker.model.visual`` on the tiny random checkpoint.

fp32 tolerance 1e-4 max abs (outputs are O(1); what is reached is printed with -s and is ~1e-6). A deliberately
broken encoder (full attention across a video's frames; deepstack taken after the wrong blocks) must miss
the reference by > 100x the tolerance. bf16: ours vs HF's bf16 run, both compared with the fp32 reference:
our bf16 error must be within 2x HF's own bf16 error (plus 1e-2 absolute slack).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from vision_helpers import fill_from_hf

from hf_fixtures import build_hf_model, tiny_config_dict
from omni_jax.config import OmniConfig
from omni_jax.models.common import pure_params
from omni_jax.models.vision import VisionEncoder, hf_rules, normalize_grids, vision_forward

TOL = 1e-4
CASES = {
    "one_image": [(1, 6, 8)],
    "two_images": [(1, 4, 6), (1, 10, 4)],
    "video_odd_grid": [(3, 6, 10)],
    "image_and_video": [(1, 2, 2), (2, 6, 10)],
}


@pytest.fixture(scope="module")
def hf_visual():
    torch.manual_seed(0)
    model = build_hf_model(tiny_config_dict(), seed=0)
    return model.thinker.model.visual


@pytest.fixture(scope="module")
def cfg():
    return OmniConfig.from_hf(tiny_config_dict()).thinker.vision


@pytest.fixture(scope="module")
def encoder(cfg, hf_visual):
    enc = VisionEncoder(cfg, nnx.Rngs(0))
    fill_from_hf(enc, hf_rules(cfg), {k: v.detach().numpy() for k, v in hf_visual.state_dict().items()})
    return enc


def pixels_for(grids, seed=0, dtype=np.float32):
    n = sum(t * h * w for t, h, w in grids)
    return np.random.default_rng(seed).standard_normal((n, 1536)).astype(dtype)


def hf_run(visual, pixels, grids):
    with torch.no_grad():
        out = visual(torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels,
                     grid_thw=torch.tensor(grids))
    return out.pooler_output.float().numpy(), [d.float().numpy() for d in out.deepstack_features]


def max_err(ours, ref):
    embeds, deep = ours
    rembeds, rdeep = ref
    assert len(deep) == len(rdeep)
    return max([float(np.abs(np.asarray(embeds, np.float32) - rembeds).max())]
               + [float(np.abs(np.asarray(d, np.float32) - r).max()) for d, r in zip(deep, rdeep)])


def test_rules_cover_every_hf_tensor_once(cfg, hf_visual, tiny_ckpt):
    import json

    rules = hf_rules(cfg)
    names = list(hf_visual.state_dict())
    on_disk = [k[len("thinker.visual."):]
               for k in json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())["weight_map"]
               if k.startswith("thinker.visual.")] if (tiny_ckpt / "model.safetensors.index.json").exists() else None
    if on_disk is None:
        from safetensors import safe_open

        with safe_open(str(tiny_ckpt / "model.safetensors"), "np") as f:
            on_disk = [k[len("thinker.visual."):] for k in f.keys() if k.startswith("thinker.visual.")]
    assert sorted(on_disk) == sorted(names)
    for name in names:
        assert sum(r.match(name) is not None for r in rules) == 1, name
    enumerated = [n for r in rules for n, _ in r.names()]
    assert sorted(enumerated) == sorted(names)
    enc = VisionEncoder(cfg, nnx.Rngs(0))
    flat = jax.tree_util.tree_flatten_with_path(pure_params(enc))[0]
    param_paths = {".".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat}
    assert param_paths == {r.param for r in rules}
    # to_hf inverts to_param (export)
    sd = hf_visual.state_dict()
    for r in rules:
        name = next(iter(r.names()))[0]
        a = sd[name].numpy()
        np.testing.assert_array_equal(r.to_hf(r.to_param(a)), a)


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_parity(encoder, hf_visual, case):
    grids = CASES[case]
    pixels = pixels_for(grids)
    ours = encoder(jnp.asarray(pixels), grids)
    ref = hf_run(hf_visual, pixels, grids)
    n_tokens = sum(t * h * w for t, h, w in grids) // 4
    assert ours[0].shape == (n_tokens, 64) and len(ours[1]) == 3 and ours[1][0].shape == (n_tokens, 64)
    err = max_err(ours, ref)
    print(f"{case}: fp32 max abs err {err:.2e} (output scale {np.abs(ref[0]).max():.2f})")
    assert err < TOL


def test_broken_variants_miss_the_reference(encoder, hf_visual, cfg):
    grids = normalize_grids(CASES["image_and_video"])
    pixels = jnp.asarray(pixels_for(grids, seed=1))
    ref = hf_run(hf_visual, np.asarray(pixels), grids)
    params = pure_params(encoder)
    full = vision_forward(params, pixels, grids, cfg, full_attention=True)
    assert float(np.abs(np.asarray(full[0]) - ref[0]).max()) > 100 * TOL
    shifted = dataclasses.replace(cfg, deepstack_visual_indexes=(1, 2, 3))
    moved = vision_forward(params, pixels, grids, shifted)
    assert min(float(np.abs(np.asarray(d) - r).max()) for d, r in zip(moved[1], ref[1])) > 100 * TOL
    # and the real variant passes on the same input
    assert max_err(vision_forward(params, pixels, grids, cfg), ref) < TOL


def test_bf16_tracks_hf_bf16(encoder, hf_visual):
    import copy

    grids = CASES["image_and_video"]
    pixels = pixels_for(grids, seed=2)
    ref32 = hf_run(hf_visual, pixels, grids)
    hf16 = copy.deepcopy(hf_visual).to(torch.bfloat16)
    ref16 = hf_run(hf16, torch.from_numpy(pixels).to(torch.bfloat16), grids)
    ours16 = encoder(jnp.asarray(pixels, jnp.bfloat16), grids, dtype=jnp.bfloat16)
    assert ours16[0].dtype == jnp.bfloat16
    hf_err = max_err(ref16, ref32)
    our_err = max_err(ours16, ref32)
    vs_hf = max_err(ours16, ref16)
    print(f"bf16 max abs err vs fp32: ours {our_err:.3e}, HF {hf_err:.3e}; ours vs HF bf16 {vs_hf:.3e}")
    assert our_err <= 2 * hf_err + 1e-2
