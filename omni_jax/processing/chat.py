"""Chat template of a checkpoint, rendered with jinja2 exactly as transformers' `apply_chat_template(tokenize=False)`.

The environment copies `transformers.utils.chat_template_utils._cached_compile_jinja_template`: an immutable sandbox
with `trim_blocks`, `lstrip_blocks` and loop controls, a `tojson` filter that keeps non-ASCII, `raise_exception`,
`strftime_now`, `dict` and an underscore-safe `namespace`. Like transformers, the named special tokens of the tokenizer
config (`eos_token`, `pad_token`, ...) are template variables, keys whose value is None are dropped from messages,
media objects inside messages are replaced by inert placeholders, and `reasoning_content` is aliased.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from omni_jax.errors import InputFileError
from omni_jax.processing.tokenizer import (
    TokenizerFileError,
    read_json_file,
    read_text_file,
    read_tokenizer_config,
    special_tokens_map,
)

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(InputFileError):
    """No usable chat template, or messages the template cannot render (one line, naming the file)."""


class _TemplateNamespace(jinja2.utils.Namespace):
    # transformers' TemplateNamespace: namespaces reject underscore-prefixed attributes.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _TemplateDict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_TemplateNamespace)
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """transformers' `_plain_template_data`: JSON-like data kept, anything else (arrays, images) -> "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums, numpy scalars) are stripped back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _select(value: Any, origin: Path) -> str | dict[str, str]:
    # A template is a string, or named templates: a list of {"name", "template"} or a {name: template} dict.
    if isinstance(value, list) and all(isinstance(t, dict) and {"name", "template"} <= t.keys() for t in value):
        value = {t["name"]: t["template"] for t in value}
    if isinstance(value, str) or (isinstance(value, dict) and value and
                                  all(isinstance(t, str) for t in value.values())):
        return value
    raise ChatTemplateError(f"{origin}: chat_template must be a string or a list of named templates")


def find_chat_template(model_dir: str | Path) -> tuple[str | dict[str, str], Path]:
    """The chat template of a checkpoint directory and the file it came from.

    Looked up in `chat_template.jinja` (transformers' tokenizer and processor both prefer this file), then the
    `chat_template` key of `tokenizer_config.json`, then `chat_template.json`, then a single other `*.jinja` file.
    """
    model_dir = Path(model_dir)
    try:
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.exists():
            return read_text_file(jinja_file), jinja_file
        config = read_tokenizer_config(model_dir)
        if config.get("chat_template") is not None:
            config_file = model_dir / "tokenizer_config.json"
            return _select(config["chat_template"], config_file), config_file
        json_file = model_dir / "chat_template.json"
        if json_file.exists():
            value = read_json_file(json_file).get("chat_template")
            if value is None:
                raise ChatTemplateError(f"{json_file}: no 'chat_template' key")
            return _select(value, json_file), json_file
        others = sorted(model_dir.glob("*.jinja"))
        if len(others) == 1:
            return read_text_file(others[0]), others[0]
    except TokenizerFileError as err:
        raise ChatTemplateError(str(err)) from None
    raise ChatTemplateError(f"{model_dir}: no chat template (chat_template.jinja, tokenizer_config.json "
                            "'chat_template', or chat_template.json)")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's chat template plus the named special tokens it may refer to."""

    template: str | dict[str, str]
    special_tokens: dict[str, str]
    origin: Path | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ChatTemplate":
        template, origin = find_chat_template(model_dir)
        try:
            config = read_tokenizer_config(model_dir)
        except TokenizerFileError as err:
            raise ChatTemplateError(str(err)) from None
        chat = cls(template, special_tokens_map(config), origin)
        for source in ([template] if isinstance(template, str) else template.values()):
            chat._compile(source)  # syntax errors surface at load time, naming the file
        return chat

    def _compile(self, source: str) -> jinja2.Template:
        try:
            return compile_template(source)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(f"{self.origin}: chat template syntax error at line {err.lineno}: {err.message}") \
                from None

    def _source(self, tools) -> str:
        if isinstance(self.template, str):
            return self.template
        if tools is not None and "tool_use" in self.template:
            return self.template["tool_use"]
        if "default" in self.template:
            return self.template["default"]
        raise ChatTemplateError(f"{self.origin}: several chat templates and none is named 'default'")

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True, tools: list | None = None,
               documents: list | None = None, **kwargs) -> str:
        """The prompt text for HF-style `messages` (content: a string, or items of type text/image/audio/video).

        Extra keyword arguments (e.g. `enable_thinking=False`) are template variables, as in transformers.
        """
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation")
        chat = []
        for message in messages:
            if not isinstance(message, Mapping):
                raise ChatTemplateError(f"chat messages must be dicts with 'role' and 'content', got {message!r:.80}")
            chat.append(_alias_reasoning(_plain({k: v for k, v in message.items() if v is not None})))
        if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
            raise ChatTemplateError("tools must be JSON-schema dicts")
        variables = _plain({**self.special_tokens, **kwargs})
        try:
            return self._compile(self._source(tools)).render(
                messages=chat, tools=_plain(tools), documents=_plain(documents),
                add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"chat template {self.origin}: {str(err).splitlines()[0]}") from None


def build_messages(prompt: str | None, system: str | None = None, images: Sequence[Any] = (),
                   audios: Sequence[Any] = (), videos: Sequence[Any] = ()) -> list[dict]:
    """Messages for one CLI-style turn: optional system text, then a user turn with images, audios, videos, prompt.

    Media entries (paths or arrays) are kept as given under the item's type key, e.g. {"type": "image", "image": x}.
    Text-only turns use a plain string as content.
    """
    content = ([{"type": "image", "image": x} for x in images] + [{"type": "audio", "audio": x} for x in audios]
               + [{"type": "video", "video": x} for x in videos])
    if not content and not prompt:
        raise ChatTemplateError("nothing to send: give a prompt or at least one image, audio or video")
    if prompt:
        content.append({"type": "text", "text": prompt})
    messages = [{"role": "system", "content": system}] if system else []
    user = prompt if len(content) == 1 and prompt else content
    return messages + [{"role": "user", "content": user}]
