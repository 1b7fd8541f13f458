"""The chat session: prompts rendered by the template (or plain), history, reset, interruption."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptforge.generate.chat import PLAIN_STOP, ChatSession
from gptforge.generate.engine import GenerationConfig
from tests.generate.gen_helpers import ScriptedModel


@dataclass
class TinyTemplate:
    """The interface of gptforge.templates.Template, written out for the test."""

    stop_strings: list[str] = field(default_factory=lambda: ["<E>"])

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"[{m['role']}]{m['content']}<E>" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")


def test_template_prompt_history_and_reset(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = ScriptedModel(tok.encode("Fine, thanks.<E>[user]ignored"), tok.vocab_size)
    cfg = GenerationConfig(max_new_tokens=30, temperature=0)
    chat = ChatSession(model, tok, cfg, template=TinyTemplate(), system="Be brief.")
    assert "".join(chat.reply("How are you?")) == "Fine, thanks."
    assert tok.decode(model.prompts[-1]) == "[system]Be brief.<E>[user]How are you?<E>[assistant]"
    assert "".join(chat.reply("And now?")) == "Fine, thanks."
    assert tok.decode(model.prompts[-1]) == (
        "[system]Be brief.<E>[user]How are you?<E>[assistant]Fine, thanks.<E>[user]And now?<E>[assistant]"
    )
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
    "".join(chat.reply("Hi"))
    assert tok.decode(model.prompts[-1]) == "[system]Be brief.<E>[user]Hi<E>[assistant]"


def test_real_chat_template_when_available(gpt2_tokenizer) -> None:
    import pytest

    templates = pytest.importorskip("gptforge.templates")
    tok = gpt2_tokenizer
    template = templates.make_template("chat")
    model = ScriptedModel(tok.encode("Hello there<|end|>\n<|user|>"), tok.vocab_size)
    chat = ChatSession(model, tok, GenerationConfig(max_new_tokens=30, temperature=0), template=template)
    assert "".join(chat.reply("Hi")) == "Hello there"
    assert tok.decode(model.prompts[-1]) == template.render([{"role": "user", "content": "Hi"}])


def test_plain_continuation_and_interrupted_reply(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = ScriptedModel(tok.encode(" one two three four five six seven eight"), tok.vocab_size)
    model.train()
    chat = ChatSession(model, tok, GenerationConfig(max_new_tokens=30, temperature=0))
    reply = chat.reply("count")
    first = [next(reply), next(reply)]
    reply.close()  # what Ctrl-C does in `gptforge chat`
    assert tok.decode(model.prompts[-1]) == "count" + PLAIN_STOP
    assert chat.messages[-1] == {"role": "assistant", "content": "".join(first).strip()}
    assert model.training  # the engine's eval() was undone when the reply was closed


def test_history_is_trimmed_to_fit_the_context(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = ScriptedModel(tok.encode("ok<E>"), tok.vocab_size, block_size=40)
    chat = ChatSession(model, tok, GenerationConfig(max_new_tokens=10, temperature=0), template=TinyTemplate())
    for i in range(6):
        "".join(chat.reply(f"message number {i}"))
        assert len(model.prompts[-1]) <= 30
    assert "message number 5" in tok.decode(model.prompts[-1])
    assert "message number 0" not in tok.decode(model.prompts[-1])
    assert len(chat.messages) == 12  # the history itself is kept whole
