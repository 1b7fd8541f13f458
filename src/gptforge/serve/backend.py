"""The model side of the server: prompts in, token events out, through the scheduler.

The HTTP layer (``app.py``) never touches torch. It asks a :class:`Backend` to
encode prompts (in a worker thread: the pure-Python tokenizers are slow on big
inputs) and to run sequences; the backend's :class:`~gptforge.serve.scheduler.Scheduler`
owns the model on its own thread and batches every running request into one
decode step (continuous batching).
"""

from __future__ import annotations

from typing import Any

from gptforge.errors import GptforgeError
from gptforge.serve.scheduler import Busy, Event, SamplingParams, Scheduler, Sequence, TokenInfo

__all__ = ["Backend", "Busy", "Event", "SamplingParams", "Sequence", "TokenInfo", "ChatInjection"]


class ChatInjection(GptforgeError):
    """A chat message holds one of the template's markers (it would start a new turn)."""


class Backend:
    """A loaded model, its tokenizer and chat template, and the scheduler that runs it.

    Args:
        model: a GPT with ``model.tokenizer``.
        name: the model id clients use.

    :meth:`start` makes the scheduler (the app does, with its settings).
    """

    def __init__(self, model: Any, name: str) -> None:
        from gptforge.templates import get_template

        self.model = model
        self.tokenizer = model.tokenizer
        self.name = name
        self.template = get_template(getattr(model, "extra_config", {}) or {})
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.n_params = model.num_params()
        self.scheduler: Scheduler | None = None

    def start(self, max_batch: int = 16, max_queue: int = 64, cache_len: int | None = None,
              prefill_chunk: int = 128) -> Scheduler:
        """Start the scheduler thread (see :class:`Scheduler` for the arguments).

        With batching on, the model's large CPU layers first get kernels measured for a
        batched step as well as for one row (:mod:`gptforge.serve.batched_decoding`).
        """
        if self.scheduler is None:
            if max_batch > 1:
                from gptforge.serve.batched_decoding import prepare_for_batching

                prepare_for_batching(self.model, rows=min(max_batch, 16), max_rows=max_batch)
            self.scheduler = Scheduler(self.model, self.tokenizer, max_batch=max_batch, max_queue=max_queue,
                                       cache_len=cache_len, prefill_chunk=prefill_chunk)
        return self.scheduler

    # ---- text <-> ids (run in a worker thread by the HTTP layer) ---------------------------

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Prompt text (or ids) as generation encodes it; an empty prompt starts from end-of-text.

        Raises:
            GptforgeError: the tokenizer cannot encode it (an empty prompt and no end-of-text
                token, a character outside a char vocabulary, an id out of range).
        """
        from gptforge.generate.text import encode_prompt

        if not isinstance(prompt, str):
            bad = [i for i in prompt if not 0 <= i < self.vocab_size]
            if bad:
                raise GptforgeError(f"token id {bad[0]} is out of range [0, {self.vocab_size})")
        return encode_prompt(self.tokenizer, prompt)

    def count_prompt_tokens(self, prompt: str) -> int:
        return len(self.encode_prompt(prompt))

    def tokenize(self, text: str) -> list[int]:
        """Text -> ids as vLLM's ``/tokenize`` does: special-token strings become their ids."""
        return self.tokenizer.encode(text, allowed_special="all")

    def token_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_bytes(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode_bytes(ids)

    def eos_token(self) -> str | None:
        eot = self.tokenizer.eot_id
        if eot is None:
            return None
        for text, i in self.tokenizer.special_tokens.items():
            if i == eot:
                return text
        return self.tokenizer.decode([eot])

    # ---- chat -------------------------------------------------------------------------------

    def markers(self) -> list[str]:
        """Strings that structure this model's chat prompt (a message may not contain them)."""
        if self.template is None:
            return []
        if self.template.name == "alpaca":
            return ["### Instruction:", "### Input:", "### Response:", "<|endoftext|>"]
        return ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]

    def render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
        """The prompt text for a chat and the extra stop strings its template needs.

        A message containing one of the template's markers is refused: with plain-text
        markers it would otherwise end its own turn and write the next one (an injected
        ``<|end|>\\n<|assistant|>`` would put words in the assistant's mouth). A model
        without a template gets a plain continuation: the contents joined by blank lines,
        as ``gptforge chat`` does.

        Raises:
            ChatInjection: naming the message and the marker.
        """
        for i, m in enumerate(messages):
            for marker in self.markers():
                if marker in m["content"]:
                    raise ChatInjection(f"messages[{i}].content contains the chat template marker {marker!r}, "
                                        "which would start a new turn; remove it")
        if self.template is not None:
            return self.template.render(messages, add_generation_prompt=True), list(self.template.stop_strings)
        return "\n\n".join(m["content"] for m in messages) + "\n\n", []

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
