"""Routing from every entry point, and the persistent compilation cache.

One CLI command (Thinker and Talker routed to top-4, a compilation cache in a tmp dir) is run twice in fresh
processes: the second compiles nothing (JAX's backend-compile events, counted by the CLI and reported in
``--json``) and gives the same output. The API with the same ``RoutingConfig`` gives the CLI's tokens, codes and
waveform; top-8 gives other ones; the fused program gives the same with the same router counts. Bad routing
arguments are one-line usage errors (exit 2) naming the flag or file."""

import json
import subprocess
import sys

import numpy as np
import pytest

import omni_jax
from omni_jax.api import OmniModel
from omni_jax.generate import main
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.moe import RoutingConfig, RoutingError
from omni_jax.processing.chat import build_messages

PROMPT = "Say something about experts."
NEW, FRAMES = 5, 4


def cli(*args):
    return subprocess.run([sys.executable, "-m", "omni_jax.generate", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_cli_routing_equals_api_and_a_second_call_compiles_nothing(tiny_ckpt, tmp_path):
    stats = tmp_path / "router.json"
    args = ["--checkpoint", tiny_ckpt, "--prompt", PROMPT, "--greedy", "--max-new-tokens", NEW,
            "--max-speech-frames", FRAMES, "--wav-out", tmp_path / "out.wav", "--json", "--verbose",
            "--routing", "top_k=4,temperature=2.0", "--talker-routing", "top_k=4,temperature=2", "--router-stats", stats,
            "--compilation-cache", tmp_path / "jax_cache"]
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    one, two = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert one["compiled_programs"] > 0 and two["compiled_programs"] == 0, two
    assert two["compile_s"] == 0 and two["load_s"] >= 0
    assert "thinker_prefill" in first.stderr and "compiled" in first.stderr  # --verbose: the program table
    assert two["token_ids"] == one["token_ids"] and two["codec_codes"] == one["codec_codes"]

    model = omni_jax.load(tiny_ckpt)
    kw = dict(max_new_tokens=NEW, max_speech_frames=FRAMES, thinker_sampling=SamplingConfig.greedy(),
              talker_sampling=TalkerSampling.greedy())
    msgs = build_messages(PROMPT)
    # router temperature 2 spreads the routing weights: the experts past the 4th change the output (at
    # temperature 1 this tiny model's routing is so peaked that top-4 and top-8 pick the same tokens)
    top4 = model.generate(msgs, routing=RoutingConfig(top_k=4, temperature=2.0),
                          talker_routing=RoutingConfig(top_k=4, temperature=2.0), **kw)
    assert top4.token_ids == one["token_ids"]
    np.testing.assert_array_equal(top4.codec_codes, np.asarray(one["codec_codes"]))
    np.testing.assert_allclose(top4.wav, np.asarray(one["wav"], np.float32), atol=1e-5)  # the JSON rounds to 1e-6

    # the routing really changed: every token went to 4 experts per layer, in the Thinker and the Talker
    s = json.loads(stats.read_text())
    assert (np.asarray(s["prompt_counts"]).sum(-1) == s["prompt_tokens"] * 4).all()
    assert (np.asarray(s["generated_counts"]).sum(-1) == s["generated_tokens"] * 4).all()
    assert (np.asarray(s["talker_counts"]).sum(-1) == s["talker_frames"] * 4).all()
    np.testing.assert_array_equal(top4.router.prompt, s["prompt_counts"])
    np.testing.assert_array_equal(top4.router.talker, s["talker_counts"])

    top8 = model.generate(msgs, routing=RoutingConfig(top_k=8, temperature=2.0), speech=False, **kw)
    assert top8.token_ids[0] != top4.token_ids[0]

    fused = model.generate(msgs, routing={"top_k": 4, "temperature": 2.0}, fused=True,
                           talker_routing=[RoutingConfig(top_k=4, temperature=2.0)] * 2, **kw)
    assert fused.token_ids == top4.token_ids
    np.testing.assert_array_equal(fused.codec_codes, top4.codec_codes)
    np.testing.assert_array_equal(fused.router_counts, top4.router_counts)
    np.testing.assert_array_equal(fused.router.talker, top4.router.talker)


@pytest.mark.parametrize("extra, needle", [
    (("--routing", "topk=4"), "--routing: unknown routing key 'topk'"),
    (("--routing", "top_k=9"), "--routing: top_k 9 outside 1..num_experts=8"),
    (("--talker-routing", "top_k=[2,3,4]"), "--talker-routing: top_k has 3 values; a per-layer list needs one"),
    (("--routing", "temperature=hot"), "--routing: temperature must be a number"),
    (("--routing-config", "MISSING"), "missing.toml: cannot read the routing file"),
    (("--routing-config", "MALFORMED"), "bad.toml: not valid TOML"),
    (("--routing-config", "UNKNOWN"), "unknown.toml: unknown routing key 'thinker_topk'"),
])
def test_bad_routing_is_a_one_line_usage_error(tiny_ckpt, tmp_path, capsys, extra, needle):
    (tmp_path / "bad.toml").write_text("[routing\nthinker_top_k = 4\n")
    (tmp_path / "unknown.toml").write_text("[routing]\nthinker_topk = 4\n")
    files = {"MISSING": tmp_path / "missing.toml", "MALFORMED": tmp_path / "bad.toml",
             "UNKNOWN": tmp_path / "unknown.toml"}
    extra = [str(files.get(x, x)) for x in extra]
    code = main(["--checkpoint", str(tiny_ckpt), "--prompt", "hi", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_routing_file_and_flags_combine(tiny_ckpt, tmp_path):
    from types import SimpleNamespace

    from omni_jax.config import OmniConfig
    from omni_jax.generate import routing_options

    cfg = OmniConfig.from_file(tiny_ckpt)
    f = tmp_path / "routing.toml"
    f.write_text("[routing]\nthinker_top_k = [4, 4, 2, 2]\nthinker_temperature = 0.5\ntalker_top_k = 4\n")
    thinker, talker = routing_options(SimpleNamespace(routing_config=f, routing="temperature=2.0",
                                                      talker_routing=None), cfg)
    assert [r.top_k for r in thinker] == [4, 4, 2, 2] and {r.temperature for r in thinker} == {2.0}
    assert [r.top_k for r in talker] == [4, 4] and talker[0].num_experts == cfg.talker.text.num_experts
    model = OmniModel.open(tiny_ckpt)  # no weights read: the arguments fail first
    with pytest.raises(RoutingError, match="routing: top_k has 3 values"):
        model.prepare(build_messages("x"), routing={"top_k": [1, 2, 3]})
    with pytest.raises(RoutingError, match="talker_routing: top_k 9 outside"):
        model.prepare(build_messages("x"), talker_routing=RoutingConfig(top_k=9))
    assert model.model is None
