"""Helpers for the generation tests: tiny models and a scripted model."""

from __future__ import annotations

import torch

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.model.kv_cache import KVCache


def column_major(w: torch.Tensor) -> torch.Tensor:
    """The same values stored (in, out): the layout the decoding kernels may re-store a weight in."""
    return w.t().contiguous().t()


def tiny_gpt(vocab_size: int = 97, block_size: int = 256, seed: int = 0, **kw: object) -> GPT:
    """A 2-layer, 32-wide GPT with random weights (eval mode)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def peaked_gpt(scale: float = 16.0, **kw: object) -> GPT:
    """:func:`tiny_gpt` with every weight matrix multiplied by ``scale``: peaked logits that
    depend on the context. The plain random init emits one token over and over, so an engine
    whose KV cache forgot every position but the newest still matched the references."""
    model = tiny_gpt(**kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return model


def distinct_new(out: torch.Tensor, prompt_len: int) -> int:
    """How many different ids the first row generated after its prompt."""
    return len(set(out[0, prompt_len:].tolist()))


class ScriptedModel(torch.nn.Module):
    """A stand-in for GPT that always predicts the next id of a fixed script (a mock, as in
    nanochat's engine tests): lets the text tests force CJK, emoji and stop strings."""

    def __init__(self, script: list[int], vocab_size: int, block_size: int = 512) -> None:
        super().__init__()
        self.script = list(script)
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=4)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0
        self.prompts: list[list[int]] = []  # the ids of every prefill (first row)

    def make_kv_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: object = None) -> KVCache:
        return KVCache(1, batch_size, 1, min(max_seq_len or 512, self.config.block_size), 1)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, last_only: bool = False,
                **kw: object) -> torch.Tensor:
        if kv_cache.pos == 0:
            self.prompts.append(idx[0].tolist())
            self.calls = 0  # a new generation restarts the script
        kv_cache.advance(idx.shape[1])
        i = min(self.calls, len(self.script) - 1)
        self.calls += 1
        logits = torch.zeros(idx.shape[0], 1, self.config.vocab_size)
        logits[:, :, self.script[i]] = 100.0  # argmax and (practically) the only sample
        return logits
