"""The generate CLI with --image / --audio / --video / --use-audio-in-video: its greedy ids equal the library
path (whose ids equal HF's thinker.generate: tests/models/test_thinker_multimodal.py), and media errors are
one-line errors naming the file."""

import json
import subprocess
import sys


from multimodal_helpers import media  # noqa: F401  (fixture)
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.thinker import prepare_prompt
from omni_jax.processing.chat import build_messages
from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor
from omni_jax.weights import load_checkpoint

NEW = 5


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "omni_jax.generate", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    return r


def library_ids(ckpt, prompt, images=(), audios=(), videos=(), use_audio_in_video=False):
    cfg, model = load_checkpoint(ckpt)
    proc = MultimodalProcessor.from_dir(ckpt, cfg)
    batch = proc([build_messages(prompt, images=[str(p) for p in images], audios=[str(p) for p in audios],
                                 videos=[str(p) for p in videos])], MediaOptions(use_audio_in_video=use_audio_in_video))
    prepared = prepare_prompt(pure_params(model.thinker), cfg, batch)
    engine = ThinkerEngine(cfg, pure_params(model.thinker.text))
    return engine.generate(prepared, NEW, SamplingConfig.greedy(), {cfg.im_end_token_id})[0]


def test_cli_image_audio_and_video_with_its_audio(tiny_ckpt, media):  # noqa: F811
    r = cli("--checkpoint", tiny_ckpt, "--prompt", "What is this?", "--image", media["img_a"], "--audio",
            media["aud_a"], "--max-new-tokens", NEW, "--greedy", "--json", "--no-speech")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])["token_ids"]
    assert got == library_ids(tiny_ckpt, "What is this?", images=[media["img_a"]], audios=[media["aud_a"]])
    r = cli("--checkpoint", tiny_ckpt, "--prompt", "Describe.", "--video", media["vid_av"], "--use-audio-in-video",
            "--max-new-tokens", NEW, "--greedy", "--json", "--no-speech")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])["token_ids"]
    assert got == library_ids(tiny_ckpt, "Describe.", videos=[media["vid_av"]], use_audio_in_video=True)


def test_cli_media_errors_are_one_line(tiny_ckpt, media, tmp_path):  # noqa: F811
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (("--image", bad), "broken.png"),
        (("--audio", tmp_path / "missing.wav"), "missing.wav"),
        (("--video", media["vid"], "--use-audio-in-video"), "v.mkv"),
        (("--use-audio-in-video",), "--video"),
    ]
    for extra, needle in cases:
        r = cli("--checkpoint", tiny_ckpt, "--prompt", "x", "--max-new-tokens", 2, *extra)
        assert r.returncode == (2 if needle == "--video" else 1), (extra, r.stderr)  # a usage error, or a bad file
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (extra, r.stderr)
