"""Request bodies of the API, as pydantic models that refuse what they do not know.

Every field OpenAI defines for an endpoint is either supported or refused with a 400
naming it (``suffix``, ``best_of`` other than ``n``); a field nobody defines is refused
too (``extra="forbid"``), so a client never believes an option took effect when it did
not. ``top_k`` and ``repetition_penalty`` are accepted as vLLM does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, description="new tokens to generate")
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Common):
    # str | list[str] | list[int] | list[list[int]]: checked by hand (clear errors, no coercion)
    prompt: Any = ""
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=8)
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[StrictInt]


def prompt_list(prompt: Any) -> list[str | list[int]] | str:
    """The prompts of a completion request, or an error message.

    OpenAI accepts a string, a list of strings, a list of token ids, or a list of such
    lists (a batch); booleans are not ids.
    """
    def ids(x: Any) -> bool:
        return isinstance(x, list) and len(x) > 0 and all(type(i) is int for i in x)

    if isinstance(prompt, str):
        return [prompt]
    if ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(ids(p) for p in prompt):
        return list(prompt)
    return "prompt must be a string, a list of strings, a non-empty list of token ids or a list of those"
