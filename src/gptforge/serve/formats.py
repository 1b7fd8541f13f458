"""OpenAI's response shapes, built from the scheduler's events.

Completions (``text_completion``) report log-probabilities as four parallel lists:
``tokens`` (each token's text), ``token_logprobs``, ``top_logprobs`` (a dict of the N
most likely tokens' texts to their logprobs, per position) and ``text_offset`` (where
each token starts in the returned text). With ``echo`` the prompt's tokens come first
and the first of them has ``null`` logprobs (nothing predicts it), as OpenAI returns;
lm-evaluation-harness reads exactly these. Chat (``chat.completion``) reports
``logprobs.content``: one ``{token, logprob, bytes, top_logprobs}`` per token.

Log-probabilities are the model's own (log-softmax of its logits), before penalties,
``logit_bias``, temperature and filters: the numbers ``gptforge eval`` turns into a loss.
"""

from __future__ import annotations

from typing import Any

from gptforge.generate.text import utf8_complete_length
from gptforge.serve.backend import Backend, Event, TokenInfo


def text_offsets(backend: Backend, ids: list[int], base: int = 0) -> list[int]:
    """Character offset at which each token starts in the decoded text of ``ids``.

    A token that starts inside a multi-byte character (byte-level BPE splits them) gets
    the offset of that character.
    """
    out, data = [], b""
    for i in ids:
        out.append(base + len(data[: utf8_complete_length(data)].decode("utf-8", errors="replace")))
        data += backend.token_bytes([i])
    return out


def completion_logprobs(backend: Backend, infos: list[TokenInfo], base: int = 0) -> dict[str, Any]:
    def top(t: TokenInfo) -> dict[str, float] | None:
        if t.logprob is None:
            return None
        return {backend.token_text([i]): lp for i, lp in (t.top or [])}

    return {"tokens": [backend.token_text([t.id]) for t in infos],
            "token_logprobs": [t.logprob for t in infos],
            "top_logprobs": [top(t) for t in infos],
            "text_offset": text_offsets(backend, [t.id for t in infos], base)}


def chat_logprob(backend: Backend, t: TokenInfo) -> dict[str, Any]:
    def entry(i: int, lp: float) -> dict[str, Any]:
        return {"token": backend.token_text([i]), "logprob": lp, "bytes": list(backend.token_bytes([i]))}

    return {**entry(t.id, t.logprob if t.logprob is not None else 0.0),
            "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]}


class _Choice:
    def __init__(self) -> None:
        self.prompt: list[TokenInfo] = []
        self.tokens: list[TokenInfo] = []
        self.text = ""
        self.finish: str | None = None
        self.completion_tokens = 0


class _Shape:
    object = ""

    def __init__(self, backend: Backend, rid: str, created: int, count: int) -> None:
        self.backend, self.rid, self.created = backend, rid, created
        self.choices = [_Choice() for _ in range(count)]

    def add(self, k: int, ev: Event) -> None:
        c = self.choices[k]
        if ev.kind == "error":
            raise RuntimeError(f"generation failed: {ev.error!r}") from ev.error
        if ev.kind == "prompt":
            c.prompt = ev.tokens or []
        elif ev.kind == "token":
            assert ev.token is not None
            c.tokens.append(ev.token)
            c.text += ev.text
        elif ev.kind == "done":
            c.text += ev.text
            c.finish = "stop" if ev.finish_reason == "cancelled" else ev.finish_reason
            c.completion_tokens = ev.completion_tokens

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": self.object + (".chunk" if self.object == "chat.completion" else ""),
                "created": self.created, "model": self.backend.name, "choices": choices}

    def usage_chunk(self, prompt_tokens: int) -> dict[str, Any]:
        return {**self.chunk([]), "usage": self.usage(prompt_tokens)}


class Completion(_Shape):
    """``/v1/completions``: echo, logprobs N, one choice per (prompt, n)."""

    object = "text_completion"

    def __init__(self, backend: Backend, rid: str, created: int, echo: bool, logprobs: int | None,
                 prompt_texts: list[str]) -> None:
        super().__init__(backend, rid, created, len(prompt_texts))
        self.echo, self.logprobs, self.prompt_texts = echo, logprobs, prompt_texts
        self.sent = [0] * len(prompt_texts)  # characters streamed so far, per choice

    def _logprobs(self, k: int) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        c = self.choices[k]
        if not self.echo:
            return completion_logprobs(self.backend, c.tokens)
        out = completion_logprobs(self.backend, c.prompt + c.tokens)
        # generated tokens' offsets count from the end of the prompt's text as returned
        n = len(c.prompt)
        gen = text_offsets(self.backend, [t.id for t in c.tokens], len(self.prompt_texts[k]))
        out["text_offset"] = out["text_offset"][:n] + gen
        return out

    def response(self, prompt_tokens: int) -> dict[str, Any]:
        choices = []
        for k, c in enumerate(self.choices):
            text = (self.prompt_texts[k] if self.echo else "") + c.text
            choices.append({"text": text, "index": k, "logprobs": self._logprobs(k), "finish_reason": c.finish})
        return {**self.chunk(choices), "usage": self.usage(prompt_tokens)}

    def opening(self) -> list[dict[str, Any]]:
        if not self.echo or self.logprobs is not None:
            return []  # echo with logprobs goes out with the prompt's scores
        out = []
        for k, text in enumerate(self.prompt_texts):
            self.sent[k] += len(text)
            out.append(self.chunk([{"text": text, "index": k, "logprobs": None, "finish_reason": None}]))
        return out

    def stream(self, k: int, ev: Event) -> list[dict[str, Any]]:
        self.add(k, ev)
        c = self.choices[k]
        if ev.kind == "prompt":
            text = self.prompt_texts[k]
            lp = completion_logprobs(self.backend, c.prompt, 0)
            self.sent[k] += len(text)
            return [self.chunk([{"text": text, "index": k, "logprobs": lp, "finish_reason": None}])]
        if ev.kind == "token":
            if not ev.text and self.logprobs is None:
                return []
            lp = None
            if self.logprobs is not None:
                assert ev.token is not None
                lp = completion_logprobs(self.backend, [ev.token], self.sent[k])
            self.sent[k] += len(ev.text)
            return [self.chunk([{"text": ev.text, "index": k, "logprobs": lp, "finish_reason": None}])]
        if ev.kind == "done":
            return [self.chunk([{"text": ev.text, "index": k, "logprobs": None, "finish_reason": c.finish}])]
        return []


class Chat(_Shape):
    """``/v1/chat/completions``: n choices of one conversation, logprobs in the chat shape."""

    object = "chat.completion"

    def __init__(self, backend: Backend, rid: str, created: int, logprobs: bool, n: int) -> None:
        super().__init__(backend, rid, created, n)
        self.logprobs = logprobs

    def _content(self, tokens: list[TokenInfo]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        eot = self.backend.tokenizer.eot_id
        return {"content": [chat_logprob(self.backend, t) for t in tokens if t.id != eot]}

    def response(self, prompt_tokens: int) -> dict[str, Any]:
        choices = [{"index": k, "message": {"role": "assistant", "content": c.text},
                    "logprobs": self._content(c.tokens), "finish_reason": c.finish}
                   for k, c in enumerate(self.choices)]
        return {**self.chunk(choices), "object": "chat.completion", "usage": self.usage(prompt_tokens)}

    def opening(self) -> list[dict[str, Any]]:
        return [self.chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]) for k in range(len(self.choices))]

    def stream(self, k: int, ev: Event) -> list[dict[str, Any]]:
        self.add(k, ev)
        c = self.choices[k]
        if ev.kind == "token":
            lp = self._content([ev.token]) if ev.token is not None else None
            if not ev.text and not (lp and lp["content"]):
                return []
            return [self.chunk([{"index": k, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}])]
        if ev.kind == "done":
            out = []
            if ev.text:
                out.append(self.chunk([{"index": k, "delta": {"content": ev.text}, "logprobs": None,
                                        "finish_reason": None}]))
            out.append(self.chunk([{"index": k, "delta": {}, "logprobs": None, "finish_reason": c.finish}]))
            return out
        return []
