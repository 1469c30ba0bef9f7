"""Ahead-of-time memory plan of the real model on a device mesh: nothing is allocated, nothing is loaded.

    python -m omni_jax.plan --mesh fsdp=8,expert=8 --dtype bfloat16 [--batch B] [--context N]
                            [--hardware h100-80g|h200-141g|tpu-v5e:4x4|tpu-v5p:4x4x4|tpu-v6e:8x8|...] [--json]

The model is built abstractly (shapes, dtypes and each parameter's declared logical axes), placed on the
mesh by ``omni_jax.sharding.RULES``, and the programs a generation runs are compiled ahead of time on that
mesh: the Thinker prefill (``--prefill`` tokens into a ``--context`` cache), the Thinker decode step (with
the Talker's hidden-state tap), the Talker frame step (code predictor + one Talker token) and the two
encoders (one ``--image-size`` square image, ``--audio-seconds`` of audio). Per device it reports the
parameter bytes, the KV-cache bytes (Thinker + Talker caches, created sharded), each program's compiled
temporary bytes (``compiled.memory_analysis()``), the total (parameters + caches + the largest temporary:
the programs run one at a time) and whether it fits the hardware's usable memory.

Compilers: a TPU target (``tpu-GEN:TOPOLOGY``) is compiled by the TPU compiler itself for that topology
(``jax.experimental.topologies``; needs ``libtpu``, the ``omni_jax[tpu]`` extra, or a folder made with
``pip install --target DIR "libtpu==0.0.42.*"`` named by ``OMNI_JAX_LIBTPU_DIR``). Anything else compiles on
simulated CPU devices (set up here: no XLA_FLAGS needed); the temporaries are then the CPU compiler's
estimate. With ``--hardware`` and no ``--mesh`` the smallest mesh that fits is searched (``expert=N``, N a
power of two, up to the hardware's device count). ``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from omni_jax.errors import UsageError, one_line

GIB = 1 << 30
PROGRAMS = ("thinker_prefill", "thinker_decode", "talker_step", "vision", "audio")


class PlanError(UsageError):
    """A planner flag that cannot be used (unknown hardware, bad sizes, no TPU compiler installed)."""


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    platform: str  # "gpu" | "tpu"
    bytes_per_device: int
    usable_fraction: float  # what XLA can use for buffers (runtime, CUDA context and fragmentation aside)
    topology: str | None = None  # TPU topology name ("v5e:4x4"); its chips are the devices
    max_devices: int = 64

    @property
    def usable_bytes(self) -> int:
        return int(self.bytes_per_device * self.usable_fraction)


GPUS = {  # bytes per device as the driver reports them
    "h100-80g": 81559 << 20,
    "h200-141g": 143771 << 20,
    "a100-80g": 81920 << 20,
    "a100-40g": 40960 << 20,
}
TPU_HBM = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
GPU_USABLE, TPU_USABLE = 0.90, 0.95


def hardware(name: str) -> Hardware:
    if name in GPUS:
        return Hardware(name, "gpu", GPUS[name], GPU_USABLE)
    if name.startswith("tpu-") and ":" in name:
        gen, topo = name[4:].split(":", 1)
        dims = topo.split("x")
        if gen in TPU_HBM and len(dims) in (2, 3) and all(d.isdigit() and int(d) > 0 for d in dims):
            return Hardware(name, "tpu", TPU_HBM[gen], TPU_USABLE, topology=f"{gen}:{topo}",
                            max_devices=math.prod(int(d) for d in dims))
    known = ", ".join(list(GPUS) + [f"tpu-{g}:AxB[xC]" for g in TPU_HBM])
    raise PlanError(f"--hardware {name!r}: unknown (known: {known})")


# ------------------------------------------------------------------------------------------- devices

def _libtpu_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("libtpu") is not None:
        return True
    extra = os.environ.get("OMNI_JAX_LIBTPU_DIR") or str(Path(__file__).resolve().parents[1] / ".venv" /
                                                         "extra-libtpu")
    if Path(extra, "libtpu").is_dir():
        sys.path.insert(0, extra)
        return True
    return False


def setup_devices(hw: Hardware | None, n_cpu: int):
    """The devices to compile for: a TPU topology's chips, or ``n_cpu`` simulated CPU devices. Must run before
    anything else touches a JAX backend."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    if hw is not None and hw.platform == "tpu":
        if not _libtpu_available():
            raise PlanError(f"--hardware {hw.name}: the TPU compiler (libtpu) is not installed: pip install "
                            f"'omni_jax[tpu]', or pip install --target DIR 'libtpu==0.0.42.*' and set "
                            f"OMNI_JAX_LIBTPU_DIR=DIR")
        from jax.experimental import topologies

        topo = topologies.get_topology_desc(platform="tpu", topology_name=hw.topology)
        return list(topo.devices), "tpu"
    jax.config.update("jax_num_cpu_devices", n_cpu)
    return list(jax.devices()), "cpu-simulated"


# ------------------------------------------------------------------------------------------- programs

def _config(layers: int | None):
    from omni_jax.config import OmniConfig

    cfg = OmniConfig.real()
    if layers is None:
        return cfg
    tap = min(cfg.talker.accept_hidden_layer, layers // 2 + 1)  # the Talker's tap stays inside the stack
    text = dataclasses.replace(cfg.thinker.text, num_layers=layers)
    talker_text = dataclasses.replace(cfg.talker.text, num_layers=min(layers, cfg.talker.text.num_layers))
    return dataclasses.replace(cfg, thinker=dataclasses.replace(cfg.thinker, text=text),
                               talker=dataclasses.replace(cfg.talker, text=talker_text, accept_hidden_layer=tap))


def _abstract(info: dict, mesh, dtype) -> dict:
    """Nested dict of ShapeDtypeStruct placed by the declared axes (what the programs take as params)."""
    import jax

    from omni_jax.sharding import logical_sharding
    from omni_jax.weights.mapping import unflatten

    return unflatten({p: jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(axes, shape, mesh, name=p))
                      for p, (shape, axes) in info.items()})


def _cache(text_cfg, batch: int, size: int, dtype, mesh):
    import jax
    import jax.numpy as jnp

    from omni_jax.models.decoder import KVCache
    from omni_jax.sharding import KV_CACHE_AXES, logical_sharding

    shape = (text_cfg.num_layers, batch, size, text_cfg.num_kv_heads, text_cfg.head_dim)
    kv = jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(KV_CACHE_AXES, shape, mesh))
    valid = jax.ShapeDtypeStruct((batch, size), jnp.bool_,
                                 sharding=logical_sharding(("batch", None), (batch, size), mesh))
    length = jax.ShapeDtypeStruct((), jnp.int32, sharding=logical_sharding((), (), mesh))
    return KVCache(kv, kv, valid, length)


def _cache_bytes(cache, mesh) -> int:
    """Bytes of the cache's arrays one device holds."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(cache):
        spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
        n = 1
        for dim, entry in zip(leaf.shape, spec):
            names = () if entry is None else (entry,) if isinstance(entry, str) else entry
            n *= -(-dim // math.prod(mesh.shape[a] for a in names))
        total += n * leaf.dtype.itemsize
    return total


def _act(shape, dtype, mesh, batch_dim: int | None = 0):
    """An abstract activation, its batch dimension split where the mesh divides it."""
    import jax

    from omni_jax.sharding import logical_sharding

    axes = tuple("batch" if d == batch_dim else None for d in range(len(shape)))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(axes, shape, mesh))


def programs(cfg, mesh, dtype, batch: int, context: int, prefill: int, image_size: int, audio_seconds: float):
    """{name: (function, abstract args, donated arg indexes)} of what a generation compiles."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from omni_jax.models import code_predictor as cp
    from omni_jax.models import thinker_text
    from omni_jax.models.audio_encoder import audio_encoder_forward
    from omni_jax.models.decoder import StackOptions
    from omni_jax.models.omni import model_param_info
    from omni_jax.models.talker import talker_forward
    from omni_jax.models.vision import vision_forward

    info = model_param_info(cfg, dtype)
    params = _abstract(info, mesh, dtype)
    tc, kc = cfg.thinker.text, cfg.talker.text
    taps = (cfg.talker.accept_hidden_layer - 1,)
    t_opts, k_opts = StackOptions.uniform(tc, taps=taps), StackOptions.uniform(kc)
    B, H = batch, tc.hidden_size
    t_cache, k_cache = _cache(tc, B, context, dtype, mesh), _cache(kc, B, context, dtype, mesh)
    f32 = jnp.float32

    def thinker_prefill(p, embeds, deepstack, position_ids, mask, cache):
        out = thinker_text.text_forward(p, tc, t_opts, embeds, position_ids, mask, cache=cache, deepstack=deepstack,
                                        logits_at="last")
        return out["logits"][:, -1], out["cache"], out["hidden_states"]

    def thinker_decode(p, tokens, positions, cache):
        emb = thinker_text.embed_tokens(p, tokens[:, None])
        pos = jnp.broadcast_to(positions[None, :, None], (3, tokens.shape[0], 1))
        out = thinker_text.text_forward(p, tc, t_opts, emb, pos, jnp.ones((tokens.shape[0], 1), jnp.int32),
                                        cache=cache, logits_at="last")
        return jnp.argmax(out["logits"][:, -1], -1), out["cache"], out["hidden_states"]

    def talker_step(p, c0, past_hidden, text, positions, cache):
        c0_embed = p["codec_embedding"][c0]
        frame = cp.predict_codes(p["code_predictor"], past_hidden, c0_embed, jax.random.key(0),
                                 cfg.talker.code_predictor)
        x = (c0_embed.astype(f32) + frame["embed_sum"].astype(f32) + text.astype(f32)).astype(past_hidden.dtype)
        pos = jnp.broadcast_to(positions[None, :, None], (3, c0.shape[0], 1))
        out = talker_forward(p, cfg.talker, k_opts, x[:, None], pos, jnp.ones((c0.shape[0], 1), jnp.int32),
                             cache=cache, logits_at="last")
        return frame["codes"], jnp.argmax(out["logits"][:, -1], -1), out["hidden"][:, -1], out["cache"]

    vc = cfg.thinker.vision
    side = max(1, image_size // (vc.patch_size * vc.spatial_merge_size)) * vc.spatial_merge_size
    grids = ((1, side, side),)
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2

    def vision(p, pixels):
        return vision_forward(p, pixels, grids, vc, dtype)

    ac = cfg.thinker.audio
    frames = int(audio_seconds * 100)  # 10 ms mel hop

    def audio(p, features, counts):
        return audio_encoder_forward(p, features, counts, ac, dtype)

    tp, kp = params["thinker"]["text"], params["talker"]
    return {
        "thinker_prefill": (thinker_prefill, (tp, _act((B, prefill, H), dtype, mesh),
                                              _act((len(cfg.thinker.vision.deepstack_visual_indexes), B, prefill, H),
                                                   dtype, mesh, 1),
                                              _act((3, B, prefill), f32, mesh, 1), _act((B, prefill), jnp.int32, mesh),
                                              t_cache), (5,)),
        "thinker_decode": (thinker_decode, (tp, _act((B,), jnp.int32, mesh), _act((B,), f32, mesh), t_cache), (3,)),
        "talker_step": (talker_step, (kp, _act((B,), jnp.int32, mesh), _act((B, kc.hidden_size), dtype, mesh),
                                      _act((B, kc.hidden_size), dtype, mesh), _act((B,), f32, mesh), k_cache), (5,)),
        "vision": (vision, (params["thinker"]["visual"], _act((side * side, patch_dim), dtype, mesh, None)), ()),
        "audio": (audio, (params["thinker"]["audio"], _act((1, ac.num_mel_bins, frames), dtype, mesh),
                          _act((1,), jnp.int32, mesh)), ()),
    }, info, (t_cache, k_cache), np.dtype(dtype)


def compile_temp_bytes(fn, args, donate, mesh) -> tuple[int, float]:
    """(compiled temporary bytes per device, seconds to compile) of ``fn`` on ``args`` under ``mesh``."""
    import jax

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    mem = compiled.memory_analysis()
    return int(mem.temp_size_in_bytes), time.perf_counter() - t0


def plan(mesh_spec: str, dtype_name: str, batch: int, context: int, prefill: int, hw: Hardware | None,
         devices, compiler: str, layers: int | None = None, image_size: int = 448, audio_seconds: float = 30.0,
         only: tuple[str, ...] | None = None) -> dict:
    import jax.numpy as jnp

    from omni_jax.sharding import make_mesh, mesh_sizes, per_device_bytes

    cfg = _config(layers)
    mesh = make_mesh(mesh_spec, devices)
    dtype = jnp.dtype(dtype_name)
    progs, info, caches, np_dtype = programs(cfg, mesh, dtype, batch, context, prefill, image_size, audio_seconds)
    params_bytes = per_device_bytes(info, mesh, np_dtype.itemsize)
    kv_bytes = sum(_cache_bytes(c, mesh) for c in caches)
    # XLA:CPU upcasts bf16 matmul operands to f32 whole (a [layers, experts, ...] stack at a time), which no GPU
    # compiler does: for simulated GPUs the bf16 temporaries are the f32 program's, halved
    halve = compiler == "cpu-simulated" and dtype.itemsize == 2
    if halve:
        progs = programs(cfg, mesh, jnp.float32, batch, context, prefill, image_size, audio_seconds)[0]
    temps, seconds = {}, {}
    for name, (fn, args, donate) in progs.items():
        if only is not None and name not in only:
            continue
        temps[name], seconds[name] = compile_temp_bytes(fn, args, donate, mesh)
        if halve:
            temps[name] //= 2
    total = params_bytes + kv_bytes + max(temps.values(), default=0)
    out = {"mesh": {a: s for a, s in mesh_sizes(mesh_spec).items() if s > 1} or {"data": 1},
           "devices": int(math.prod(mesh.shape.values())), "dtype": dtype_name, "compiler": compiler,
           "batch": batch, "context": context, "prefill": prefill,
           "thinker_layers": cfg.thinker.text.num_layers,
           "temp_method": "float32 compile halved" if halve else "compiled",
           "per_device": {"params_bytes": params_bytes, "kv_cache_bytes": kv_bytes, "temp_bytes": temps,
                          "total_bytes": total},
           "model_param_bytes": sum(math.prod(s) for s, _ in info.values()) * np_dtype.itemsize,
           "compile_seconds": seconds,
           "hardware": hw.name if hw else None, "usable_bytes": hw.usable_bytes if hw else None,
           "fits": (total <= hw.usable_bytes) if hw else None}
    return out


def _estimate(mesh_spec: str, dtype_name: str, batch: int, context: int, layers: int | None) -> int:
    """Parameters + caches per device without compiling (to skip meshes that cannot fit)."""
    import jax.numpy as jnp
    from jax.sharding import AbstractMesh, AxisType

    from omni_jax.models.omni import model_param_info
    from omni_jax.sharding import KV_CACHE_AXES, mesh_sizes, per_device_bytes

    cfg = _config(layers)
    sizes = mesh_sizes(mesh_spec)
    mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))
    itemsize = jnp.dtype(dtype_name).itemsize
    total = per_device_bytes(model_param_info(cfg, jnp.dtype(dtype_name)), mesh, itemsize)
    for tc in (cfg.thinker.text, cfg.talker.text):
        shape = (tc.num_layers, batch, context, tc.num_kv_heads, tc.head_dim)
        total += 2 * per_device_bytes({"kv": (shape, KV_CACHE_AXES)}, mesh, itemsize)
    return total


def suggest(hw: Hardware, dtype_name: str, batch: int, context: int, prefill: int, devices, compiler: str,
            layers: int | None, **kw) -> dict:
    """The plan of the smallest ``expert=N`` mesh (N = 1, 2, 4, ...) that fits ``hw``."""
    n = 1
    while n <= min(hw.max_devices, len(devices)):
        spec = f"expert={n}" if n > 1 else "data=1"
        if _estimate(spec, dtype_name, batch, context, layers) <= hw.usable_bytes:
            out = plan(spec, dtype_name, batch, context, prefill, hw, devices, compiler, layers, **kw)
            if out["fits"]:
                out["suggested"] = True
                return out
        n *= 2
    raise PlanError(f"--hardware {hw.name}: no expert=N mesh of up to {min(hw.max_devices, len(devices))} devices "
                    f"fits {dtype_name} at batch {batch}, context {context}")


def _parse(argv):
    from omni_jax.sharding import parse_mesh_spec

    ap = argparse.ArgumentParser(prog="python -m omni_jax.plan", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[4:]))
    ap.add_argument("--mesh", help="mesh spec, e.g. fsdp=8,expert=8 (axes data, fsdp, tensor, expert)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=4096, help="KV-cache slots (Thinker and Talker)")
    ap.add_argument("--prefill", type=int, default=2048, help="tokens of the Thinker prefill")
    ap.add_argument("--hardware", help=f"{', '.join(GPUS)}, tpu-GEN:TOPOLOGY ({', '.join(TPU_HBM)}); usable memory: "
                                       f"{GPU_USABLE:.0%} (GPU) / {TPU_USABLE:.0%} (TPU) of the device's")
    ap.add_argument("--layers", type=int, help="Thinker / Talker depth (reduced-depth plans; default: the real model)")
    ap.add_argument("--image-size", type=int, default=448, help="side of the square image the vision program encodes")
    ap.add_argument("--audio-seconds", type=float, default=30.0)
    ap.add_argument("--programs", default=",".join(PROGRAMS),
                    help=f"comma-separated subset of {', '.join(PROGRAMS)} to compile (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    args.programs = tuple(p.strip() for p in args.programs.split(",") if p.strip())
    unknown = [p for p in args.programs if p not in PROGRAMS]
    if unknown or not args.programs:
        raise PlanError(f"--programs {','.join(args.programs)!r}: choose from {', '.join(PROGRAMS)}")
    for flag in ("batch", "context", "prefill", "image_size"):
        if getattr(args, flag) < 1:
            raise PlanError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.prefill > args.context:
        raise PlanError(f"--prefill {args.prefill}: larger than --context {args.context}")
    if args.layers is not None and args.layers < 2:
        raise PlanError(f"--layers {args.layers}: must be at least 2")
    if args.audio_seconds <= 0:
        raise PlanError(f"--audio-seconds {args.audio_seconds}: must be positive")
    if args.mesh is None and args.hardware is None:
        raise PlanError("give --mesh, or --hardware to have the smallest mesh that fits suggested")
    if args.mesh is not None:
        parse_mesh_spec(args.mesh)
    return args


def _print(out: dict):
    pd = out["per_device"]
    mesh = ",".join(f"{a}={s}" for a, s in out["mesh"].items())
    note = ""
    if out["compiler"] == "cpu-simulated":
        note = " (temporaries: the CPU compiler's estimate"
        if out["temp_method"] != "compiled":
            note += "; its float32 figures halved, as XLA:CPU upcasts bf16 operands to f32 whole"
        note += ")"
    print(f"{'suggested ' if out.get('suggested') else ''}mesh {mesh} ({out['devices']} devices), {out['dtype']}, "
          f"batch {out['batch']}, context {out['context']}, prefill {out['prefill']}, "
          f"{out['thinker_layers']} Thinker layers; compiler: {out['compiler']}{note}")
    print(f"  model parameters      {out['model_param_bytes'] / GIB:9.2f} GiB in all")
    print(f"  per device: params    {pd['params_bytes'] / GIB:9.2f} GiB")
    print(f"              KV caches {pd['kv_cache_bytes'] / GIB:9.2f} GiB")
    for name, b in pd["temp_bytes"].items():
        print(f"              temp {name:<16} {b / GIB:6.2f} GiB  (compiled in {out['compile_seconds'][name]:.1f} s)")
    print(f"              total     {pd['total_bytes'] / GIB:9.2f} GiB")
    if out["hardware"]:
        verdict = "fits" if out["fits"] else "does NOT fit"
        print(f"  {out['hardware']}: {out['usable_bytes'] / GIB:.2f} GiB usable per device -> {verdict}")


def main(argv=None) -> int:
    try:
        args = _parse(argv)
        hw = hardware(args.hardware) if args.hardware else None
        from omni_jax.sharding import mesh_sizes

        n = math.prod(mesh_sizes(args.mesh).values()) if args.mesh else (hw.max_devices if hw.platform == "gpu"
                                                                          else 1)
        if args.mesh:  # a size that does not divide a weight is named before any device is set up
            import jax.numpy as jnp

            from omni_jax.models.omni import model_param_info
            from omni_jax.sharding import check_fits

            check_fits(model_param_info(_config(args.layers), jnp.dtype(args.dtype)), args.mesh)
        devices, compiler = setup_devices(hw, n)
        if args.mesh and n > len(devices):
            raise PlanError(f"--mesh {args.mesh}: needs {n} devices, the target has {len(devices)}")
        kw = dict(image_size=args.image_size, audio_seconds=args.audio_seconds, only=args.programs)
        if args.mesh:
            out = plan(args.mesh, args.dtype, args.batch, args.context, args.prefill, hw, devices, compiler,
                       args.layers, **kw)
        else:
            out = suggest(hw, args.dtype, args.batch, args.context, args.prefill, devices, compiler, args.layers, **kw)
    except UsageError as e:
        print(f"python -m omni_jax.plan: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    _print(out)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
