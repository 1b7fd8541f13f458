"""GPT-2 by name (``gpt2``, ``gpt2-medium``, ...) from the Hugging Face cache on this disk.

nanoGPT's ``init_from='gpt2'`` downloads OpenAI's weights through ``transformers``.
gptforge never downloads at run time; it looks for a copy that Hugging Face's tools
already put in their cache (``huggingface-cli download openai-community/gpt2``, or any
``from_pretrained("gpt2")`` on a machine with a network). The cache layout is
Hugging Face's documented one::

    $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
      models--openai-community--gpt2/        (older downloads: models--gpt2/)
        refs/main                            the commit the name points to
        snapshots/<commit>/config.json, model.safetensors, vocab.json, merges.txt

The folder found is an ordinary Hugging Face GPT-2 folder, read by
:func:`gptforge.model.hf_gpt2.load_hf_gpt2` like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptforge.errors import ModelError

# The four sizes OpenAI released, by their short names; the hub now keeps them under
# the ``openai-community`` organisation.
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def hub_cache_dir() -> Path:
    """Where Hugging Face's hub client keeps downloaded repositories."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "hub"


def is_gpt2_name(spec: str) -> bool:
    """``gpt2``, ``gpt2-xl``, ``openai-community/gpt2``: a name, not a path on this disk."""
    return spec.removeprefix("openai-community/") in GPT2_NAMES


def find_cached_gpt2(spec: str) -> Path:
    """The cached snapshot folder of GPT-2 ``spec`` (``refs/main``'s commit, else the only one).

    Raises:
        ModelError: not in the cache; the message says how to get it.
    """
    name = spec.removeprefix("openai-community/")
    cache = hub_cache_dir()
    for repo in (f"models--openai-community--{name}", f"models--{name}"):
        snapshots = cache / repo / "snapshots"
        ref = cache / repo / "refs" / "main"
        named = snapshots / ref.read_text().strip() if ref.is_file() else None
        if named is not None and (named / "config.json").is_file():
            return named
        found = sorted(p for p in snapshots.glob("*") if (p / "config.json").is_file()) if snapshots.is_dir() else []
        if len(found) == 1:
            return found[0]
    raise ModelError(
        f"{spec} is not downloaded: no folder {name!r} here and no copy in the Hugging Face cache ({cache}). "
        f"On a machine with a network: huggingface-cli download openai-community/{name} config.json "
        f"model.safetensors vocab.json merges.txt; or pass a folder holding those files"
    )
