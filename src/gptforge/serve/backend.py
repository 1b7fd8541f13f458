"""The model side of the server: prompts in, text pieces out, on a worker thread.

The HTTP layer (``app.py``) never touches torch. It asks a :class:`Backend` to
count prompt tokens and to stream a completion; the backend runs the
generation engine in a worker thread and hands text pieces back to the event
loop, so a slow model never blocks other requests (health checks, new
connections, 429 answers). A ``threading.Event`` lets the HTTP layer cancel a
generation between two tokens when its client goes away.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SamplingParams:
    """The OpenAI request fields that map onto generation options."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


class Cancelled(Exception):
    """Raised inside the worker when the client went away."""


class Backend:
    """A loaded model and its tokenizer (and chat template, if the model has one)."""

    def __init__(self, model: Any, name: str) -> None:
        from gptforge.templates import get_template

        self.model = model
        self.tokenizer = model.tokenizer
        self.name = name
        self.template = get_template(getattr(model, "extra_config", {}) or {})
        self.block_size = model.config.block_size

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the prompt will take, encoded as generation encodes it.

        Raises:
            GptforgeError: the tokenizer cannot encode it (e.g. an empty prompt and no
                end-of-text token, or a character outside a char vocabulary).
        """
        from gptforge.generate.text import encode_prompt

        return len(encode_prompt(self.tokenizer, prompt))

    def render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
        """The prompt text for a chat and the extra stop strings its template needs.

        A model without a template gets a plain continuation: the message contents
        joined by blank lines, as ``gptforge chat`` does.
        """
        if self.template is not None:
            return self.template.render(messages, add_generation_prompt=True), list(self.template.stop_strings)
        return "\n\n".join(m["content"] for m in messages) + "\n\n", []

    def stream(self, prompt: str, params: SamplingParams, cancel: threading.Event) -> Iterator[Any]:
        """Yield :class:`~gptforge.generate.text.TextChunk` pieces of the completion (the last
        one carries ``finish_reason`` and the token counts); stops early when ``cancel`` is set."""
        from gptforge.generate.engine import GenerationConfig
        from gptforge.generate.text import stream_chunks

        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop_strings=list(params.stop or []) or None,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
        )
        chunks = stream_chunks(self.model, self.tokenizer, prompt, config)
        try:
            for chunk in chunks:
                if cancel.is_set():
                    raise Cancelled()
                yield chunk
        finally:
            chunks.close()
