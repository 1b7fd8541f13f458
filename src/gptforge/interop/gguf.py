"""``gptforge export --format gguf``: one GGUF file that llama.cpp (and Ollama, LM Studio) runs.

Written with the ``gguf`` package from PyPI (the writer llama.cpp's own converters use),
architecture ``gpt2``, laid out the way llama.cpp's GPT-2 loader reads it
(``src/models/gpt2.cpp``; the Hugging Face converter ``conversion/gpt2.py`` writes the same):

* tensors ``token_embd``, ``position_embd``, ``output_norm``, ``blk.N.attn_norm``,
  ``blk.N.attn_qkv``, ``blk.N.attn_output``, ``blk.N.ffn_norm``, ``blk.N.ffn_up``,
  ``blk.N.ffn_down`` (weights and biases; every bias is required, so ``bias=False`` is
  written as zeros, which compute the same), in ``nn.Linear``'s (out, in) layout, which is
  ggml's ``{in, out}``;
* a **tied** head is not written: llama.cpp's GPT-2 loader finds no ``output.weight`` and
  uses ``token_embd`` for it (``TENSOR_DUPLICATED``); an untied head is ``output.weight``;
* the rows ``pad_vocab_to`` adds are cut (the vocabulary is the tokenizer's);
* the tokenizer inside: ``tokenizer.ggml.model = gpt2`` (byte-level BPE), the tokens in
  GPT-2's byte-to-unicode spelling, the merges in order, special tokens as CONTROL tokens,
  ``<|endoftext|>`` as BOS/EOS, and ``tokenizer.ggml.pre = gpt-2``, the pre-tokenizer name
  llama.cpp maps to GPT-2's split regex.

dtypes: ``f32``; ``f16``; ``q8_0`` and ``q4_0`` (llama.cpp's 32-value blocks with one f16
scale, computed by ``gguf.quants``). As llama.cpp's converter does, 1-D tensors, norms and
the position embeddings stay f32, and a matrix whose input width is not a multiple of 32
falls back to f16.

What can go: what llama.cpp's GPT-2 graph computes, which is what the HF export accepts
less ReLU (llama.cpp's GPT-2 FFN is GELU only). Tokenizers: a byte-level BPE with GPT-2's
split (``gpt2``, ``regex-bpe --pattern gpt2``). A ``char`` tokenizer of ASCII characters
is written exactly too, with no merges (see :func:`_char_tokens`; other characters are
refused with the reason). A ``bpe`` tokenizer without a split pattern is refused:
llama.cpp always splits text with a pre-tokenizer regex before merging (every
``tokenizer.ggml.pre`` has one), so merges that cross those boundaries would never apply
and the same text would get other ids.

A **quantized** gptforge model keeps its integers: each quantized matrix is written in the
GGUF block type that holds the same numbers (:func:`quant_blocks`), with only its float
scales rounded to f16 (a relative change under 2^-11):

* ``int8`` / ``int8-dynamic`` (one scale per row) -> ``q8_0``: every 32-value block of a row
  takes the row's scale and the int8 values as they are;
* ``int4`` with ``--group-size 32``, symmetric -> ``q4_0`` (``w = (q - 8) * d``), asymmetric
  (the default) -> ``q4_1`` (``w = q * d + m``), the 4-bit values as they are.

int4 groups of 64 or 128 are refused (a GGUF block holds 32 values with one scale: the
layouts differ, and requantizing would change the weights: quantize with ``--group-size
32``, or export the float model with ``--dtype q4_0``); so is an input width that is not a
multiple of 32. A quantized position table is written as its f32 values (exact, and small).
``--dtype`` then applies to the matrices left in float (the token embedding, an untied head).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gptforge.errors import GptforgeError, ModelError, TokenizerError

logger = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32  # values per q8_0 / q4_0 block

_NOT_EXPORTABLE_KEYS = {
    "classifier": "a classifier head (llama.cpp's GPT-2 has only the language-model head)",
    "lora": "a model with unmerged LoRA adapters (fine-tune with --merge, or merge them first)",
}

# ours -> llama.cpp, per block ("{i}" the index) and for the whole model.
BLOCK_TENSORS = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def unsupported_for_gguf(config: Any) -> list[str]:
    """The features of a GPTConfig that llama.cpp's ``gpt2`` graph cannot compute (empty = exportable)."""
    from gptforge.model.hf_gpt2 import unsupported_for_hf

    problems = unsupported_for_hf(config)
    if config.activation != "gelu" and not any(p.startswith("activation") for p in problems):
        problems.append(f"activation {config.activation!r} (llama.cpp's gpt2 feed-forward is GELU only)")
    return problems


def _char_tokens(tok: Any) -> tuple[list[str], list[str], list[int]]:
    """Tokens, (no) merges and token types of a char tokenizer whose characters are single bytes.

    Every id of a char tokenizer is one character and nothing merges, so GPT-2's pre-split
    (which cuts between characters, never inside one) changes nothing, and a one-byte
    character is its own byte-level token: the ids are exactly ours. A character of several
    UTF-8 bytes would need merges of byte tokens the vocabulary does not have (GGUF's BPE
    readers, transformers' among them, refuse a merge of unknown tokens), so it is refused.
    """
    from gptforge.tokenizer.gpt2 import bytes_to_unicode

    spell = bytes_to_unicode()
    names = {i: s for s, i in tok.special_tokens.items()}
    tokens, types = [], []
    for i in range(tok.vocab_size):
        if i in names:
            tokens.append(names[i])
            types.append(3)  # CONTROL
            continue
        b = tok.decode_bytes([i])
        if len(b) != 1:
            raise TokenizerError(
                f"char tokenizer id {i} is {b.decode('utf-8', 'replace')!r}, {len(b)} UTF-8 bytes: a GGUF "
                "gpt2 vocabulary spells it as merges of byte tokens this vocabulary lacks, so only char "
                "tokenizers of one-byte (ASCII) characters can be exported"
            )
        tokens.append(spell[b[0]])
        types.append(1)  # NORMAL
    return tokens, [], types


def gguf_vocab(tok: Any) -> tuple[list[str], list[str], list[int]]:
    """``(tokens, merges, token_types)`` for ``tokenizer.ggml.*``.

    Raises:
        TokenizerError: naming why the tokenizer cannot be written exactly.
    """
    from gptforge.interop.hf_tokenizer import hf_vocab_and_merges

    if tok.kind == "char":
        return _char_tokens(tok)
    if tok.kind == "bpe":
        raise TokenizerError(
            "tokenizer kind 'bpe' has no split pattern, and llama.cpp always pre-splits text with a "
            "regex before applying merges (every tokenizer.ggml.pre names one), so this tokenizer's "
            "merges across spaces and punctuation would never apply; retrain it as regex-bpe "
            "--pattern gpt2 to export GGUF"
        )
    try:
        vocab, merges = hf_vocab_and_merges(tok)
    except TokenizerError as e:
        raise TokenizerError(f"{e}; GGUF's gpt2 tokenizer needs the same") from None
    tokens = [""] * tok.vocab_size
    for s, i in vocab.items():
        tokens[i] = s
    special = set(tok.special_tokens.values())
    types = [3 if i in special else 1 for i in range(tok.vocab_size)]
    return tokens, merges, types


def quant_block_type(quantization: dict[str, Any]) -> str | None:
    """The GGUF block type that holds a gptforge quantization's numbers exactly (but for the
    f16 scales), or None when the layouts differ."""
    method = quantization.get("method")
    if method in ("int8", "int8-dynamic"):
        return "q8_0"
    if method == "int4" and quantization.get("group_size") == BLOCK:
        return "q4_0" if quantization.get("symmetric") else "q4_1"
    return None


def quant_blocks(module: Any, rows: int | None = None) -> tuple[str, np.ndarray]:
    """A quantized weight (N, K) (a QuantLinear or QuantEmbedding) as GGUF blocks.

    Returns ``(type, bytes)``: bytes uint8 (N, K / 32 x block size), llama.cpp's structs
    (``ggml-common.h``): q8_0 ``{f16 d; int8 qs[32]}``; q4_0 ``{f16 d; uint8 qs[16]}`` and q4_1
    ``{f16 d; f16 m; uint8 qs[16]}``, where byte j holds value j in its low nibble and value
    j + 16 in its high nibble (our int4 packing pairs neighbours instead, so it is re-packed).
    ``rows`` keeps the first rows only (the vocabulary without its padding).
    """
    from gptforge.quantize.int4 import unpack_int4

    q, s, z = (None if t is None else t.detach().cpu() for t in module.tensors())
    if rows is not None:
        q, s, z = q[:rows], s[:rows], None if z is None else z[:rows]
    n = q.shape[0]
    if module.method in ("int8", "int8-dynamic"):
        k = q.shape[1]
        d = np.repeat(s.numpy().astype(np.float16)[:, None], k // BLOCK, axis=1)  # (N, K/32) the row's scale
        blocks = np.concatenate([d.view(np.uint8).reshape(n, -1, 2), q.numpy().view(np.uint8).reshape(n, -1, BLOCK)],
                                axis=2)  # (N, K/32, 34)  # fmt: skip
        return "q8_0", blocks.reshape(n, -1)
    v = unpack_int4(q).numpy().reshape(n, -1, BLOCK)  # (N, K/32, 32) values 0..15
    qs = v[:, :, : BLOCK // 2] | (v[:, :, BLOCK // 2 :] << 4)  # (N, K/32, 16)
    parts = [s.numpy().astype(np.float16)[:, :, None].view(np.uint8)]  # (N, K/32, 2) d
    if z is not None:  # asymmetric: w = q * scale + zero, q4_1's d * q + m
        parts.append(z.numpy().astype(np.float16)[:, :, None].view(np.uint8))  # (N, K/32, 2) m
    parts.append(qs)
    return ("q4_0" if z is None else "q4_1"), np.concatenate(parts, axis=2).reshape(n, -1)


def gguf_tensors(model: Any) -> dict[str, np.ndarray | tuple[str, np.ndarray]]:
    """Arrays under llama.cpp's names (a tied head left out, padding rows cut): float32, or
    ``(type, bytes)`` from :func:`quant_blocks` for a quantized matrix."""
    from gptforge.quantize.modules import QuantEmbedding, QuantLinear

    cfg = model.config
    V = cfg.vocab_size
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if v.is_floating_point()}

    def weight(name: str, rows: int | None = None) -> np.ndarray | tuple[str, np.ndarray]:
        module = model.get_submodule(name)
        if isinstance(module, (QuantLinear, QuantEmbedding)):
            return quant_blocks(module, rows)
        return state[f"{name}.weight"][:rows].contiguous().numpy()

    def bias(name: str) -> np.ndarray:  # llama.cpp's GPT-2 needs every bias: zeros compute the same
        module = model.get_submodule(name)
        b = state.get(f"{name}.bias")
        width = module.out_features if isinstance(module, QuantLinear) else module.weight.shape[0]
        return np.zeros(width, np.float32) if b is None else b.contiguous().numpy()

    wpe = model.transformer.wpe
    out = {
        "token_embd.weight": weight("transformer.wte", V),
        # a quantized position table goes as its f32 values: exact, and llama.cpp's converter keeps it f32
        "position_embd.weight": (wpe.dequantized_weight() if isinstance(wpe, QuantEmbedding)
                                 else state["transformer.wpe.weight"]).contiguous().numpy(),  # fmt: skip
        "output_norm.weight": state["transformer.ln_f.weight"].numpy(),
        "output_norm.bias": bias("transformer.ln_f"),
    }
    if not cfg.tie_weights:
        out["output.weight"] = weight("lm_head", V)
    for i in range(cfg.n_layer):
        for ours, theirs in BLOCK_TENSORS.items():
            name = f"transformer.h.{i}.{ours}"
            out[f"blk.{i}.{theirs}.weight"] = weight(name)
            out[f"blk.{i}.{theirs}.bias"] = bias(name)
    return out


def _tensor_type(name: str, array: np.ndarray, dtype: str) -> str:
    """What a tensor is stored as, the rules of llama.cpp's converter."""
    if dtype == "f32" or array.ndim == 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
        return "f32"
    if dtype in ("q8_0", "q4_0") and array.shape[-1] % BLOCK:
        return "f16"  # blocks run along the input width
    return dtype


def _is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def export_gguf(
    model_path: str | Path, out: str | Path, dtype: str = "f32", overwrite: bool = False
) -> dict[str, Any]:
    """Write ``model_path`` as one GGUF file at ``out``.

    Returns:
        A summary: ``out``, ``bytes``, ``dtype``, ``tensor_types`` (count per stored type),
        ``params``, ``tied``.

    Raises:
        ModelError: the architecture is not llama.cpp's GPT-2 (named), or the model is
            quantized in a layout GGUF has no block type for / a classifier / has unmerged LoRA.
        TokenizerError: the tokenizer cannot be written exactly (the reason is named).
    """
    import gguf

    from gptforge.model.loading import load_model

    if dtype not in DTYPES:
        raise GptforgeError(f"unknown GGUF dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise GptforgeError(f"output {out} already exists; pass --overwrite or choose another path")
    if out.exists() and not _is_gguf_file(out):
        raise GptforgeError(f"{out} exists and is not a GGUF file; --overwrite replaces only a GGUF file")
    model = load_model(model_path)
    from gptforge.model.variants import variant_kinds

    # config.json's "variants" (not extra_config, where these lived once: checking there let
    # a classifier or an unmerged LoRA model through, and a quantized one crashed)
    kinds = variant_kinds(model)
    bad = [what for key, what in _NOT_EXPORTABLE_KEYS.items() if key in kinds]
    if bad:
        raise ModelError(f"{model_path} cannot be exported as GGUF: it is {'; '.join(bad)}")
    quant = next((v for v in getattr(model, "variants", None) or [] if v["kind"] == "quantization"), None)
    qtype = None
    if quant is not None:
        qtype = quant_block_type(quant)
        if qtype is None:
            raise ModelError(
                f"{model_path} is quantized {quant.get('method')} with groups of {quant.get('group_size')}: GGUF's "
                f"4-bit blocks hold {BLOCK} values with one scale, so these weights cannot be written as they "
                f"are; quantize with --group-size {BLOCK}, or export the float model with --dtype q4_0"
            )  # fmt: skip
        narrow = sorted({n for n, m in model.named_modules() if hasattr(m, "tensors") and n != "transformer.wpe"
                         and (m.in_features if hasattr(m, "in_features") else m.embedding_dim) % BLOCK})  # fmt: skip
        if narrow:
            raise ModelError(f"{model_path} cannot be exported as GGUF {qtype}: the input width of {narrow[0]} is "
                             f"not a multiple of {BLOCK} (a block's size); export the float model instead")  # fmt: skip
    problems = unsupported_for_gguf(model.config)
    if problems:
        raise ModelError(f"{model_path} cannot be exported as llama.cpp's gpt2: {'; '.join(problems)}")
    tok = model.tokenizer
    if tok is None:
        raise TokenizerError(f"{model_path} has no tokenizer.json; a GGUF file carries its tokenizer")
    tokens, merges, types = gguf_vocab(tok)  # fail before writing anything
    cfg = model.config

    qtypes = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
    }
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    counts: dict[str, int] = {}
    try:
        w = gguf.GGUFWriter(tmp_name, "gpt2")
        w.add_name(Path(str(model_path)).name or "gptforge-model")
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_file_type(file_types[qtype or dtype])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_merges(merges)
        if not merges:  # a char vocabulary: readers that find no merges derive them from scores
            w.add_token_scores([0.0] * len(tokens))
        w.add_token_types(types)
        if tok.eot_id is not None:
            w.add_bos_token_id(tok.eot_id)
            w.add_eos_token_id(tok.eot_id)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        for name, array in gguf_tensors(model).items():
            if isinstance(array, tuple):  # a quantized matrix, its blocks as they are
                kind, data = array
                counts[kind] = counts.get(kind, 0) + 1
                w.add_tensor(name, data, raw_dtype=qtypes[kind])
                continue
            kind = _tensor_type(name, array, dtype)
            counts[kind] = counts.get(kind, 0) + 1
            if kind in ("f32", "f16"):
                w.add_tensor(name, array.astype(np.float32 if kind == "f32" else np.float16))
            else:
                data = gguf.quants.quantize(array, qtypes[kind])
                w.add_tensor(name, data, raw_dtype=qtypes[kind])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "dtype": dtype,
        "quantized_as": qtype,
        "tensor_types": counts,
        "params": model.num_params(),
        "tied": cfg.tie_weights,
    }
