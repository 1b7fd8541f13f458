"""gpt2: our ids must equal tiktoken's gpt2 encoding (built offline from the same files)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizer_stress import STRESS_TEXT

from gptforge.errors import TokenizerError
from gptforge.tokenizer.gpt2 import GPT2Tokenizer, bytes_to_unicode, gpt2_files

TRICKY = [
    "",
    "a",
    " ",
    "\n",
    "  \n\n  ",
    "Hello world",
    "   leading and trailing   ",
    "I'm you're THEY'RE it's",
    "😀",
    "👨‍👩‍👧‍👦",
    "中文",
    "x\r\ny",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "1234567890",
    " " * 200 + "x",
    "a" * 500,
    STRESS_TEXT,
]


@pytest.fixture(scope="module", params=["pure", "fast"])
def gpt2(request, gpt2_dir) -> GPT2Tokenizer:  # noqa: ANN001
    return GPT2Tokenizer(
        gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe", fast=request.param == "fast"
    )


def test_byte_table_is_a_bijection_onto_printable_chars() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_tricky_strings_equal_tiktoken(gpt2: GPT2Tokenizer, tiktoken_gpt2, text: str) -> None:  # noqa: ANN001
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == text


def test_all_of_tinyshakespeare_equals_tiktoken(
    gpt2: GPT2Tokenizer, tiktoken_gpt2, shakespeare: str
) -> None:  # noqa: ANN001
    ours = gpt2.encode(shakespeare)
    assert ours == tiktoken_gpt2.encode_ordinary(shakespeare)
    assert gpt2.decode(ours) == shakespeare


def test_stress_text_per_line_and_whole(gpt2: GPT2Tokenizer, tiktoken_gpt2) -> None:  # noqa: ANN001
    for line in STRESS_TEXT.splitlines(keepends=True):
        assert gpt2.encode(line) == tiktoken_gpt2.encode_ordinary(line), repr(line)
    assert gpt2.encode_batch(STRESS_TEXT.splitlines()) == tiktoken_gpt2.encode_ordinary_batch(
        STRESS_TEXT.splitlines()
    )


def test_special_token_only_when_allowed(gpt2: GPT2Tokenizer, tiktoken_gpt2) -> None:  # noqa: ANN001
    text = "end<|endoftext|>start"
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257
    plain = gpt2.encode(text)
    assert 50256 not in plain
    assert plain == tiktoken_gpt2.encode(text, disallowed_special=())
    allowed = gpt2.encode(text, allowed_special="all")
    assert allowed == tiktoken_gpt2.encode(text, allowed_special="all")
    assert allowed.count(50256) == 1
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == allowed
    assert gpt2.decode(allowed) == text
    with pytest.raises(TokenizerError, match="not special tokens"):
        gpt2.encode(text, allowed_special={"<|im_start|>"})


def test_decode_out_of_range_is_a_clear_error(gpt2: GPT2Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="50257 is out of range"):
        gpt2.decode([15496, 50257])
    with pytest.raises(TokenizerError, match="-1 is out of range"):
        gpt2.decode([-1])


def test_fast_and_pure_paths_agree_on_generated_text(gpt2_dir) -> None:  # noqa: ANN001
    """Fast (tiktoken) vs ours on random byte soup decoded leniently: covers odd unicode."""
    import random

    pure = GPT2Tokenizer(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe", fast=False)
    fast = GPT2Tokenizer(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe", fast=True)
    rng = random.Random(0)
    for _ in range(200):
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).decode(
            "utf-8", "replace"
        )
        text += "".join(rng.choice(" \n\t'sdlx中😀\u0301") for _ in range(rng.randrange(20)))
        assert pure.encode(text) == fast.encode(text), repr(text)


def test_missing_files_error_names_where_it_looked(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TokenizerError) as e:
        gpt2_files(tmp_path)
    msg = str(e.value)
    assert (
        str(tmp_path / "gpt2" / "encoder.json") in msg
        and "vocab.bpe" in msg
        and "GPTFORGE_DATA_DIR" in msg
    )


def test_files_found_at_top_level_too(tmp_path, gpt2_dir) -> None:  # noqa: ANN001
    import shutil

    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(gpt2_dir / name, tmp_path / name)
    assert gpt2_files(tmp_path) == (tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_load_tokenizer_gpt2_uses_data_dir(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from gptforge import load_tokenizer

    tok = load_tokenizer("gpt2")
    assert tok.kind == "gpt2" and tok.encode("Hello world") == [15496, 995]
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(tmp_path))
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer("gpt2")


def test_hugging_face_gpt2_tokenizer_json_loads_with_same_ids(
    tmp_path, gpt2_dir, tiktoken_gpt2
) -> None:  # noqa: ANN001
    """A Hugging Face GPT-2 folder's tokenizer.json (built here from the same files) loads as hf-bpe."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from gptforge import load_tokenizer

    hf = Tokenizer(
        models.BPE.from_file(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"))
    )
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "hf-bpe" and tok.vocab_size == 50257 and tok.eot_id == 50256
    for text in TRICKY:
        assert tok.encode(text) == tiktoken_gpt2.encode_ordinary(text), repr(text)
        assert tok.decode(tok.encode(text)) == text


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text()
    | st.text(alphabet=st.sampled_from(list(" \t\r\n'sSltmdve中😀\u200d\u0301שa1.!")), max_size=80)
)
def test_both_paths_equal_tiktoken_on_arbitrary_unicode(
    tokenizers_by_kind, tiktoken_gpt2, text: str
) -> None:  # noqa: ANN001
    pure, fast = tokenizers_by_kind["gpt2-pure"], tokenizers_by_kind["gpt2-fast"]
    assert pure.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert pure.encode(text, allowed_special="all") == tiktoken_gpt2.encode(
        text, allowed_special="all"
    )
    assert fast.encode(text) == tiktoken_gpt2.encode_ordinary(text)
