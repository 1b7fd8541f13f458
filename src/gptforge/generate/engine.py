"""The decoding engine: prefill once, then one token per step through the KV cache.

The engine sees token ids only (text, stop strings and streaming to a terminal
live in :mod:`gptforge.generate.text`). One step costs one forward of a single
new position per row: its keys and values are written in place into the
model's preallocated :class:`~gptforge.model.kv_cache.KVCache`, nothing is
recomputed and nothing is concatenated.

Batches of prompts with different lengths are **left padded**: ``attention_mask``
(B, T) holds 1 for real tokens and 0 for padding, padding keys are masked out,
and each row's positions start at 0 on its first real token, so every row gets
exactly the tokens it would get alone (greedy).

**Context overflow (sliding window).** The model has learned ``block_size``
positions. When the cache is full and another token must be fed, the engine
keeps the last ``context_keep`` tokens of the sequence (default: three quarters
of ``block_size``), empties the cache and prefills that window again with
positions restarting at 0; then decoding goes on. The model therefore always
sees between ``context_keep`` and ``block_size`` tokens of context; the
re-prefill costs one batched forward every ``block_size - context_keep``
tokens, much less than recomputing the window every step (nanoGPT crops to the
last ``block_size`` tokens and recomputes them on every step). A prompt longer
than ``block_size`` starts from its last ``block_size`` tokens. The returned
sequence always holds the whole prompt and every generated token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

from gptforge.errors import ModelError
from gptforge.generate.config import GenerationConfig
from gptforge.generate.sampling import (
    apply_frequency_penalty,
    apply_repetition_penalty,
    sample,
    seen_tokens,
)

logger = logging.getLogger(__name__)


def _check_left_padded(mask: torch.Tensor) -> None:
    """Padding must be on the left (0...0 1...1) with at least one real token per row."""
    m = mask.to("cpu", torch.int64)
    if (m.sum(dim=1) == 0).any():
        raise ModelError("attention_mask has a row with no real token; every prompt needs at least one")
    if (m[:, 1:] < m[:, :-1]).any():
        raise ModelError("attention_mask must pad on the left (0...0 1...1); right padding is not supported")


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions for a left-padded window: 0 on each row's first real token. (B, T) -> (B, T)."""
    return (mask.long().cumsum(dim=1) - 1).clamp_(min=0)


def stream_tokens(
    model: torch.nn.Module,
    idx: torch.Tensor,
    config: GenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Generate token by token, yielding the new id of every row at each step.

    Args:
        model: a :class:`~gptforge.model.gpt.GPT` (anything with its forward/make_kv_cache).
        idx: (B, T) prompt ids, T >= 1; left padded when ``attention_mask`` is given.
        config: decoding options; ``num_samples`` > 1 repeats each row that many times
            (row r's samples are rows r*n .. r*n+n-1).
        attention_mask: (B, T), 1 for real tokens, 0 for left padding.

    Yields:
        (B * num_samples,) LongTensor per step. A row that has produced a stop token
        yields ``pad_token_id`` afterwards; the generator ends once every row has
        stopped or after ``max_new_tokens`` steps.
    """
    cfg = config or GenerationConfig()
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ModelError(f"expected a non-empty prompt of shape (B, T), got shape {tuple(idx.shape)}; "
                         "start an empty prompt from the end-of-text token")
    device = model.transformer.wte.weight.device if hasattr(model, "transformer") else idx.device
    idx = idx.to(device)
    if attention_mask is not None:
        if attention_mask.shape != idx.shape:
            raise ModelError(f"attention_mask shape {tuple(attention_mask.shape)} != prompt shape {tuple(idx.shape)}")
        _check_left_padded(attention_mask)
        attention_mask = None if bool(attention_mask.all()) else attention_mask.to(device)
    if cfg.num_samples > 1:
        idx = idx.repeat_interleave(cfg.num_samples, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(cfg.num_samples, dim=0)
    if cfg.max_new_tokens == 0:
        return
    was_training = model.training
    if not was_training and device.type == "cpu" and not torch.compiler.is_compiling():
        # A model already in eval mode (as load_model returns it) gets the decoding kernels
        # measured fastest on this CPU; values stay the same and model.train() undoes the
        # layout (see gptforge.generate.cpu_decoding). Training-time sampling is left alone.
        from gptforge.generate.cpu_decoding import prepare_for_decoding

        prepare_for_decoding(model)
    model.eval()
    try:
        yield from _decode(model, idx, cfg, attention_mask)
    finally:
        model.train(was_training)


def _decode(
    model: torch.nn.Module, idx: torch.Tensor, cfg: GenerationConfig, attention_mask: torch.Tensor | None
) -> Iterator[torch.Tensor]:
    B, T = idx.shape
    device = idx.device
    V = model.config.vocab_size
    block = model.config.block_size
    n_new = cfg.max_new_tokens
    keep = min(cfg.context_keep or max(1, (3 * block) // 4), block)
    padded = attention_mask is not None

    # The whole sequence (prompt + every new token), written column by column.
    seq = torch.empty(B, T + n_new, dtype=torch.long, device=device)  # (B, T + new)
    seq[:, :T] = idx
    full_mask = None
    if padded:
        full_mask = torch.ones(B, T + n_new, dtype=torch.long, device=device)  # (B, T + new)
        full_mask[:, :T] = attention_mask

    stop_ids = torch.tensor(cfg.stop_token_ids or [], dtype=torch.long, device=device)
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (int(stop_ids[0]) if len(stop_ids) else 0)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed)

    seen = counts = None
    with torch.inference_mode():
        if cfg.repetition_penalty != 1.0:  # tokens present in the sequence (prompt included)
            seen = seen_tokens(idx, attention_mask, V)  # (B, V)
        if cfg.frequency_penalty != 0.0 or cfg.presence_penalty != 0.0:  # generated tokens only
            counts = torch.zeros(B, V, dtype=torch.float32, device=device)
        cache = model.make_kv_cache(B, max_seq_len=min(block, T + n_new))
        ones = torch.ones(B, 1, dtype=torch.long, device=device)

    def prefill(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward seq[:, start:end] into an empty cache; logits of the last position (B, V)."""
        cache.reset()
        mask = full_mask[:, start:end] if padded else None
        pos = _positions(mask) if padded else None
        logits = model(seq[:, start:end], kv_cache=cache, attention_mask=mask, position_ids=pos, last_only=True)
        return logits[:, -1, :], (pos[:, -1:] + 1 if padded else None)

    # Prefill: the prompt, or its last block_size tokens when it is longer than the context.
    offset = max(0, T - block)  # index in `seq` of cache position 0
    with torch.inference_mode():
        logits, next_pos = prefill(offset, T)  # (B, V), (B, 1)

    for step in range(n_new):
        cur = T + step  # length of the sequence before this step's token
        with torch.inference_mode():
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
            if counts is not None:
                logits = apply_frequency_penalty(logits, counts, cfg.frequency_penalty, cfg.presence_penalty)
            nxt = sample(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, generator)  # (B,)
            if len(stop_ids):
                nxt = torch.where(finished, pad_id, nxt)
            seq[:, cur] = nxt
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if counts is not None:
                counts.scatter_add_(1, nxt[:, None], (~finished).float()[:, None])
        yield nxt
        if len(stop_ids):
            finished |= torch.isin(nxt, stop_ids)
            if bool(finished.all()):
                return
        if step == n_new - 1:
            return
        with torch.inference_mode():
            if cache.pos >= cache.max_seq_len:  # context full: slide the window (module docstring)
                offset = cur + 1 - keep
                logits, next_pos = prefill(offset, cur + 1)
                continue
            mask = full_mask[:, offset : offset + cache.pos + 1] if padded else None
            logits = model(nxt[:, None], kv_cache=cache, attention_mask=mask, position_ids=next_pos, last_only=True)
            logits = logits[:, -1, :]  # (B, V)
            if padded:
                next_pos = next_pos + ones


def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    stop_token_ids: Sequence[int] | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    num_samples: int = 1,
    presence_penalty: float = 0.0,
    pad_token_id: int | None = None,
    context_keep: int | None = None,
) -> torch.Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Args:
        model: a GPT.
        idx: (B, T) prompt ids (left padded with ``attention_mask`` for different lengths).
        max_new_tokens: tokens to generate per row.
        temperature: 0 = greedy; top_k, top_p, min_p, penalties: see
            :mod:`gptforge.generate.sampling`.
        stop_token_ids: a row ends after producing one of these (the stop token is kept,
            later positions hold ``pad_token_id``, default the first stop id).
        seed: makes sampling reproducible (a private generator; the global RNG is untouched).
        attention_mask: (B, T), 1 = real token, 0 = left padding.
        num_samples: samples per prompt; the output has B * num_samples rows.
        context_keep: tokens kept when the context overflows (see the module docstring).

    Returns:
        (B * num_samples, T + n) LongTensor, n <= max_new_tokens (smaller only when every
        row stopped early). Padding columns of the prompt are returned as given.
    """
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
        seed=seed, num_samples=num_samples, pad_token_id=pad_token_id, context_keep=context_keep,
    )  # fmt: skip
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    prompt = idx.repeat_interleave(num_samples, dim=0) if num_samples > 1 else idx
    steps = list(stream_tokens(model, idx, cfg, attention_mask=attention_mask))
    if not steps:
        return prompt.clone()
    new = torch.stack(steps, dim=1).to(prompt.device)  # (B, n)
    return torch.cat([prompt, new], dim=1).clone()  # clone: a normal tensor, not an inference one


# Text-level helpers live in gptforge.generate.text (which imports this module);
# these thin wrappers let callers import everything from the engine.
def stream_text(model: torch.nn.Module, tokenizer: object, prompt: str | Sequence[int],
                config: GenerationConfig | None = None) -> Iterator[str]:
    """See :func:`gptforge.generate.text.stream_text`."""
    from gptforge.generate.text import stream_text as _stream_text

    return _stream_text(model, tokenizer, prompt, config)


def generate_text(model: torch.nn.Module, tokenizer: object, prompt: str | Sequence[int],
                  config: GenerationConfig | None = None) -> str:
    """See :func:`gptforge.generate.text.generate_text`."""
    from gptforge.generate.text import generate_text as _generate_text

    return _generate_text(model, tokenizer, prompt, config)
