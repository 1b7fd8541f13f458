"""Text streaming against references: Python's incremental UTF-8 decoder, the tokenizer's
decode of the engine's ids, and one-prompt-at-a-time generation."""

from __future__ import annotations

import codecs
import random

import pytest
import torch

from gptforge.generate.engine import GenerationConfig, generate
from gptforge.generate.text import (
    TextStream,
    generate_text,
    generate_texts,
    stream_chunks,
    stream_text,
    utf8_complete_length,
)
from tests.generate.gen_helpers import ScriptedModel, tiny_gpt

TRICKY = "Grüße, 世界! 你好吗？ 😀👍🏽 naïve café — ok\n日本語のテキスト 🎉"


def test_utf8_holdback_matches_pythons_incremental_decoder() -> None:
    data = TRICKY.encode()
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), 12))
        ref = codecs.getincrementaldecoder("utf-8")()
        pending, ours, theirs = b"", "", ""
        for a, b in zip([0, *cuts], [*cuts, len(data)]):
            pending += data[a:b]
            n = utf8_complete_length(pending)
            ours += pending[:n].decode("utf-8")
            pending = pending[n:]
            theirs += ref.decode(data[a:b])
            assert ours == theirs
    assert utf8_complete_length(b"a\xc3") == 1
    assert utf8_complete_length(b"\xf0\x9f\x98") == 0
    assert utf8_complete_length(b"\xf0\x9f\x98\x80") == 4
    assert utf8_complete_length(b"\xff") == 1  # invalid bytes are not held back forever


def test_stream_joined_equals_decoded_text_cjk_emoji(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    ids = tok.encode(TRICKY)
    assert any(b"\xef\xbf\xbd" in tok.decode([i]).encode() for i in ids)  # some tokens split a char
    model = ScriptedModel(ids + [tok.eot_id], tok.vocab_size)
    pieces = list(stream_text(model, tok, "x", GenerationConfig(max_new_tokens=200, temperature=0)))
    assert "".join(pieces) == TRICKY
    assert len(pieces) > 10  # streamed piece by piece, not at the end
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_split_over_tokens_is_never_printed(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    ids = tok.encode("Hello 世界<|end|> and more text")
    model = ScriptedModel(ids, tok.vocab_size)
    cfg = GenerationConfig(max_new_tokens=50, temperature=0, stop_strings=["<|end|>"])
    chunks = list(stream_chunks(model, tok, "x", cfg))
    assert "".join(c.text for c in chunks) == "Hello 世界"
    assert chunks[-1].finish_reason == "stop"
    assert all("<" not in c.text for c in chunks)
    cfg = GenerationConfig(max_new_tokens=3, temperature=0)
    chunks = list(stream_chunks(model, tok, "x", cfg))
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 3


def test_text_stream_holds_back_a_possible_stop_prefix() -> None:
    class Bytes:  # a byte-level tokenizer: id i is byte i
        def decode_bytes(self, ids: list[int]) -> bytes:
            return bytes(ids)

    ts = TextStream(Bytes(), stop_strings=["END"])
    out = [ts.push(list(b"abcE")), ts.push(list(b"N")), ts.push(list(b"x")), ts.push(list(b"EN")), ts.push(list(b"D!"))]
    assert out == ["abc", "", "ENx", "", ""]
    assert ts.stopped and ts.emitted == "abcENx"


def test_sampled_text_equals_decoding_the_engine_ids(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    prompt = "Once upon a time, 小猫"
    for seed in range(3):
        cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=seed)
        text = generate_text(model, tok, prompt, cfg)
        ids = generate(model, torch.tensor([tok.encode(prompt)]), 40, temperature=1.0, seed=seed,
                       stop_token_ids=[tok.eot_id])
        new = ids[0, len(tok.encode(prompt)) :].tolist()
        if tok.eot_id in new:
            new = new[: new.index(tok.eot_id)]
        assert text == tok.decode(new)
        assert "".join(stream_text(model, tok, prompt, cfg)) == text


def test_empty_prompt_starts_from_end_of_text(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0, stop_at_eot=False)
    ids = generate(model, torch.tensor([[tok.eot_id]]), 10, temperature=0)
    assert generate_text(model, tok, "", cfg) == tok.decode(ids[0, 1:].tolist())


def test_batched_texts_equal_one_by_one(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    prompts = ["a", "The quick brown fox jumps", "東京"]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop_strings=["e"])
    assert generate_texts(model, tok, prompts, cfg) == [generate_text(model, tok, p, cfg) for p in prompts]


def test_num_samples_gives_several_texts(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    texts = generate_texts(model, tok, ["hi"], GenerationConfig(max_new_tokens=8, num_samples=3, seed=0))
    assert len(texts) == 3 and len(set(texts)) > 1
    with pytest.raises(Exception, match="num_samples"):
        generate_text(model, tok, "hi", GenerationConfig(num_samples=2))
