"""The whole Thinker -> Talker -> Code2Wav generation compiles once per shape bucket: a second call with
another prompt of the same bucket compiles nothing (counted with JAX's compilation events)."""

import jax
import jax.monitoring

import omni_jax
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.processing.chat import build_messages

COMPILES: list[str] = []


def _listener(name, duration, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
        COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)


def test_second_call_of_a_bucket_does_not_compile(tiny_ckpt):
    jax.clear_caches()  # programs other tests compiled in this process (same shapes) must not count as ours
    model = omni_jax.load(tiny_ckpt)
    kw = dict(max_new_tokens=6, talker_sampling=TalkerSampling.greedy(), max_speech_frames=5)
    first = model.generate(build_messages("Hello there, how are you?"), **kw)
    compiled_first = len(COMPILES)
    assert compiled_first > 0 and first.wav is not None
    again = model.generate(build_messages("What is a mixture of experts?"), **kw)  # same prompt bucket
    assert len(COMPILES) == compiled_first, "the second call of the same bucket compiled something"
    assert again.codec_codes is not None and len(again.token_ids) > 0
    batch = model.generate([build_messages("One"), build_messages("Two more words")], **kw)  # a new bucket (B=2)
    assert len(COMPILES) > compiled_first and len(batch) == 2
    n = len(COMPILES)
    model.generate([build_messages("Three"), build_messages("Four words here")], **kw)
    assert len(COMPILES) == n


def test_a_cold_call_compiles_each_program_once(tiny_ckpt):
    """The compile-ahead thread compiles the later programs from abstract arguments; the real calls must find
    them (same input shardings), not compile them a second time."""
    from omni_jax.compilation import CompileLog

    jax.clear_caches()
    model = omni_jax.load(tiny_ckpt)
    with CompileLog() as log:
        out = model.generate(build_messages("Hello there, how are you?"), max_new_tokens=6, max_speech_frames=5,
                             talker_sampling=TalkerSampling.greedy())
    assert out.wav is not None
    names = {name.split("(")[-1].rstrip(")") for name in log.programs}
    assert {"thinker_prefill", "thinker_decode_step", "_assemble", "talker_prefill", "talker_frame_step",
            "decode_after"} <= names, sorted(log.programs)
    twice = {name: p.compiled for name, p in log.programs.items() if p.compiled > 1}
    assert not twice, f"compiled more than once in one call: {twice}\n{log.table()}"
