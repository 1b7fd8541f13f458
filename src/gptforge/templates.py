"""Prompt and chat templates: how a list of messages becomes the text a model sees.

A fine-tuned model only answers well when it is prompted the way it was trained,
so fine-tuning saves its template in the model dir's ``config.json`` (key
``template``, the dict of :meth:`Template.to_dict`) and ``generate``/``chat``/
``serve`` read it back with :func:`get_template`. Pure Python: imports no torch.

Two built-in templates:

``alpaca`` (the Stanford Alpaca prompt format; also used by LLMs-from-scratch ch07)::

    Below is an instruction that describes a task. Write a response that
    appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:              <- only when the user message has an "input"
    {input}

    ### Response:
    {output}

``chat`` (role markers, one turn per block)::

    <|system|>
    {system}<|end|>
    <|user|>
    {user}<|end|>
    <|assistant|>
    {assistant}<|end|>

Decision on the chat markers: they are written and encoded as **plain text**
(``<|user|>`` becomes a few ordinary BPE tokens), not added to the tokenizer
as new special tokens. That works with every tokenizer kind, keeps the vocab
and embedding shapes of the base model (so a fine-tuned model still exports to
Hugging Face GPT-2 unchanged), and costs only a few tokens per turn. The stop
string ``<|end|>`` is matched on the decoded text. Fine-tuning also appends the
tokenizer's end-of-text id after every response, so the generation engine's EOS
stop ends an answer even when no stop string matches.

Messages are dicts ``{"role": "system"|"user"|"assistant", "content": str}``;
for ``alpaca`` a user message may also carry ``"input"`` (the context of a
context-based Q&A record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptforge.errors import ConfigError

ROLES = ("system", "user", "assistant")

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass
class Template:
    """A prompt template: renders messages to text and splits it into prompt and response.

    Attributes:
        name: ``alpaca`` or ``chat`` (the rendering style).
        system: the default system text (alpaca: the preamble; chat: none).
        stop_strings: text that ends a response during generation.
    """

    name: str = "chat"
    system: str = ""
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.name not in TEMPLATE_NAMES:
            raise ConfigError(f"unknown template {self.name!r}; expected one of {sorted(TEMPLATE_NAMES)}")

    # -- rendering ---------------------------------------------------------
    def segments(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """The rendered text as ``(text, is_response)`` pieces, in order.

        Joining the texts gives :meth:`render`. Fine-tuning encodes each piece
        separately and computes the loss only on ``is_response`` pieces (the
        assistant turns, end marker included). The prompt in front of a response
        is exactly what ``render(messages_before, add_generation_prompt=True)``
        returns, so generation sees the same tokens as training.
        """
        _check_messages(messages)
        if self.name == "alpaca":
            return self._alpaca_segments(messages, add_generation_prompt)
        return self._chat_segments(messages, add_generation_prompt)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` to one string; with ``add_generation_prompt`` the text ends
        where the assistant's answer should start (after the last message)."""
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt))

    def _alpaca_segments(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        system = self.system or ALPACA_PREAMBLE
        out: list[tuple[str, bool]] = []
        prompt = ""
        for msg in messages:
            role, content = msg["role"], msg["content"]
            if role == "system":
                system = content
            elif role == "user":
                prompt += (system if not out and not prompt else "") + "\n\n### Instruction:\n" + content
                if msg.get("input"):
                    prompt += "\n\n### Input:\n" + str(msg["input"])
                prompt += "\n\n### Response:\n"
            else:  # assistant
                out.append((prompt, False))
                out.append((content, True))
                prompt = ""
        if prompt:
            # A trailing user turn always renders up to "### Response:": Alpaca has no
            # separate "start the answer" marker, so add_generation_prompt changes nothing.
            out.append((prompt, False))
        return [(t, r) for t, r in out if t or r]

    def _chat_segments(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        prompt = ""
        if self.system and not any(m["role"] == "system" for m in messages):
            prompt += f"<|system|>\n{self.system}<|end|>\n"
        for msg in messages:
            role, content = msg["role"], msg["content"]
            if role == "assistant":
                out.append((prompt + "<|assistant|>\n", False))
                out.append((content + "<|end|>", True))
                prompt = "\n"
            else:
                prompt += f"<|{role}|>\n{content}<|end|>\n"
        if add_generation_prompt and messages and messages[-1]["role"] != "assistant":
            prompt += "<|assistant|>\n"
        if prompt:
            out.append((prompt, False))
        return out

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What fine-tuning stores under ``config.json["template"]``."""
        return {"name": self.name, "system": self.system, "stop_strings": list(self.stop_strings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Template:
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"template config must be a dict with a 'name' key, got {d!r}")
        unknown = set(d) - {"name", "system", "stop_strings"}
        if unknown:
            raise ConfigError(f"unknown template keys {sorted(unknown)}; expected name, system, stop_strings")
        return cls(name=d["name"], system=d.get("system", ""), stop_strings=list(d.get("stop_strings", [])))


TEMPLATE_NAMES = ("alpaca", "chat")


def make_template(name: str) -> Template:
    """The built-in template ``name`` (``alpaca`` or ``chat``) with its stop strings."""
    if name == "alpaca":
        return Template(name="alpaca", stop_strings=["### Instruction:", "<|endoftext|>"])
    if name == "chat":
        return Template(name="chat", stop_strings=["<|end|>", "<|user|>", "<|endoftext|>"])
    raise ConfigError(f"unknown template {name!r}; expected one of {list(TEMPLATE_NAMES)}")


def get_template(extra_config: dict[str, Any] | None) -> Template | None:
    """The template saved in a model dir's config.json (``model.extra_config``), or None."""
    if not extra_config or "template" not in extra_config or extra_config["template"] is None:
        return None
    return Template.from_dict(extra_config["template"])


def _check_messages(messages: list[dict[str, Any]]) -> None:
    if not isinstance(messages, list):
        raise ConfigError(f"messages must be a list of {{role, content}} dicts, got {type(messages).__name__}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        if msg["role"] not in ROLES:
            raise ConfigError(f"message {i} has role {msg['role']!r}; expected one of {list(ROLES)}")
        if not isinstance(msg["content"], str):
            raise ConfigError(f"message {i} content must be a string, got {type(msg['content']).__name__}")
