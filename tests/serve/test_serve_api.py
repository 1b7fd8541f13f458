"""The server against real clients: the official openai package and raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.serve.server_utils import start_server

openai = pytest.importorskip("openai")


def _client(server, key: str = "unused") -> object:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _reference(model_dir, prompt: str, seed: int, max_tokens: int, temperature: float) -> str:
    from gptforge.generate.engine import GenerationConfig, generate_text
    from gptforge.model.loading import load_model

    model = load_model(model_dir)
    cfg = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, seed=seed)
    return generate_text(model, model.tokenizer, prompt, cfg)


def test_completion_matches_generate(server, tiny_model_dir) -> None:
    client = _client(server)
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0.9, seed=7)
    assert r.choices[0].text == _reference(tiny_model_dir, "Hello there", 7, 12, 0.9)
    assert r.usage.prompt_tokens == 2


def test_completion_matches_cli(server, tiny_model_dir, cli) -> None:
    client = _client(server)
    r = client.completions.create(model="tiny", prompt="To be", max_tokens=10, temperature=0.8, seed=3)
    out = cli("generate", "--model", str(tiny_model_dir), "--prompt", "To be", "--max-new-tokens", "10",
              "--temperature", "0.8", "--seed", "3", "--no-stream")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == r.choices[0].text.rstrip("\n")


def test_streamed_completion_equals_plain(server) -> None:
    client = _client(server)
    plain = client.completions.create(model="tiny", prompt="日本語 and 🙂", max_tokens=16, temperature=1.0, seed=11)
    pieces = [c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="日本語 and 🙂", max_tokens=16, temperature=1.0, seed=11, stream=True)]
    assert len(pieces) > 1
    assert "".join(pieces) == plain.choices[0].text
    # the case this test exists for: characters of several UTF-8 bytes in the sampled text, which
    # a stream must not split into U+FFFD pieces (was a tautology given the equality above)
    assert any(ord(c) > 127 and c != "\ufffd" for c in plain.choices[0].text), plain.choices[0].text


def test_chat_streamed_and_plain(server) -> None:
    client = _client(server)
    messages = [{"role": "user", "content": "Hi!"}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=5)
    assert plain.choices[0].message.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, seed=5, stream=True)]
    assert "".join(deltas) == plain.choices[0].message.content


def test_models_and_health(server) -> None:
    assert [m.id for m in _client(server).models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), 400),
        (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 400),
        (json.dumps({"prompt": "x", "max_tokens": 401}).encode(), 400),
        (json.dumps({"prompt": "x", "temperature": -0.5}).encode(), 400),
        (json.dumps({"prompt": "x", "top_p": 0}).encode(), 400),
        (json.dumps({"prompt": 12}).encode(), 400),
        (json.dumps({"prompt": "word " * 500}).encode(), 400),
        (json.dumps({"prompt": "x", "model": "gpt-9"}).encode(), 404),
        (json.dumps({"prompt": "x" * 2_000_000}).encode(), 413),
    ],
)
def test_bad_requests_get_4xx_and_server_stays_up(server, body: bytes, status: int) -> None:
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) >= {"message", "type"}
    assert httpx.get(server.url + "/health").status_code == 200


def test_bad_chat_requests(server) -> None:
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": "hi"}, {}):
        r = httpx.post(server.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text


def test_api_key_required(tiny_model_dir) -> None:
    with start_server(tiny_model_dir, api_key="sekret") as s:
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = _client(s, key="sekret").completions.create(model="tiny", prompt="a", max_tokens=2)
        assert ok.choices[0].text is not None


def test_busy_server_answers_429_and_disconnect_frees_slot(tiny_model_dir) -> None:
    with start_server(tiny_model_dir, max_concurrent=1, max_queue=0) as s:
        body = {"prompt": "once upon a time", "max_tokens": 400, "stream": True, "temperature": 1.0}
        with httpx.Client(timeout=60) as client, client.stream("POST", s.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # keep the iterator: dropping it closes the connection
            next(lines)  # generation is running and holds the only slot
            assert httpx.get(s.url + "/health").json()["active"] == 1
            busy = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert busy.status_code == 429
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # the client went away mid-stream: its slot is free again almost at once
        deadline = time.time() + 5
        while httpx.get(s.url + "/health").json()["active"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(s.url + "/health").json()["active"] == 0
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_unusable_prompts_are_400_streamed_or_not(tmp_path) -> None:
    """A char-vocabulary model has no end-of-text token: an empty prompt, or a character
    outside its vocabulary, cannot be encoded. That is the client's error, checked before
    a stream starts (found by the reliability fuzz)."""
    import torch

    from gptforge import GPT, GPTConfig, load_tokenizer
    from gptforge.model.loading import save_model

    tok = load_tokenizer("char", corpus="hello world\n")
    assert tok.eot_id is None
    torch.manual_seed(0)
    save_model(GPT(GPTConfig.from_preset("test-tiny", vocab_size=tok.vocab_size)), tmp_path / "m", tok)
    with start_server(tmp_path / "m") as s:
        for stream in (False, True):
            for prompt in ("", "héllo"):
                r = httpx.post(s.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "stream": stream})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["param"] == "prompt"
        ok = httpx.post(s.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 3, "stream": True})
        assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")
