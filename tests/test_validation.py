"""Every argument is checked before any work, with the same one-line message through the CLI and the API
(omni_jax/validation.py). In process; no weights are ever loaded here."""

from __future__ import annotations

import pytest

from omni_jax.api import OmniModel
from omni_jax.errors import InputFileError, OmniJaxError, UsageError
from omni_jax.generate import main as cli_main

MESSAGES = [{"role": "user", "content": "hi"}]

# (CLI flags, API keyword arguments of generate, the message both give, exit code)
SAME_MISTAKE = [
    (["--max-speech-frames", "-1"], {"max_speech_frames": -1},
     "max_speech_frames (--max-speech-frames) = -1: must be an integer >= 0", 2),
    (["--video-fps", "0"], {"video_fps": 0}, "video_fps (--video-fps) = 0: must be a number > 0", 2),
    (["--video-fps", "-2"], {"video_fps": -2}, "video_fps (--video-fps) = -2: must be a number > 0", 2),
    (["--video-fps", "nan"], {"video_fps": float("nan")}, "video_fps (--video-fps) = nan: must be a finite number", 2),
    (["--image-max-pixels", "0"], {"image_max_pixels": 0},
     "image_max_pixels (--image-max-pixels) = 0: must be an integer >= 1", 2),
    (["--image-max-pixels", "-5"], {"image_max_pixels": -5},
     "image_max_pixels (--image-max-pixels) = -5: must be an integer >= 1", 2),
    (["--video-max-frames", "1"], {"video_max_frames": 1},
     "video_max_frames (--video-max-frames) = 1: must be an integer >= 2", 2),
    (["--max-new-tokens", "0"], {"max_new_tokens": 0}, "max_new_tokens (--max-new-tokens) = 0: must be an integer >= 1", 2),
    (["--max-new-tokens", "-1"], {"max_new_tokens": -1},
     "max_new_tokens (--max-new-tokens) = -1: must be an integer >= 1", 2),
    (["--max-new-tokens", "0", "--fused"], {"max_new_tokens": 0, "fused": True},
     "max_new_tokens (--max-new-tokens) = 0: must be an integer >= 1", 2),
    (["--audio-chunk-frames", "0"], {"audio_chunk_frames": 0},
     "audio_chunk_frames (--audio-chunk-frames) = 0: must be an integer >= 1", 2),
    (["--seed", "-1"], {"seed": -1}, "seed (--seed) = -1: must be an integer >= 0", 2),
    (["--seed", str(2**40)], {"seed": 2**40}, f"seed (--seed) = {2**40}: must be an integer <= {2**31 - 1}", 2),
    (["--speaker", "nobody"], {"speaker": "nobody"}, "unknown speaker 'nobody'; this checkpoint has: Aiden, Chelsie, Ethan", 2),
    (["--image", "no/such.png"], {"messages": [{"role": "user", "content": [{"type": "image", "image": "no/such.png"}]}]},
     "image (--image) no/such.png: no such file", 1),
    (["--audio", "no/such.wav"], {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "no/such.wav"}]}]},
     "audio (--audio) no/such.wav: no such file", 1),
]

CLI_ONLY = [
    (["--dtype", "float8"], "dtype (--dtype) = 'float8': choose from float32, bfloat16", 2),
    (["--temperature", "0"], "temperature (--temperature) = 0: must be a number > 0", 2),
    (["--top-p", "1.5"], "top_p (--top-p) = 1.5: must be a number <= 1", 2),
    (["--top-k", "0"], "top_k (--top-k) = 0: must be an integer >= 1", 2),
    (["--use-audio-in-video"], "use_audio_in_video (--use-audio-in-video): needs a --video", 2),
    (["--wav-out", "{tmp}/missing/x.wav"], "wav_out (--wav-out) {tmp}/missing/x.wav: the folder {tmp}/missing does not exist", 1),
    (["--router-stats", "{tmp}/missing/r.json"],
     "router_stats (--router-stats) {tmp}/missing/r.json: the folder {tmp}/missing does not exist", 1),
    (["--wav-out", "{tmp}"], "wav_out (--wav-out) {tmp}: is a directory, expected a file name", 1),
    (["--max-new-tokens", "x"], "argument --max-new-tokens: invalid int value: 'x'", 2),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag", 2),
]


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return OmniModel.open(tiny_ckpt)  # config, tokenizer and processors: no weights


def _cli(args, capsys) -> tuple[int, list[str]]:
    rc = cli_main(args)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("flags,kwargs,message,code", SAME_MISTAKE, ids=[m[:50] for _, _, m, _ in SAME_MISTAKE])
def test_cli_and_api_give_the_same_line(model, tiny_ckpt, capsys, flags, kwargs, message, code):
    rc, err = _cli(["--checkpoint", str(tiny_ckpt), "--prompt", "hi", *flags], capsys)
    assert (rc, err) == (code, [f"python -m omni_jax.generate: error: {message}"])
    kwargs = dict(kwargs)
    messages = kwargs.pop("messages", MESSAGES)
    with pytest.raises(OmniJaxError) as e:
        model.generate(messages, **kwargs)
    assert (str(e.value), e.value.exit_code) == (message, code)
    assert model.model is None  # nothing was loaded


@pytest.mark.parametrize("flags,message,code", CLI_ONLY, ids=[m[:50] for _, m, _ in CLI_ONLY])
def test_cli_flags_fail_before_any_work(tiny_ckpt, tmp_path, capsys, flags, message, code):
    flags = [f.format(tmp=tmp_path) for f in flags]
    rc, err = _cli(["--checkpoint", str(tiny_ckpt), "--prompt", "hi", *flags], capsys)
    assert (rc, err) == (code, [f"python -m omni_jax.generate: error: {message.format(tmp=tmp_path)}"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("messages,message", [
    ("hello", "messages: expected a conversation (a list of {'role': ..., 'content': ...} dicts) or a list of "
              "conversations, got str"),
    ([], "messages: empty: expected at least one message"),
    ([[]], "messages: conversation 0: empty conversation"),
    ([{"content": "hi"}], "messages: message 0: needs a 'role' string"),
    ([{"role": "user", "content": 3}], "messages: message 0: 'content' must be a string or a list of items, got int"),
    ([{"role": "user", "content": [{"type": "imag"}]}],
     "messages: message 0 item 0: expected a dict with 'type' text, image, audio or video"),
    ([{"role": "user", "content": [{"type": "image"}]}],
     "messages: message 0 item 0: an image item needs its 'image' (a path or an array)"),
])
def test_api_messages_are_checked(model, messages, message):
    with pytest.raises(UsageError) as e:
        model.generate(messages)
    assert str(e.value) == message


def test_api_load_arguments(tmp_path):
    import omni_jax

    with pytest.raises(UsageError, match=r"^dtype \(--dtype\) = 'float8': choose from float32, bfloat16$"):
        omni_jax.load(demo=True, dtype="float8")  # before the demo is built
    with pytest.raises(UsageError, match="give a checkpoint directory"):
        omni_jax.load()
    with pytest.raises(InputFileError, match="no such checkpoint directory"):
        omni_jax.load(tmp_path / "nope")
    with pytest.raises(UsageError, match="expected True or False"):
        omni_jax.load(tmp_path, demo="yes")


def test_existing_outputs_survive_a_rejected_call(tiny_ckpt, tmp_path, capsys):
    """A run refused for a bad flag leaves an existing wav and router-stats file as they were."""
    wav, stats = tmp_path / "speech.wav", tmp_path / "stats.json"
    wav.write_bytes(b"RIFF old speech")
    stats.write_text("{}")
    rc, _ = _cli(["--checkpoint", str(tiny_ckpt), "--prompt", "hi", "--wav-out", str(wav), "--router-stats",
                  str(stats), "--max-speech-frames", "-1"], capsys)
    assert rc == 2 and wav.read_bytes() == b"RIFF old speech" and stats.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav", "stats.json"]
