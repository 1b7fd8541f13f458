"""A chat session over the engine: history, the model's chat template, streaming replies.

With a template (``model.extra_config["template"]``, written by fine-tuning), the
history is rendered by :meth:`gptforge.templates.Template.render` and generation
stops at the template's stop strings. Without one, the chat is a plain
continuation: the messages joined by blank lines, and a reply ends at the next
blank line (or the end-of-text token), the same prompt ``gptforge serve`` builds.

When the history no longer fits in the context (prompt + ``max_new_tokens`` >
``block_size``), the oldest exchanges are dropped (a system message stays).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from gptforge.generate.engine import GenerationConfig
from gptforge.generate.text import stream_chunks

logger = logging.getLogger(__name__)

PLAIN_STOP = "\n\n"  # a plain-continuation reply ends at a blank line


def load_template(model: Any) -> Any:
    """The model's chat template, or None (also when the templates module is missing)."""
    try:
        from gptforge.templates import get_template
    except ImportError:  # pragma: no cover - the fine-tuning part is optional
        return None
    return get_template(getattr(model, "extra_config", None) or {})


class ChatSession:
    """Holds the conversation and produces streamed replies.

    Args:
        model: a GPT with ``config.block_size``.
        tokenizer: its tokenizer.
        config: decoding options (stop strings are added from the template).
        template: an object with ``render(messages, add_generation_prompt=True)`` and
            ``stop_strings``; None for a plain continuation.
        system: an optional system message kept at the start of the history.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: GenerationConfig | None = None,
        template: Any = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        self.template = template
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages``, ending where the reply starts."""
        if self.template is not None:
            return self.template.render(messages, add_generation_prompt=True)
        return PLAIN_STOP.join(m["content"] for m in messages) + PLAIN_STOP

    def stop_strings(self) -> list[str]:
        extra = list(self.template.stop_strings) if self.template is not None else [PLAIN_STOP]
        return list(dict.fromkeys(list(self.config.stop_strings or []) + extra))

    def _fit(self, messages: list[dict[str, str]]) -> str:
        """Render, dropping the oldest non-system messages until prompt + reply fit the context."""
        budget = self.model.config.block_size - self.config.max_new_tokens
        msgs = list(messages)
        while True:
            prompt = self.render(msgs)
            first = 1 if msgs and msgs[0]["role"] == "system" else 0
            if len(self.tokenizer.encode(prompt)) <= budget or len(msgs) - first <= 1:
                return prompt  # a single message that is too long: the engine slides over it
            msgs.pop(first)
            logger.debug("chat history trimmed to %d messages to fit the context", len(msgs))

    def reply(self, user_text: str) -> Iterator[str]:
        """Add ``user_text``, stream the reply, and add the reply to the history.

        If the consumer stops early (Ctrl-C), the part shown so far is kept as the reply.
        """
        self.messages.append({"role": "user", "content": user_text})
        prompt = self._fit(self.messages)
        cfg = self.config.replace(stop_strings=self.stop_strings())
        shown = []
        try:
            for chunk in stream_chunks(self.model, self.tokenizer, prompt, cfg):
                if chunk.text:
                    shown.append(chunk.text)
                    yield chunk.text
        finally:
            self.messages.append({"role": "assistant", "content": "".join(shown).strip()})
