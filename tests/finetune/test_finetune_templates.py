"""Templates render to hand-written expected text, and round-trip through to_dict."""

from __future__ import annotations

import pytest

from gptforge.errors import ConfigError
from gptforge.templates import Template, get_template, make_template

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def test_alpaca_renders_instruction_input_response() -> None:
    tpl = make_template("alpaca")
    text = tpl.render([{"role": "user", "content": "Sum the numbers.", "input": "2, 3"}])
    assert text == PREAMBLE + "\n\n### Instruction:\nSum the numbers.\n\n### Input:\n2, 3\n\n### Response:\n"


def test_alpaca_without_input_has_no_input_block() -> None:
    tpl = make_template("alpaca")
    text = tpl.render([{"role": "user", "content": "Say hi."}])
    assert text == PREAMBLE + "\n\n### Instruction:\nSay hi.\n\n### Response:\n"


def test_alpaca_segments_mark_only_the_response() -> None:
    tpl = make_template("alpaca")
    segs = tpl.segments([{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}])
    assert segs == [(PREAMBLE + "\n\n### Instruction:\nSay hi.\n\n### Response:\n", False), ("hi", True)]


def test_chat_renders_roles_and_generation_prompt() -> None:
    tpl = make_template("chat")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye?"},
    ]
    expected = (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n"
        "<|user|>\nbye?<|end|>\n<|assistant|>\n"
    )
    assert tpl.render(msgs) == expected
    assert tpl.render(msgs, add_generation_prompt=False) == expected[: -len("<|assistant|>\n")]
    segs = tpl.segments(msgs[:3])
    assert [t for t, r in segs if r] == ["hello<|end|>"]
    # the prompt in front of a response equals render(previous, add_generation_prompt=True)
    first_response = next(i for i, (_, r) in enumerate(segs) if r)
    assert "".join(t for t, _ in segs[:first_response]) == tpl.render(msgs[:2])


def test_template_round_trips_through_config() -> None:
    for name in ("alpaca", "chat"):
        tpl = make_template(name)
        again = get_template({"template": tpl.to_dict()})
        assert again == tpl
    assert get_template({}) is None
    assert get_template(None) is None


def test_bad_templates_and_messages_raise() -> None:
    with pytest.raises(ConfigError, match="unknown template"):
        make_template("llama")
    with pytest.raises(ConfigError, match="unknown template keys"):
        Template.from_dict({"name": "chat", "bos": "x"})
    with pytest.raises(ConfigError, match="role"):
        make_template("chat").render([{"role": "bot", "content": "x"}])
