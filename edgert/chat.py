"""Chat templates: a model's Jinja template rendered in a sandbox, as transformers renders it."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import EdgertError

logger = logging.getLogger(__name__)

# Used when a model file carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it): a no-op."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Reading an unsafe attribute (`''.__class__`) is an error, not a silent empty string."""

    def unsafe_undefined(self, obj: Any, attribute: str):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """The compiled template, cached by its text."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise EdgertError(f"the chat template has a syntax error at line {e.lineno}: {e.message}; fix the "
                          "template or pass another one.") from e


def resolve_template(template: str | None) -> str:
    """`template`, or ChatML when the model file has none."""
    if template:
        return template
    logger.info("the model has no chat template; using ChatML")
    return CHATML_TEMPLATE


def render_chat(template: str | None, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """The prompt text for `messages` ([{'role': ..., 'content': ...}, ...]); None uses ChatML."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise EdgertError("chat messages must be a list of {'role': ..., 'content': ...} dicts; pass them in "
                          "that form.")
    compiled = compile_template(resolve_template(template))
    extra.setdefault("tools", None)
    extra.setdefault("documents", None)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except SecurityError as e:
        raise EdgertError(f"the chat template tried something the sandbox forbids ({e}); use a trusted "
                          "template.") from e
    except jinja2.TemplateError as e:
        raise EdgertError(f"the chat template failed: {e.message or e}; check the messages or the "
                          "template.") from e
    except Exception as e:  # errors inside template code (a str + None, a bad index) are template errors
        raise EdgertError(f"the chat template failed with {type(e).__name__}: {e}; check the messages or "
                          "the template.") from e
