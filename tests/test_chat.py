"""Chat templates: the default model's own template, the ChatML fallback, and the sandbox."""

from __future__ import annotations

import logging

import pytest

from edgert.chat import CHATML_TEMPLATE, compile_template, render_chat
from edgert.errors import EdgertError

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture
def smol_template(default_model_path) -> str:
    from edgert.formats.gguf import read_gguf

    return read_gguf(default_model_path).meta["tokenizer.chat_template"]


@pytest.mark.model
def test_smollm2_template_adds_its_default_system_prompt(smol_template):
    out = render_chat(smol_template, [{"role": "user", "content": "What is 2+2?"}])
    assert out == SMOL_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.model
def test_smollm2_template_keeps_a_given_system_prompt(smol_template):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "bye"}]
    out = render_chat(smol_template, msgs, add_generation_prompt=False)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                   "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n")


def test_chatml_fallback_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="edgert.chat"):
        out = render_chat(None, [{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "ChatML" in caplog.text
    assert render_chat("", [{"role": "user", "content": "hi"}]) == out
    assert render_chat(CHATML_TEMPLATE, [{"role": "user", "content": "hi"}], add_generation_prompt=False) \
        == "<|im_start|>user\nhi<|im_end|>\n"


def test_templates_are_compiled_once():
    t = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    assert compile_template(t) is compile_template(t)
    assert render_chat(t, [{"role": "user", "content": "x"}], bos_token="<s>", eos_token="</s>") == \
        "<s>[user]x</s>"


def test_transformers_globals_filters_and_whitespace():
    t = """
{%- set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'user' %}{% set ns.n = ns.n + 1 %}{% else %}{% continue %}{% endif %}
{{ m.content | tojson }}
{% endfor %}
{{ ns.n }}|{{ tools is none }}|{{ strftime_now('%Y') | length }}|{{ extra_flag }}"""
    out = render_chat(t, [{"role": "user", "content": "héllo \"q\""}, {"role": "assistant", "content": "a"}],
                      extra_flag="yes")
    assert out == '"héllo \\"q\\""\n1|True|4|yes'


def test_raise_exception_becomes_edgert_error():
    t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(EdgertError, match="Conversation must start with user"):
        render_chat(t, [{"role": "assistant", "content": "hi"}])


def test_syntax_and_runtime_errors_name_the_problem():
    with pytest.raises(EdgertError, match="syntax error at line 1"):
        render_chat("{% if %}", [])
    with pytest.raises(EdgertError, match="TypeError"):
        render_chat("{{ 'a' + messages[0].content }}", [{"role": "user", "content": None}])
    with pytest.raises(EdgertError, match="list of"):
        render_chat(CHATML_TEMPLATE, "hi")  # type: ignore[arg-type]


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{% set d = messages[0] %}{{ d.update({'content': 'pwned'}) }}",
])
def test_sandbox_blocks_attribute_attacks(attack):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(EdgertError, match="sandbox forbids"):
        render_chat(attack, msgs)
    assert msgs == [{"role": "user", "content": "hi"}]
