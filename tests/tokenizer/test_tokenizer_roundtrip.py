"""Every kind: decode(encode(s)) == s on arbitrary unicode, save/load gives identical ids,
char and hf-bpe specifics."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizer_stress import STRESS_TEXT

from gptforge import load_tokenizer
from gptforge.errors import TokenizerError
from gptforge.tokenizer.char import CharTokenizer

BYTE_LEVEL = ["bpe", "regex-bpe-gpt2", "regex-bpe-gpt4", "hf-bpe", "gpt2-fast", "gpt2-pure"]
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# arbitrary unicode, with the awkward parts over-represented
texts = st.one_of(
    st.text(),
    st.text(
        alphabet=st.sampled_from(list(" \t\r\n'sltmdve中😀\u200d\u0301שa1.<|>endoftext")),
        max_size=60,
    ),
    st.lists(
        st.sampled_from(["<|endoftext|>", "<|pad|>", "<pad>", " ", "\r\n", "it's", "👨‍👩‍👧"]),
        max_size=8,
    ).map("".join),
)


@pytest.mark.parametrize("kind", BYTE_LEVEL)
@SETTINGS
@given(text=texts)
def test_byte_level_round_trip_and_never_fail(
    tokenizers_by_kind: dict, kind: str, text: str
) -> None:
    tok = tokenizers_by_kind[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert not set(ids) & set(tok.special_tokens.values())  # specials only when allowed
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@SETTINGS
@given(data=st.data())
def test_char_round_trip_on_its_alphabet(tokenizers_by_kind: dict, data: st.DataObject) -> None:
    tok = tokenizers_by_kind["char"]
    text = data.draw(st.text(alphabet=st.sampled_from(tok.chars)))
    ids = tok.encode(text)
    assert ids == [tok.chars.index(c) for c in text]
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["char", *BYTE_LEVEL])
def test_save_load_gives_identical_ids_and_fingerprint(
    tokenizers_by_kind: dict, kind: str, tmp_path, small_corpus: str
) -> None:  # noqa: ANN001
    tok = tokenizers_by_kind[kind]
    path = tok.save(tmp_path / "tk")
    assert path == tmp_path / "tk" / "tokenizer.json"
    for spec in (path, tmp_path / "tk", str(tmp_path / "tk")):
        again = load_tokenizer(spec)
        assert again.kind == tok.kind
        assert again.fingerprint() == tok.fingerprint()
        assert again.to_dict() == tok.to_dict()
        assert again.vocab_size == tok.vocab_size and again.eot_id == tok.eot_id
        assert again.encode(small_corpus, allowed_special="all") == tok.encode(
            small_corpus, allowed_special="all"
        )
    other = tokenizers_by_kind["bpe" if kind != "bpe" else "char"]
    assert other.fingerprint() != tok.fingerprint()


def test_char_tokenizer_matches_nanogpt_shakespeare_char(shakespeare: str) -> None:
    tok = load_tokenizer("char", corpus=shakespeare)
    chars = sorted(set(shakespeare))
    assert tok.vocab_size == len(chars) == 65  # nanoGPT's shakespeare_char prints "vocab size: 65"
    assert tok.encode("hii there") == [chars.index(c) for c in "hii there"]
    assert tok.eot_id is None


def test_char_unknown_character_is_a_clear_error() -> None:
    tok = CharTokenizer.train("hello world")
    with pytest.raises(TokenizerError, match=r"'é' \(U\+00E9\) at position 1"):
        tok.encode("héllo")


def test_char_specials_follow_the_characters() -> None:
    tok = CharTokenizer.train("abc", ["<|endoftext|>"])
    assert tok.special_tokens == {"<|endoftext|>": 3} and tok.eot_id == 3
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [0, 3, 1]
    with pytest.raises(TokenizerError, match="not in this char tokenizer"):
        tok.encode("a<|endoftext|>b")  # not allowed, and '<' is not in the alphabet


def test_char_spec_needs_a_corpus() -> None:
    with pytest.raises(TokenizerError, match="corpus"):
        load_tokenizer("char")


def test_char_spec_from_files_with_bad_bytes(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe text")
    with pytest.raises(TokenizerError, match=r"bad\.txt is not valid UTF-8.*--errors replace"):
        load_tokenizer("char", corpus=[bad])
    tok = load_tokenizer("char", corpus=[bad], errors="replace")
    assert "\ufffd" in tok.chars


def test_hf_bpe_ids_match_the_library_and_specials(tokenizers_by_kind: dict) -> None:
    from tokenizers import Tokenizer

    tok = tokenizers_by_kind["hf-bpe"]
    assert tok.special_tokens == {"<pad>": 0, "<|endoftext|>": 1} and tok.eot_id == 1
    ref = Tokenizer.from_str(tok.to_dict()["hf_tokenizer"])
    text = STRESS_TEXT.replace("<|endoftext|>", "")
    assert tok.encode(text) == ref.encode(text).ids
    assert tok.encode("a<|endoftext|>b", allowed_special="all")[1] == 1
    assert 1 not in tok.encode("a<|endoftext|>b")


def test_hf_bpe_vocab_size_in_gpt1_range(small_corpus: str, shakespeare: str) -> None:
    from gptforge.tokenizer.hf import HFTokenizer

    tok = HFTokenizer.train(shakespeare, 16000)
    assert tok.vocab_size == 16000
    assert tok.decode(tok.encode(small_corpus)) == small_corpus


def test_encode_batch_equals_encode(tokenizers_by_kind: dict) -> None:
    lines = STRESS_TEXT.splitlines(keepends=True)
    for kind in BYTE_LEVEL:
        tok = tokenizers_by_kind[kind]
        assert tok.encode_batch(lines) == [tok.encode(t) for t in lines], kind
        assert tok.encode_batch(lines, allowed_special="all") == [
            tok.encode(t, allowed_special="all") for t in lines
        ], kind


def test_unknown_spec_and_malformed_files(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TokenizerError, match="unknown tokenizer spec 'gpt3'.*'gpt2'"):
        load_tokenizer("gpt3")
    with pytest.raises(TokenizerError, match="holds no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "bpe", "merges": [[300, 1]]}')
    with pytest.raises(TokenizerError, match="does not exist yet"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"format_version": 99, "kind": "bpe", "merges": []}')
    with pytest.raises(TokenizerError, match="format_version 99"):
        load_tokenizer(tmp_path)
