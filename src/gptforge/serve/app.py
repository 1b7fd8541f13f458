"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`~gptforge.serve.backend.Backend`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream
server-sent events with ``"stream": true``), ``GET /v1/models``, ``GET /health``,
and the chat page at ``/``.

Why it is built this way:

* **Never block the event loop.** Generation runs in a worker thread; text pieces
  come back through an ``asyncio.Queue``. Health checks and 429 answers stay
  instant while a long completion runs.
* **Bounded work.** At most ``max_concurrent`` generations run and at most
  ``max_queue`` wait; anything beyond gets 429 at once instead of piling up.
  A streaming client that disconnects cancels its generation (between two
  tokens) and frees its slot immediately.
* **Bad input is the client's problem, never a 500.** The body is size-limited,
  parsed and validated here, and every error uses OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptforge.errors import GptforgeError
from gptforge.serve.backend import Backend, Cancelled, SamplingParams

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeSettings:
    """Limits and safety switches of the server (each maps to a ``gptforge serve`` flag)."""

    max_concurrent: int = 1  # generations running at once (a CPU runs one well)
    max_queue: int = 16  # requests waiting for a slot before 429
    max_tokens_limit: int = 400  # the largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # None = the model's context length
    max_body_bytes: int = 1_000_000
    api_key: str | None = None


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ---- request schemas ---------------------------------------------------------------------------

class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, description="new tokens to generate")
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1)


# ---- concurrency ----------------------------------------------------------------------------------

class Slots:
    """Admission control: ``max_concurrent`` running, ``max_queue`` waiting, the rest 429."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.active = 0
        self.waiting = 0
        self._sem: asyncio.Semaphore | None = None

    async def acquire(self) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent)
        if self.active + self.waiting >= self.max_concurrent + self.max_queue:
            raise APIError(429, "the server is busy: too many requests in flight; retry later",
                           type_="rate_limit_error", code="server_busy")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        assert self._sem is not None
        self._sem.release()


async def _chunks(backend: Backend, prompt: str, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Any]:
    """Run the backend's generator in a worker thread and yield its text chunks here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def worker() -> None:
        try:
            for piece in backend.stream(prompt, params, cancel):
                put(("piece", piece))
            put(("done", None))
        except Cancelled:
            put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the event loop
            put(("error", e))

    threading.Thread(target=worker, name="gptforge-generate", daemon=True).start()
    while True:
        kind, value = await queue.get()
        if kind == "piece":
            yield value
        elif kind == "done":
            return
        else:
            raise value


# ---- the app ---------------------------------------------------------------------------------------

def create_app(backend: Backend, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app serving ``backend`` under ``settings``."""
    settings = settings or ServeSettings()
    max_prompt = settings.max_prompt_tokens or backend.block_size
    slots = Slots(settings.max_concurrent, settings.max_queue)
    created = int(time.time())
    app = FastAPI(title="gptforge", version="1", description=f"OpenAI-compatible API serving {backend.name}")
    app.state.slots = slots

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, _describe_validation(e.errors()))

    @app.exception_handler(GptforgeError)
    async def _input_error(_: Request, e: GptforgeError) -> JSONResponse:
        # e.g. a prompt character a char tokenizer cannot encode: the request's fault, not a 500
        return error_response(400, str(e))

    @app.middleware("http")
    async def _auth_and_size(request: Request, call_next: Any) -> Any:
        if settings.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), settings.api_key.encode()):
                return error_response(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                                      "authentication_error", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "invalid Content-Length header")
            if int(length) > settings.max_body_bytes:
                return error_response(413, f"request body of {length} bytes exceeds the limit of "
                                      f"{settings.max_body_bytes} bytes")
        return await call_next(request)

    async def parse(request: Request, schema: type[BaseModel]) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {settings.max_body_bytes} bytes")
        try:
            data = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        try:
            req = schema.model_validate(data)
        except ValidationError as e:
            raise APIError(400, _describe_validation(e.errors())) from None
        if req.model not in (None, backend.name):
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {backend.name!r}",
                           param="model", code="model_not_found")
        return req

    def sampling(req: _Common, default_max: int, extra_stop: list[str]) -> SamplingParams:
        # a request that asks for nothing gets the default, capped by the server's limit (never a 400)
        max_tokens = min(default_max, settings.max_tokens_limit) if req.max_tokens is None else req.max_tokens
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of "
                           f"{settings.max_tokens_limit}; ask for fewer", param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed, stop=stop + extra_stop,
                              frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty)

    def check_prompt(prompt: str) -> int:
        try:  # encodes exactly as generation will (an empty prompt starts from end-of-text)
            n = backend.count_prompt_tokens(prompt)
        except GptforgeError as e:
            raise APIError(400, f"the prompt cannot be used: {e}", param="prompt") from None
        if n > max_prompt:
            raise APIError(400, f"the prompt is {n} tokens long; this server accepts at most {max_prompt}",
                           param="prompt", code="context_length_exceeded")
        return n

    async def complete(prompt: str, params: SamplingParams) -> tuple[str, str, int]:
        """Run one whole completion; returns (text, finish_reason, completion tokens)."""
        cancel = threading.Event()
        await slots.acquire()
        try:
            chunks = [c async for c in _chunks(backend, prompt, params, cancel)]
        finally:
            cancel.set()
            slots.release()
        return "".join(c.text for c in chunks), chunks[-1].finish_reason, chunks[-1].completion_tokens

    def seeded(params: SamplingParams, i: int) -> SamplingParams:
        # The i-th of n choices uses seed + i, so n=1 equals `gptforge generate --seed S`.
        if params.seed is None or i == 0:
            return params
        return SamplingParams(**{**params.__dict__, "seed": params.seed + i})

    def streaming(prompt: str, params: SamplingParams, n: int, make_chunk: Any) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for i in range(n):
                p = seeded(params, i)
                cancel = threading.Event()
                await slots.acquire()
                try:
                    first = make_chunk(i, None, None, first=True)
                    if first is not None:
                        yield _sse(first)
                    async for chunk in _chunks(backend, prompt, p, cancel):
                        if chunk.text:
                            yield _sse(make_chunk(i, chunk.text, None))
                        if chunk.finish_reason is not None:
                            yield _sse(make_chunk(i, None, chunk.finish_reason))
                except GptforgeError as e:
                    # The status line is already sent: report the problem as an event in
                    # OpenAI's error shape and end the stream properly.
                    yield _sse({"error": {"message": str(e), "type": "invalid_request_error",
                                          "param": None, "code": None}})
                    break
                finally:  # also on client disconnect (the task is cancelled here)
                    cancel.set()
                    slots.release()
            yield b"data: [DONE]\n\n"

        if slots.active + slots.waiting >= slots.max_concurrent + slots.max_queue:
            raise APIError(429, "the server is busy: too many requests in flight; retry later",
                           type_="rate_limit_error", code="server_busy")
        return _ClosingStreamingResponse(events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.name, "active": slots.active, "queued": slots.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": created,
                                            "owned_by": "gptforge"}]}

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await parse(request, CompletionRequest)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise APIError(400, "exactly one prompt per request is supported", param="prompt")
        prompt = prompts[0]
        prompt_tokens = check_prompt(prompt)
        params = sampling(req, 16, [])
        rid, now = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        if req.stream:
            def chunk(i: int, piece: str | None, finish: str | None, first: bool = False) -> dict | None:
                if first:
                    return None
                return {"id": rid, "object": "text_completion", "created": now, "model": backend.name,
                        "choices": [{"text": piece or "", "index": i, "logprobs": None, "finish_reason": finish}]}
            return streaming(prompt, params, req.n, chunk)
        choices, completion_tokens = [], 0
        for i in range(req.n):
            text, finish, n_tokens = await complete(prompt, seeded(params, i))
            completion_tokens += n_tokens
            choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": finish})
        return {"id": rid, "object": "text_completion", "created": now, "model": backend.name, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens)}

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request) -> Any:
        req: ChatRequest = await parse(request, ChatRequest)
        prompt, template_stops = backend.render_chat([m.model_dump() for m in req.messages])
        prompt_tokens = check_prompt(prompt)
        params = sampling(req, 128, template_stops)
        rid, now = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if req.stream:
            def chunk(i: int, piece: str | None, finish: str | None, first: bool = False) -> dict:
                delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
                if piece is not None:
                    delta = {"content": piece}
                return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": backend.name,
                        "choices": [{"index": i, "delta": delta, "finish_reason": finish}]}
            return streaming(prompt, params, req.n, chunk)
        choices, completion_tokens = [], 0
        for i in range(req.n):
            text, finish, n_tokens = await complete(prompt, seeded(params, i))
            completion_tokens += n_tokens
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish})
        return {"id": rid, "object": "chat.completion", "created": now, "model": backend.name, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens)}

    return app


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its generator when the response ends, however it ends.

    When a client hangs up mid-stream, Starlette stops iterating but leaves the generator
    suspended at its ``yield``; its ``finally`` (which frees the generation slot) would then
    run only when the garbage collector gets to it. Under load that leaked slots until every
    request queued behind them. Closing it here releases the slot at once.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]


def _body_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """Declare the JSON body in the OpenAPI document (we parse it ourselves to control errors)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema.model_json_schema(
                                ref_template="#/components/schemas/{model}")}}}}


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
