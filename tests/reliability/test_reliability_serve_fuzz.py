"""Fuzz the HTTP server with malformed bodies generated from its own OpenAPI schema (hypothesis).

For every POST operation in ``app.openapi()``, hypothesis draws bodies that start from the
declared schema and then break it: each property valid, of a wrong type, out of range or
missing; unknown properties; non-object JSON; invalid UTF-8 and non-JSON bytes; lying
Content-Length headers. Whatever arrives, the server must answer below 500 (a JSON error for
a 4xx, a complete event stream for a streamed 200) and stay up. 127.0.0.1 only, a bounded run.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = 200
SENT: dict[str, int] = {"examples": 0}

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=40), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    st.sampled_from([-1, 0, 1, 2**63, 1e308, "NaN", "", " ", "\x00", "🙂" * 10, "<|endoftext|>"]),
)  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    import tempfile

    import torch

    from gptforge import GPT, GPTConfig
    from gptforge.model.loading import save_model
    from gptforge.tokenizer.char import CharTokenizer
    from tests.serve.server_utils import start_server

    tok = CharTokenizer.train(string.printable)  # random Unicode prompts hit unknown characters too
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        save_model(
            GPT(GPTConfig.from_preset("test-tiny", vocab_size=tok.vocab_size, block_size=64)),
            Path(d),
            tok,
        )
        with start_server(Path(d), max_tokens_limit=16) as s:
            yield s


def _value(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy:
    """A value that fits ``schema`` (enough of JSON Schema for pydantic's output), kept small."""
    if "$ref" in schema:
        return _value(defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:
        return st.one_of([_value(s, defs) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "integer":
        lo = schema.get(
            "minimum", schema.get("exclusiveMinimum", -1) + 1 if "exclusiveMinimum" in schema else 0
        )
        hi = min(schema.get("maximum", 16), 16)  # small generations keep the run bounded
        return st.integers(min_value=int(lo), max_value=max(int(lo), int(hi)))
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0.0))
        hi = schema.get("maximum", 2.0)
        return st.floats(min_value=lo, max_value=hi, exclude_min="exclusiveMinimum" in schema)
    if kind == "string":
        return st.text(max_size=30)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(
            _value(schema.get("items", {}), defs), min_size=schema.get("minItems", 0), max_size=3
        )
    if kind == "object" or "properties" in schema:
        return _object(schema, defs)
    return ODD


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sub in props.items():
            mode = draw(st.sampled_from(["valid"] * 6 + ["odd", "absent"]))
            if mode == "absent" and name not in required:
                continue
            out[name] = draw(_value(sub, defs) if mode != "odd" else ODD)
        if draw(st.booleans()):
            out[draw(st.text(max_size=6))] = draw(ODD)
        return out

    return build()


def _post_operations() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    from gptforge.model.config import GPTConfig  # noqa: F401  (cheap import check)
    from gptforge.serve.app import create_app
    from gptforge.serve.metrics import Metrics

    class _NoScheduler:
        stats, running, queued = Metrics(), 0, 0

    class _NoBackend:  # the schema does not depend on the model
        name = "x"
        block_size = 64
        vocab_size = 256

        def start(self, **_: Any) -> _NoScheduler:
            return _NoScheduler()

        def close(self) -> None:
            pass

    app = create_app(_NoBackend())  # type: ignore[arg-type]
    spec = app.openapi()
    ops = []
    for path, item in spec["paths"].items():
        post = item.get("post")
        if post and "requestBody" in post:
            schema = post["requestBody"]["content"]["application/json"]["schema"]
            ops.append(
                (
                    path,
                    schema,
                    schema.get("$defs", {}) | spec.get("components", {}).get("schemas", {}),
                )
            )
    return ops


OPS = _post_operations()


def test_the_schema_has_the_generation_endpoints() -> None:
    assert {p for p, _, _ in OPS} >= {"/v1/completions", "/v1/chat/completions"}


@st.composite
def requests(draw: Any) -> tuple[str, bytes, dict[str, str]]:
    path, schema, defs = draw(st.sampled_from(OPS))
    shape = draw(
        st.sampled_from(["schema"] * 6 + ["json-not-object", "bytes", "bad-utf8", "lying-length"])
    )
    headers = {"content-type": "application/json"}
    if shape == "schema":
        body = json.dumps(draw(_object(schema, defs))).encode()
    elif shape == "json-not-object":
        body = json.dumps(draw(ODD)).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=200))
    elif shape == "bad-utf8":
        body = b'{"prompt": "\xff\xfe", "max_tokens": 1}'
    else:
        body = b'{"prompt": "hi", "max_tokens": 1}'
        headers["content-length"] = draw(st.sampled_from(["-1", "abc", "99999999999"]))
    return path, body, headers


def _raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int | None:
    """POST over a bare socket (any header value); the response's status code, or None if closed."""
    import socket

    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{head}\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(raw)
        sock.shutdown(
            socket.SHUT_WR
        )  # the body is all there is: a server waiting for more sees EOF
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None
    return int(data.split(b" ", 2)[1])


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(req=requests())
def test_malformed_bodies_never_cause_a_500(
    server: Any, req: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = req
    SENT["examples"] += 1
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = None
        if (
            "content-length" in headers
        ):  # httpx will not send a lying header: write the bytes ourselves
            status = _raw_post(server.port, path, body, headers)
            assert status is None or status < 500, (
                headers,
                status,
            )  # None: the server closed the connection
        else:
            r = client.post(path, content=body, headers=headers)
        if r is not None:
            assert r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
            if r.status_code >= 400:
                err = r.json()["error"]
                assert isinstance(err["message"], str) and err["message"]
            elif r.headers.get("content-type", "").startswith("text/event-stream"):
                assert r.text.rstrip().endswith("data: [DONE]"), r.text[-200:]
            elif path == "/tokenize":
                assert isinstance(r.json()["tokens"], list), r.text[:300]
            elif path == "/detokenize":
                assert isinstance(r.json()["prompt"], str), r.text[:300]
            else:
                assert r.json()["choices"], r.text[:300]
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_fuzz_ran_the_bounded_number_of_examples(server: Any) -> None:
    """Runs after the fuzz test (same module, file order): the server is still up, nothing in flight."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        h = client.get("/health").json()
    assert h["status"] == "ok" and h["active"] == 0 and h["queued"] == 0
    assert SENT["examples"] >= EXAMPLES * 0.9 or SENT["examples"] == 0
    print(f"\nreliability: server fuzz examples={SENT['examples']}")


def test_a_request_without_max_tokens_fits_a_low_server_limit(server: Any) -> None:
    """The chat default (128 tokens) is capped by --max-tokens-limit (16 here), not refused."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 16
        too_many = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 17})
        assert too_many.status_code == 400 and "17" in too_many.json()["error"]["message"]
