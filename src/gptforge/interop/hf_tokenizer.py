"""Write a gptforge byte-level BPE tokenizer as Hugging Face GPT-2 tokenizer files.

``GPT2TokenizerFast.from_pretrained(folder)`` needs ``vocab.json`` (token string -> id)
and ``merges.txt`` (one merge per line, in priority order); ``tokenizer_config.json`` and
``special_tokens_map.json`` name ``<|endoftext|>`` as its BOS/EOS/UNK token.

Any tokenizer that splits text with GPT-2's regex and then merges bytes can be written,
whatever its kind: the vocabulary is read through the public interface (each id's
bytes). The merges come from the tokenizer's ``merges`` table when it has one
(``regex-bpe``); otherwise (``gpt2``) they are recovered from the vocabulary. That works
because every BPE kind in gptforge numbers a merged token after the two tokens it joins
(see :mod:`gptforge.tokenizer.bpe_core`), so the merge that made token ``t`` is what BPE
produces on ``t``'s bytes using only the merges made before ``t``: exactly two parts
(for GPT-2 this rebuilds ``vocab.bpe`` line for line; the tests check it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gptforge.errors import TokenizerError

logger = logging.getLogger(__name__)


def hf_vocab_and_merges(tok: Any) -> tuple[dict[str, int], list[str]]:
    """``vocab.json`` content and ``merges.txt`` lines for a byte-level BPE with GPT-2's split.

    Raises:
        TokenizerError: naming why the tokenizer cannot be written (its kind, its split
            pattern, a missing byte, a token that is not the merge of two others).
    """
    from gptforge.tokenizer.bpe_core import bpe_merge_chunk
    from gptforge.tokenizer.gpt2 import GPT2_PATTERN, bytes_to_unicode

    spec = tok.to_dict()
    if spec.get("pattern") != GPT2_PATTERN:
        raise TokenizerError(
            f"tokenizer kind {tok.kind!r} (split pattern {spec.get('pattern')!r}) cannot be written as "
            "GPT-2 vocab.json/merges.txt: only a byte-level BPE with GPT-2's split pattern can "
            "(the gpt2 tokenizer, or regex-bpe/hf-bpe trained with --pattern gpt2)"
        )
    special_ids = {i: s for s, i in tok.special_tokens.items()}
    spell = bytes_to_unicode()
    token_bytes: dict[int, bytes] = {i: tok.decode_bytes([i]) for i in range(tok.vocab_size) if i not in special_ids}
    byte_id: dict[int, int] = {}
    for i, b in token_bytes.items():
        if len(b) == 1:
            byte_id.setdefault(b[0], i)
    missing = [b for b in range(256) if b not in byte_id]
    if missing:
        raise TokenizerError(
            f"tokenizer kind {tok.kind!r} has no token for bytes {missing[:8]}: it is not a byte-level "
            "BPE and cannot be written as GPT-2 vocab.json/merges.txt"
        )
    known = getattr(tok, "merges", None)  # BPETokenizer keeps its merge table: use the real one
    vocab: dict[str, int] = {}
    merges: dict[tuple[int, int], int] = {}
    lines: list[str] = []
    if isinstance(known, dict):
        by_id = {new_id: pair for pair, new_id in known.items()}
    for i in range(tok.vocab_size):
        if i in special_ids:
            vocab[special_ids[i]] = i
            continue
        b = token_bytes[i]
        vocab["".join(spell[x] for x in b)] = i
        if len(b) < 2:
            continue
        if isinstance(known, dict):
            parts = list(by_id.get(i, ()))
        else:
            # BPE on the token's bytes with the merges learned before it stops at the last merge's two halves.
            parts = bpe_merge_chunk([byte_id[x] for x in b], merges)
        if len(parts) != 2 or token_bytes[parts[0]] + token_bytes[parts[1]] != b:
            raise TokenizerError(
                f"token {i} ({b!r}) of tokenizer kind {tok.kind!r} is not the merge of two earlier tokens, "
                "so it has no GPT-2 merges.txt form"
            )
        merges[(parts[0], parts[1])] = i
        lines.append(" ".join("".join(spell[x] for x in token_bytes[p]) for p in parts))
    if len(vocab) != tok.vocab_size:
        raise TokenizerError(f"tokenizer kind {tok.kind!r} has tokens with identical bytes; GPT-2 files need unique tokens")
    return vocab, lines


def write_hf_tokenizer(
    tok: Any, folder: Path, model_max_length: int, tables: tuple[dict[str, int], list[str]] | None = None
) -> list[str]:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``.

    ``tables`` is :func:`hf_vocab_and_merges`'s result when the caller already has it.

    Returns:
        The names of the files written.
    """
    from gptforge.io import atomic_write_bytes, write_json

    vocab, merge_lines = tables if tables is not None else hf_vocab_and_merges(tok)
    folder = Path(folder)
    write_json(folder / "vocab.json", vocab)
    atomic_write_bytes(folder / "merges.txt", ("#version: 0.2\n" + "\n".join(merge_lines) + "\n").encode("utf-8"))
    eot = "<|endoftext|>" if "<|endoftext|>" in tok.special_tokens else None
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot} if eot else {}
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "added_tokens_decoder": added,
            "errors": "replace",
            **special,
        },
    )
    write_json(folder / "special_tokens_map.json", special)
    return ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
