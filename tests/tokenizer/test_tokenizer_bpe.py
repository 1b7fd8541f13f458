"""bpe and regex-bpe: the incremental trainer against a naive reference trainer, the
hand-worked Wikipedia example, the pure helpers and the encoder's merge loop."""

from __future__ import annotations

import logging
import random

import pytest
import regex

from gptforge.errors import TokenizerError
from gptforge.tokenizer.bpe import GPT4_PATTERN, PATTERNS, BPETokenizer
from gptforge.tokenizer.bpe_core import _merge_long, bpe_merge_chunk, get_stats, merge
from gptforge.tokenizer.bpe_train import train_bpe


def naive_train(sequences: list[list[int]], num_merges: int) -> list[tuple[int, int]]:
    """Reference trainer: recount every pair of every sequence before each merge.

    No deduplication, no incremental update: the textbook algorithm. Tie-break:
    highest count, then the smallest (left, right) pair, as documented in bpe_train.
    """
    seqs = [list(s) for s in sequences]
    merges: list[tuple[int, int]] = []
    for i in range(num_merges):
        counts: dict[tuple[int, int], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        new = 256 + i
        for k, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(new)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[k] = out
    return merges


def naive_encode(ids: list[int], merges: list[tuple[int, int]]) -> list[int]:
    """Reference encoder: apply merges one by one, in learning order, over the whole sequence."""
    for i, pair in enumerate(merges):
        ids = merge(ids, pair, 256 + i)
    return ids


def test_wikipedia_example_exact_ids() -> None:
    """ "aaabdaaabac": aa -> Z (256), ab -> Y (257), ZY -> X (258) gives "XdXac"."""
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3)
    assert list(tok.merges) == [(97, 97), (97, 98), (256, 257)]
    ids = tok.encode("aaabdaaabac")
    assert ids == [258, 100, 258, 97, 99]
    assert tok.decode(ids) == "aaabdaaabac"
    assert tok.decode_bytes([258]) == b"aaab"


def test_get_stats_and_merge_small_examples() -> None:
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([1, 1, 1]) == {(1, 1): 2}
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([1, 1, 1], (1, 1), 4) == [4, 1]
    assert merge([], (1, 1), 4) == []


def _random_sequences(rng: random.Random, alphabet: str) -> list[bytes]:
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))).encode()
        for _ in range(rng.randrange(1, 8))
    ]


@pytest.mark.parametrize("seed", range(40))
def test_incremental_trainer_equals_naive_on_random_corpora(seed: int) -> None:
    rng = random.Random(seed)
    chunks = _random_sequences(rng, rng.choice(["ab", "aab", "abc", "ab c", "aaaab"]))
    weighted: dict[bytes, int] = {}
    expanded: list[list[int]] = []
    for c in chunks:
        times = rng.randrange(1, 4)
        weighted[c] = weighted.get(c, 0) + times
        expanded += [list(c)] * times
    n = rng.randrange(1, 40)
    assert train_bpe(weighted, n) == naive_train(expanded, n)


def test_bpe_kind_equals_naive_on_real_text(shakespeare: str) -> None:
    text = shakespeare[:4000]
    tok = BPETokenizer.train(text, 256 + 60)
    assert list(tok.merges) == naive_train([list(text.encode())], 60)
    assert tok.encode(text) == naive_encode(list(text.encode()), list(tok.merges))


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_regex_bpe_kind_equals_naive_on_real_text(shakespeare: str, pattern: str) -> None:
    from tokenizer_stress import STRESS_TEXT

    text = shakespeare[:6000] + STRESS_TEXT
    tok = BPETokenizer.train(text, 256 + 80, pattern)
    chunks = [list(w.encode()) for w in regex.findall(PATTERNS[pattern], text)]  # not deduplicated
    merges = naive_train(chunks, 80)
    assert list(tok.merges) == merges
    expected = [t for c in chunks for t in naive_encode(c, merges)]
    assert tok.encode(text) == expected


def test_same_corpus_same_merges(shakespeare: str) -> None:
    a = BPETokenizer.train(shakespeare[:20000], 400, "gpt4", ["<|endoftext|>"])
    b = BPETokenizer.train(shakespeare[:20000], 400, "gpt4", ["<|endoftext|>"])
    assert list(a.merges) == list(b.merges) and a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("seed", range(30))
def test_long_chunk_merge_equals_rescanning_loop(seed: int) -> None:
    """The heap-based encoder of long chunks gives what the simple loop (the reference) gives."""
    rng = random.Random(seed)
    text = "".join(rng.choice("aab c") for _ in range(rng.randrange(70, 300))).encode()
    merges_list = train_bpe(
        {text[: len(text) // 2]: 1}, 30
    )  # merges learned on half, applied to all
    table = {p: 256 + i for i, p in enumerate(merges_list)}
    ids = list(text)
    assert _merge_long(ids, table) == naive_encode(ids, merges_list)
    assert bpe_merge_chunk(ids, table) == naive_encode(ids, merges_list)


def test_specials_get_the_last_ids_and_are_cut_from_training() -> None:
    corpus = "ab<|endoftext|>ab<|endoftext|>ab<|endoftext|>"
    tok = BPETokenizer.train(corpus, 256 + 2 + 1, "gpt4", ["<|endoftext|>"])
    # "<|" would be the most frequent pair if the special were not cut out first
    assert list(tok.merges) == [(97, 98)]
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1}
    assert tok.eot_id == tok.vocab_size - 1
    assert tok.encode(corpus, allowed_special="all").count(tok.eot_id) == 3
    assert tok.eot_id not in tok.encode(corpus)


def test_vocab_below_256_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="at least 256"):
        BPETokenizer.train("hello", 255)
    with pytest.raises(TokenizerError, match="at least 257"):
        BPETokenizer.train("hello", 256, "gpt4", ["<|endoftext|>"])


def test_empty_corpus_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="empty"):
        BPETokenizer.train("", 300)


def test_vocab_larger_than_corpus_allows_stops_early_with_warning(caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.WARNING, logger="gptforge"):
        tok = BPETokenizer.train("abcabc", 1000)
    assert list(tok.merges) == [(97, 98), (256, 99), (257, 257)]  # ab, abc, abcabc: then one token
    assert tok.encode("abcabc") == [tok.vocab_size - 1]
    assert "no pairs left" in caplog.text


def test_gpt4_pattern_splits_like_tiktoken_cl100k() -> None:
    """Our GPT-4 pattern chunks text exactly like tiktoken's cl100k pattern (read from tiktoken)."""
    import inspect

    pytest.importorskip("tiktoken")
    from tiktoken_ext.openai_public import cl100k_base
    from tokenizer_stress import STRESS_TEXT

    src = inspect.getsource(cl100k_base)
    start = src.index('r"""') + 4
    ref = src[start : src.index('"""', start)]
    for text in [
        STRESS_TEXT,
        STRESS_TEXT + "HELLO'S  world\n\n  x 12345 ...!!\r\n",
        "a \n ",
        "x\n   ",
        "a  ",
    ]:
        assert regex.findall(GPT4_PATTERN, text) == regex.findall(ref, text), repr(text)


def test_streamed_batched_counts_on_workers_equal_one_pass_over_the_corpus(shakespeare: str) -> None:
    """count_chunks in small batches on 1 and 2 processes = Counter(findall) over each document."""
    from collections import Counter

    from gptforge.tokenizer.chunk_count import count_chunks

    docs = [shakespeare[i : i + 3000] + "<|endoftext|>" for i in range(0, 60000, 3000)]
    expected: Counter[str] = Counter()
    for d in docs:
        for piece in d.split("<|endoftext|>"):
            expected.update(regex.findall(PATTERNS["gpt2"], piece))
    for workers in (1, 2):
        got = count_chunks(iter(docs), PATTERNS["gpt2"], ["<|endoftext|>"], workers=workers, batch_chars=5000)
        assert got == expected and list(got) == list(expected)  # the same counts, in the same order


def test_training_on_two_workers_from_a_generator_equals_one_list(shakespeare: str) -> None:
    docs = [shakespeare[i : i + 2500] for i in range(0, 50000, 2500)]
    one = BPETokenizer.train(docs, 600, "gpt2", ["<|endoftext|>"])
    two = BPETokenizer.train((d for d in docs), 600, "gpt2", ["<|endoftext|>"], workers=2)
    assert list(one.merges) == list(two.merges) and one.fingerprint() == two.fingerprint()
    chunks = [list(w.encode()) for d in docs for w in regex.findall(PATTERNS["gpt2"], d)]
    assert list(one.merges)[:40] == naive_train(chunks, 40)  # and both are BPE
