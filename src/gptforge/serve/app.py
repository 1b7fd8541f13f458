"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`~gptforge.serve.backend.Backend`.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (both stream
server-sent events with ``"stream": true``), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus text), vLLM's ``GET /tokenizer_info``, ``POST /tokenize``
and ``POST /detokenize`` (what lm-evaluation-harness's ``tokenizer_backend=remote``
calls), and the chat page at ``/``.

Why it is built this way:

* **One scheduler owns the model.** Requests become sequences handed to the backend's
  continuous-batching scheduler; their tokens come back as events through an
  ``asyncio.Queue``. The event loop never runs the model or the tokenizer (prompts are
  encoded in a worker thread, once), so health checks and 429 answers stay instant.
* **Bounded work, refused before the first byte.** A request is admitted (all its
  sequences queued) before any part of the response is sent; when they do not fit in
  ``max_batch`` running plus ``max_queue`` waiting, the answer is a plain 429. A client
  that goes away, streaming or not, cancels its sequences and frees their rows before
  the next decode step.
* **Bad input is the client's problem, never a 500.** The body is size-limited, must be
  JSON, is validated here (an unknown field is a 400 naming it), and every error uses
  OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
* **Only this machine's pages may drive it.** Requests whose ``Host`` is not the bound
  address or localhost, and browser requests from another ``Origin``, are refused
  unless ``--allow-origin`` lets them in (DNS rebinding, drive-by POSTs from web pages).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptforge.errors import GptforgeError
from gptforge.serve import formats
from gptforge.serve.backend import Backend, Busy, Event, SamplingParams, Sequence
from gptforge.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Common,
    prompt_list,
)

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
JSON_PATHS = {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}
KEYED_PREFIXES = ("/v1", "/tokenize", "/detokenize", "/tokenizer_info")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@dataclass
class ServeSettings:
    """Limits and safety switches of the server (each maps to a ``gptforge serve`` flag)."""

    max_batch: int = 16  # sequences decoded together (rows of the shared KV cache)
    max_queue: int = 64  # sequences waiting for a row before 429
    max_tokens_limit: int = 400  # the largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # None = the model's context length
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    host: str = "127.0.0.1"  # the bound address (Host header policy)
    allow_origins: list[str] = field(default_factory=list)  # extra origins; "*" = any
    prefill_chunk: int = 128  # prompt tokens prefilled between two decode steps
    max_concurrent: int | None = None  # old name of max_batch, kept working


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


def _busy() -> APIError:
    return APIError(429, "the server is busy: too many requests in flight; retry later",
                    type_="rate_limit_error", code="server_busy")


# ---- a request's sequences ------------------------------------------------------------------

class Run:
    """The sequences of one request; their scheduler events arrive on one asyncio queue."""

    def __init__(self, backend: Backend, prompts: list[list[int]], params: list[SamplingParams]) -> None:
        self.scheduler = backend.scheduler
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def listener(k: int) -> Any:
            def put(ev: Event) -> None:
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (k, ev))
                except RuntimeError:  # the loop is gone (server shutting down)
                    pass
            return put

        self.seqs = [Sequence(ids, p, listener(k)) for k, (ids, p) in enumerate(zip(prompts, params))]
        self.open = len(self.seqs)

    def submit(self) -> None:
        try:
            self.scheduler.submit(self.seqs)
        except Busy:
            raise _busy() from None

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel.set()
        self.scheduler.wake()

    async def events(self, request: Request) -> AsyncIterator[tuple[int, Event]]:
        """Every event until each sequence is done; cancels them all if the client leaves."""
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            while self.open:
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return  # the client went away (the finally cancels the sequences)
                k, ev = getter.result()
                if ev.kind in ("done", "error"):
                    self.open -= 1
                yield k, ev
        finally:
            watcher.cancel()
            if self.open:
                self.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---- the app ---------------------------------------------------------------------------------------

def create_app(backend: Backend, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app serving ``backend`` under ``settings`` (starts its scheduler)."""
    settings = settings or ServeSettings()
    if settings.max_concurrent is not None:
        settings.max_batch = settings.max_concurrent
    max_prompt = min(settings.max_prompt_tokens or backend.block_size, backend.block_size)
    sched = backend.start(max_batch=settings.max_batch, max_queue=settings.max_queue,
                          cache_len=max_prompt + settings.max_tokens_limit, prefill_chunk=settings.prefill_chunk)
    metrics = sched.stats
    created = int(time.time())
    app = FastAPI(title="gptforge", version="1", description=f"OpenAI-compatible API serving {backend.name}")
    app.state.backend = backend
    allowed_hosts = set(LOCAL_HOSTS) | {settings.host.strip("[]")}
    allowed_hosts |= {urlsplit(o).hostname or "" for o in settings.allow_origins if o != "*"}
    any_host = "*" in settings.allow_origins or settings.host in ("0.0.0.0", "::", "")

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(e.errors())
        return error_response(400, message, param=param)

    @app.exception_handler(GptforgeError)
    async def _input_error(_: Request, e: GptforgeError) -> JSONResponse:
        # e.g. a prompt character a char tokenizer cannot encode: the request's fault, not a 500
        return error_response(400, str(e))

    def refuse(request: Request) -> JSONResponse | None:
        """The Host/Origin policy, the API key, the body size and the content type."""
        host = (urlsplit("//" + request.headers.get("host", "")).hostname or "").lower()
        if not any_host and host not in allowed_hosts:
            return error_response(403, f"Host {host!r} is not served here (DNS rebinding guard); "
                                  "start the server with --allow-origin to open it", "permission_error")
        origin = request.headers.get("origin")
        if origin and origin != "null" and "*" not in settings.allow_origins:
            o = urlsplit(origin)
            same = o.netloc.lower() == request.headers.get("host", "").lower()
            if not same and origin.rstrip("/") not in [a.rstrip("/") for a in settings.allow_origins]:
                return error_response(403, f"Origin {origin!r} may not call this server; start it with "
                                      f"--allow-origin {origin} to allow that page", "permission_error")
        path = request.url.path
        if settings.api_key and path.startswith(KEYED_PREFIXES):
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
        if request.method == "POST" and path in JSON_PATHS:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return error_response(415, f"Content-Type must be application/json, got {kind or 'none'!r}")
        return None

    @app.middleware("http")
    async def _policy(request: Request, call_next: Any) -> Any:
        response = refuse(request) or await call_next(request)
        path = request.url.path
        metrics.count_request(path if path in JSON_PATHS or path.startswith("/v1") else "other",
                              response.status_code)
        return response

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
            message, param = _describe_validation(e.errors())
            raise APIError(400, message, param=param) from None
        if getattr(req, "model", None) not in (None, backend.name):
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {backend.name!r}",
                           param="model", code="model_not_found")
        return req

    def sampling(req: _Common, max_tokens: int | None, default_max: int, extra_stop: list[str]) -> SamplingParams:
        # a request that asks for nothing gets the default, capped by the server's limit (never a 400)
        max_tokens = min(default_max, settings.max_tokens_limit) if max_tokens is None else max_tokens
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of "
                           f"{settings.max_tokens_limit}; ask for fewer", param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        bias: dict[int, float] = {}
        for key, value in (req.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= backend.vocab_size:
                raise APIError(400, f"logit_bias key {key!r} is not a token id in [0, {backend.vocab_size})",
                               param="logit_bias")
            if not -100 <= value <= 100:
                raise APIError(400, f"logit_bias value {value} must be in [-100, 100]", param="logit_bias")
            bias[int(key)] = value
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                              seed=req.seed, stop=stop + extra_stop, frequency_penalty=req.frequency_penalty,
                              presence_penalty=req.presence_penalty, repetition_penalty=req.repetition_penalty,
                              logit_bias=bias or None)

    def encode(prompt: str | list[int]) -> list[int]:
        """Runs in a worker thread: the prompt's ids, checked against the length limit."""
        try:
            ids = backend.encode_prompt(prompt)
        except GptforgeError as e:
            raise APIError(400, f"the prompt cannot be used: {e}", param="prompt") from None
        if len(ids) > max_prompt:
            raise APIError(400, f"the prompt is {len(ids)} tokens long; this server accepts at most {max_prompt}",
                           param="prompt", code="context_length_exceeded")
        return ids

    def choices_fit(count: int) -> None:
        if count > settings.max_batch + settings.max_queue:
            raise APIError(400, f"{count} sequences (prompts x n) can never fit this server's "
                           f"{settings.max_batch + settings.max_queue} places; send fewer", param="n")

    def per_choice(params: SamplingParams, n: int, count: int) -> list[SamplingParams]:
        # The j-th of n choices uses seed + j, so choice 0 equals `gptforge generate --seed S`.
        out = []
        for k in range(count):
            j = k % n
            seed = params.seed + j if params.seed is not None and j else params.seed
            out.append(SamplingParams(**{**params.__dict__, "seed": seed}))
        return out

    def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
        return _ClosingStreamingResponse(body, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.name, "active": sched.running, "queued": sched.queued,
                "max_batch": settings.max_batch}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(sched.running, sched.queued, settings.max_batch),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": created,
                                            "owned_by": "gptforge", "max_model_len": backend.block_size,
                                            "n_params": backend.n_params}]}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return {"eos_token": backend.eos_token(), "bos_token": None, "pad_token": None,
                "model_max_length": backend.block_size, "vocab_size": backend.vocab_size,
                "tokenizer_class": type(backend.tokenizer).__name__}

    @app.post("/tokenize", openapi_extra=_body_schema(TokenizeRequest))
    async def tokenize(request: Request) -> dict[str, Any]:
        req: TokenizeRequest = await parse(request, TokenizeRequest)
        try:
            ids = await asyncio.to_thread(backend.tokenize, req.prompt)
        except GptforgeError as e:
            raise APIError(400, f"the prompt cannot be tokenized: {e}", param="prompt") from None
        return {"count": len(ids), "max_model_len": backend.block_size, "tokens": ids}

    @app.post("/detokenize", openapi_extra=_body_schema(DetokenizeRequest))
    async def detokenize(request: Request) -> dict[str, Any]:
        req: DetokenizeRequest = await parse(request, DetokenizeRequest)
        bad = [i for i in req.tokens if not 0 <= i < backend.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range [0, {backend.vocab_size})", param="tokens")
        return {"prompt": backend.token_text(req.tokens)}

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await parse(request, CompletionRequest)
        if req.suffix is not None:
            raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of must equal n: choosing the best of several samples is not supported",
                           param="best_of")
        prompts = prompt_list(req.prompt)
        if isinstance(prompts, str):
            raise APIError(400, prompts, param="prompt")
        choices_fit(len(prompts) * req.n)
        encoded = [await asyncio.to_thread(encode, p) for p in prompts]
        params = sampling(req, req.max_tokens, 16, [])
        params.logprobs = req.logprobs
        if req.echo and req.logprobs is not None:
            params.prompt_logprobs = req.logprobs
        texts = [p if isinstance(p, str) else backend.token_text(p) for p in prompts]
        count = len(prompts) * req.n
        run = Run(backend, [encoded[k // req.n] for k in range(count)], per_choice(params, req.n, count))
        run.submit()
        shape = formats.Completion(backend, f"cmpl-{secrets.token_hex(12)}", int(time.time()), req.echo,
                                   req.logprobs, [texts[k // req.n] for k in range(count)])
        prompt_tokens = sum(len(e) for e in encoded)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            return sse_response(_stream(run, request, shape, prompt_tokens, include_usage))
        async for k, ev in run.events(request):
            shape.add(k, ev)
        return shape.response(prompt_tokens)

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request) -> Any:
        req: ChatRequest = await parse(request, ChatRequest)
        prompt, template_stops = backend.render_chat([m.model_dump() for m in req.messages])
        ids = await asyncio.to_thread(encode, prompt)
        choices_fit(req.n)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = sampling(req, max_tokens, 128, template_stops)
        top = req.top_logprobs if req.top_logprobs is not None else 0
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        params.logprobs = top if req.logprobs else None
        run = Run(backend, [ids] * req.n, per_choice(params, req.n, req.n))
        run.submit()
        shape = formats.Chat(backend, f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), req.logprobs, req.n)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            return sse_response(_stream(run, request, shape, len(ids), include_usage))
        async for k, ev in run.events(request):
            shape.add(k, ev)
        return shape.response(len(ids))

    app.router.on_shutdown.append(backend.close)
    return app


async def _stream(run: Run, request: Request, shape: Any, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed request, ``[DONE]`` last (also after an error)."""
    try:
        for chunk in shape.opening():
            yield _sse(chunk)
        async for k, ev in run.events(request):
            for chunk in shape.stream(k, ev):
                yield _sse(chunk)
        if include_usage:
            yield _sse(shape.usage_chunk(prompt_tokens))
    except GptforgeError as e:
        # The status line is already sent: report the problem in OpenAI's error shape.
        yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
    finally:  # also on client disconnect
        if run.open:
            run.cancel()
    yield b"data: [DONE]\n\n"


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its generator when the response ends, however it ends.

    When a client hangs up mid-stream, Starlette stops iterating but leaves the generator
    suspended at its ``yield``; its ``finally`` (which cancels the sequences) would then
    run only when the garbage collector gets to it. Closing it here frees the rows at once.
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


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One message for pydantic's errors, and the first field named (OpenAI's ``param``)."""
    parts, param = [], None
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        param = param or loc or None
        if err.get("type") == "extra_forbidden":
            parts.append(f"the field {loc!r} is not supported by this server")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), param


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
