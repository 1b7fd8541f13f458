"""``gptforge import --format hf`` and ``gptforge export --format hf``: whole folders.

The key and config maps are in :mod:`gptforge.model.hf_gpt2`; this module reads and
writes the folders around them, atomically (a failed or interrupted run leaves the
output path as it was).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gptforge.errors import GptforgeError, ModelError, TokenizerError

logger = logging.getLogger(__name__)

# model variants (config.json "variants") that change what the weights mean.
_NOT_EXPORTABLE_KEYS = {
    "quantization": "a quantized model (export the model it was quantized from)",
    "classifier": "a classifier head (GPT2LMHeadModel has only the language-model head)",
    "lora": "a model with unmerged LoRA adapters (fine-tune with --merge, or merge them first)",
}


def _check_output(out: Path, overwrite: bool, source: str | Path) -> None:
    from gptforge.io import check_replaceable

    if out.exists() and not overwrite:
        raise GptforgeError(f"output {out} already exists; pass --overwrite or choose another path")
    if overwrite:
        check_replaceable(out, protect=(source,))


def import_hf(src: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Convert a Hugging Face GPT-2 folder into a gptforge model dir at ``out``.

    Returns:
        A summary: output path, parameter count, the config, the tokenizer used.
    """
    from gptforge.io import atomic_dir
    from gptforge.model.hf_gpt2 import load_hf_gpt2
    from gptforge.model.loading import save_model

    src, out = Path(src), Path(out)
    _check_output(out, overwrite, src)
    model = load_hf_gpt2(src)
    _check_tokenizer_saves_faithfully(model.tokenizer, src)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_model(model, tmp, tokenizer=model.tokenizer, extra_config={"imported_from": {"format": "hf", "path": str(src)}})
    return {
        "out": str(out),
        "params": model.num_params(),
        "config": {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
        "tokenizer": repr(model.tokenizer),
    }


def _check_tokenizer_saves_faithfully(tok: Any, src: Path) -> None:
    """The gpt2 kind is saved by name (its files are found again at load), so a folder whose
    vocab.json/merges.txt differ from GPT-2's would come back as the wrong tokenizer."""
    if tok is None or getattr(tok, "kind", None) != "gpt2":
        return
    from gptforge.tokenizer import load_tokenizer

    try:
        builtin = load_tokenizer("gpt2")
    except GptforgeError as e:
        logger.warning("cannot compare the tokenizer of %s with the built-in gpt2 (%s); "
                       "the saved tokenizer.json refers to the built-in gpt2 files", src, e)
        return
    if builtin.fingerprint() != tok.fingerprint():
        raise TokenizerError(
            f"the tokenizer files in {src} (vocab.json/merges.txt) differ from GPT-2's, and gptforge's "
            "gpt2 tokenizer.json stores GPT-2 by name; import needs the standard GPT-2 vocabulary"
        )


def export_hf(model_path: str | Path, out: str | Path, overwrite: bool = False, weights_only: bool = False) -> dict[str, Any]:
    """Write a gptforge model as a folder that ``GPT2LMHeadModel.from_pretrained`` (or, for a
    rope + rmsnorm + swiglu model without biases, ``LlamaForCausalLM``) and
    ``GPT2TokenizerFast.from_pretrained`` load offline.

    Args:
        model_path: a model dir or run dir.
        out: the folder to create.
        weights_only: write config + weights only (for a tokenizer GPT-2's files cannot hold).

    Raises:
        ModelError: naming the architecture features GPT-2 cannot express.
        TokenizerError: the tokenizer is not a byte-level BPE with GPT-2's split (and not weights_only).
    """
    from gptforge.interop.hf_tokenizer import hf_vocab_and_merges, write_hf_tokenizer
    from gptforge.io import atomic_dir, save_safetensors, write_json
    from gptforge.model.hf_gpt2 import hf_config_from_gpt, hf_state_from_gpt
    from gptforge.model.hf_llama import llama_config_from_gpt, llama_state_from_gpt
    from gptforge.model.loading import load_model

    out = Path(out)
    _check_output(out, overwrite, model_path)
    model = load_model(model_path)
    from gptforge.model.variants import variant_kinds

    bad = [what for key, what in _NOT_EXPORTABLE_KEYS.items() if key in variant_kinds(model)]
    if bad:
        raise ModelError(f"{model_path} cannot be exported as GPT-2: it is {'; '.join(bad)}")
    eot = model.tokenizer.eot_id if model.tokenizer is not None else None
    # A modern model (rope + rmsnorm + swiglu, no biases) goes out as Llama, any other as GPT-2;
    # what neither can express is refused by name before the slow part.
    llama = model.config.positions == "rope" or model.config.activation == "swiglu"
    if llama:
        hf_config = llama_config_from_gpt(model.config, eot_id=eot)
    else:
        hf_config = hf_config_from_gpt(model.config, eot_id=eot)
    tok = model.tokenizer
    tables = None
    if not weights_only:
        if tok is None:
            raise TokenizerError(f"{model_path} has no tokenizer.json; pass --weights-only to export without one")
        try:
            tables = hf_vocab_and_merges(tok)  # fail before writing anything
        except TokenizerError as e:
            raise TokenizerError(f"{e}; pass --weights-only to export the model without a tokenizer") from None
    hf_config["torch_dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    state = llama_state_from_gpt(model) if llama else hf_state_from_gpt(model)
    written = ["config.json", "model.safetensors"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        if not weights_only:
            written += write_hf_tokenizer(tok, tmp, model.config.block_size, tables)
    if weights_only:
        logger.warning("exported weights only: %s has no tokenizer files", out)
    return {"out": str(out), "files": written, "params": model.num_params()}
