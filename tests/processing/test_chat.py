"""omni_jax ChatTemplate against transformers' Qwen2Tokenizer.apply_chat_template(tokenize=False) on the real
Qwen3-Omni chat template. (Qwen3OmniMoeProcessor renders through the same `render_jinja_template` with the same
`tokenizer.special_tokens_map` variables; it cannot be built here because its video processor needs torchvision.)"""

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from omni_jax.processing.assets import ASSET_DIR, copy_tokenizer_files
from omni_jax.processing.chat import ChatTemplate, ChatTemplateError, build_messages

OMNI_TEMPLATE = json.loads((ASSET_DIR / "chat_template.json").read_text())["chat_template"]
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function",
          "function": {"name": "météo", "description": "天气 for a city", "parameters": CITY_SCHEMA}}]

CONVERSATIONS = {
    "text_only": [{"role": "user", "content": "Hello! 你好"}],
    "system": [{"role": "system", "content": "You are Qwen, a virtual human."},
               {"role": "user", "content": "Who are you?"}],
    "system_as_items": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                        {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "multi_turn": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "add again"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ],
    "reasoning_alias": [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "thinking": "t1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "reasoning": "t2"},
        {"role": "assistant", "content": "A3", "reasoning_content": None},
    ],
    "multimodal": [
        {"role": "system", "content": [{"type": "text", "text": "You are Qwen."}]},
        {"role": "user", "content": [
            {"type": "image", "image": "cat.png"}, {"type": "audio", "audio": np.zeros(16000, np.float32)},
            {"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "Describe all of them."}]},
        {"role": "assistant", "content": "A cat, silence and a clip."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.jpg"}},
                                     {"type": "audio_url", "audio_url": "a.wav"}, {"type": "text", "text": "And?"}]},
    ],
    "tools": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "météo", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"rain\": false}"},
        {"role": "user", "content": "ok", "name": None},
    ],
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat")
    copy_tokenizer_files(out)
    return out


@pytest.fixture(scope="module")
def hf(tok_dir):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    return tok


@pytest.fixture(scope="module")
def chat(tok_dir):
    return ChatTemplate.from_dir(tok_dir)


def _hf_render(hf, messages, template=OMNI_TEMPLATE, **kwargs):
    return hf.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_hf(chat, hf, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    tools = TOOLS if name == "tools" else None
    ours = chat.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    assert ours == _hf_render(hf, messages, add_generation_prompt=add_generation_prompt, tools=tools)
    for kwargs in ({"enable_thinking": False}, {"enable_thinking": True}):
        assert chat.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs) == \
            _hf_render(hf, messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)


def test_multimodal_placeholders(chat):
    text = chat.render(CONVERSATIONS["multimodal"])
    assert ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|audio_start|><|audio_pad|><|audio_end|>"
            "<|vision_start|><|video_pad|><|vision_end|>Describe all of them.<|im_end|>\n") in text
    assert text.endswith("<|im_start|>assistant\n")


def test_build_messages_order_and_render(chat, hf):
    messages = build_messages("What do you see and hear?", system="You are Qwen.", images=["a.png", "b.png"],
                              audios=[np.ones(4)], videos=["v.mp4"])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert [item["type"] for item in messages[1]["content"]] == ["image", "image", "audio", "video", "text"]
    assert messages[1]["content"][1] == {"type": "image", "image": "b.png"}
    assert chat.render(messages) == _hf_render(hf, messages, add_generation_prompt=True)
    assert build_messages("hi") == [{"role": "user", "content": "hi"}]
    audio_only = [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}]
    assert build_messages(None, audios=["x.wav"]) == audio_only
    assert chat.render(build_messages("hi")) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError):
        build_messages("")


# Exercises each environment feature: trim_blocks/lstrip_blocks (undashed tags on their own lines), loop controls,
# tojson (non-ASCII kept, indent), namespace, dict, special-token variables, placeholders for arrays.
ENV_TEMPLATE = """{{ bos_token }}|{{ eos_token }}|{{ pad_token }}
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if loop.index > 3 %}{% break %}{% endif %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<{{ m.role }}>{{ m.content | tojson }}
    {{ m | tojson(indent=2) }}
{% endfor %}
n={{ ns.n }} {{ dict(a=1) | tojson }}
{% if add_generation_prompt %}
GEN
{% endif %}
"""


def test_environment_matches_hf(chat, hf):
    env_chat = ChatTemplate(ENV_TEMPLATE, chat.special_tokens)
    messages = [{"role": "user", "content": "héllo 世界 \"q\" <b>"}, {"role": "skip", "content": "x"},
                {"role": "assistant", "content": [{"type": "audio", "audio": np.zeros(3)}]},
                {"role": "user", "content": "after break"}]
    for gen in (True, False):
        assert env_chat.render(messages, add_generation_prompt=gen) == \
            _hf_render(hf, messages, template=ENV_TEMPLATE, add_generation_prompt=gen)
    # Guard that the comparison can fail: without trim_blocks/lstrip_blocks the output differs.
    import jinja2
    plain = jinja2.Environment().from_string(ENV_TEMPLATE.replace("{% break %}", "").replace("{% continue %}", ""))
    plain_messages = [{**m, "content": "<ndarray>"} if m["role"] == "assistant" else m for m in messages]
    assert plain.render(messages=plain_messages, add_generation_prompt=True, **chat.special_tokens) != \
        env_chat.render(messages)


def test_template_sources(tmp_path, tok_dir, hf):
    messages = CONVERSATIONS["system"]
    expected = _hf_render(hf, messages, add_generation_prompt=True)
    # tokenizer_config.json "chat_template": HF's tokenizer picks this up by itself.
    cfg_dir = tmp_path / "cfg"
    shutil.copytree(tok_dir, cfg_dir)
    (cfg_dir / "chat_template.json").unlink()
    config = json.loads((cfg_dir / "tokenizer_config.json").read_text())
    (cfg_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": OMNI_TEMPLATE}))
    hf_cfg = AutoTokenizer.from_pretrained(str(cfg_dir))
    assert ChatTemplate.from_dir(cfg_dir).render(messages) == expected == \
        hf_cfg.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # chat_template.jinja wins over the config key, as in transformers.
    (cfg_dir / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    hf_jinja = AutoTokenizer.from_pretrained(str(cfg_dir))
    assert ChatTemplate.from_dir(cfg_dir).render(messages) == "JYou are Qwen, a virtual human." == \
        hf_jinja.apply_chat_template(messages, tokenize=False)
    # Named templates: "default", and "tool_use" when tools are given.
    named_dir = tmp_path / "named"
    named_dir.mkdir()
    (named_dir / "chat_template.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": "D"}, {"name": "tool_use", "template": "T{{ tools | length }}"}]}))
    named = ChatTemplate.from_dir(named_dir)
    assert named.render(messages) == "D" and named.render(messages, tools=TOOLS) == "T1"


def test_bad_inputs_raise_one_line_errors(tmp_path, chat):
    def one_line(fn, *needles):
        with pytest.raises(ChatTemplateError) as info:
            fn()
        assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles), str(info.value)

    one_line(lambda: ChatTemplate.from_dir(tmp_path), "no chat template")
    (tmp_path / "chat_template.json").write_text("{oops")
    one_line(lambda: ChatTemplate.from_dir(tmp_path), "chat_template.json", "not valid JSON")
    (tmp_path / "chat_template.json").write_text('{"chat_template": "{% for m in messages %}"}')
    one_line(lambda: ChatTemplate.from_dir(tmp_path), "chat_template.json", "syntax error")
    (tmp_path / "chat_template.json").write_text('{"chat_template": 3}')
    one_line(lambda: ChatTemplate.from_dir(tmp_path), "chat_template.json", "must be a string")
    one_line(lambda: chat.render([]), "empty")
    one_line(lambda: chat.render(["hello"]), "must be dicts")
    raising = ChatTemplate("{{ raise_exception('Roles must alternate') }}", {})
    one_line(lambda: raising.render([{"role": "user", "content": "x"}]), "Roles must alternate")
