"""A GPT language model in plain PyTorch, readable in one sitting.

References:
  GPT-1: Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training"
         (post-LN blocks, GELU, learned positions).
  GPT-2: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"
         (pre-LN blocks, a final LayerNorm, residual projections scaled at init).
  Attention: Vaswani et al. 2017, "Attention Is All You Need".
  The modern options (rotary positions, RMSNorm, QK-norm, ReLU², SwiGLU, soft-capped
  logits, zero-initialised projections; all off by default) follow Llama (Touvron et
  al. 2023), Gemma 2 (2024) and modded-nanogpt; their pieces live in ``layers.py``.

Shape legend used in the comments:
  B batch, T time (new positions in this call), S key positions (cache included),
  C n_embd, nh n_head, hs head size, H MLP hidden width, V vocab size.

Parameter names follow GPT-2 (``wte``, ``wpe``, ``h.N.ln_1``, ``attn.c_attn``,
``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``, ``ln_f``, ``lm_head``)
so importing OpenAI's weights is a key map plus a transpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gptforge.errors import ModelError
from gptforge.model.config import GPTConfig
from gptforge.model.kv_cache import KVCache
from gptforge.model.layers import apply_rope, make_activation, make_norm, rope_cos_sin

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B|1, 1, T, hs/2)

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (padding, prompts)


def build_attention_mask(
    T: int,
    S: int,
    key_padding: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """The boolean mask of which key each query may attend to (True = allowed).

    Queries are the last T of S positions. Query i (absolute position S - T + i)
    sees keys j <= S - T + i (causality) that are not padding. A padded query
    would see no key at all (a softmax over nothing is NaN), so every query may
    always see itself; padded outputs are ignored anyway.

    Args:
        T: number of query positions.
        S: number of key positions (cached + new).
        key_padding: (B, S) bool or 0/1, True/1 for real tokens; or None.

    Returns:
        (B or 1, 1, T, S) bool.
    """
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    if key_padding is None:
        return causal[None, None]  # (1, 1, T, S)
    keep = key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
    return (causal & keep) | (k_pos == q_pos)  # (B, 1, T, S)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: nn.Dropout
) -> torch.Tensor:
    """Scaled dot-product attention written out: the version to learn from.

    Args:
        q: (B, nh, T, hs) queries; k, v: (B, nh, S, hs); mask: (B|1, 1, T, S) bool or None
           (None means plain causal with T == S).

    Returns:
        (B, nh, T, hs)
    """
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, S)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)  # (T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)  # (B, nh, T, S), each row sums to 1
    weights = dropout(weights)
    return weights @ v  # (B, nh, T, hs)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one new query over every cached key, written out in float32.

    Why: on some CPUs the fused kernel spends milliseconds per call on this tiny product
    (an AMD EPYC on 2 threads: ~8 ms against ~0.07 ms written out, torch 2.13);
    :mod:`gptforge.generate.cpu_decoding` measures both and sets ``decode_math``.

    Args:
        q: (B, nh, 1, hs); k, v: (B, nh, S, hs).

    Returns:
        (B, nh, 1, hs) in q's dtype.
    """
    scores = q.float() @ k.float().transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, 1, S)
    return (F.softmax(scores, dim=-1) @ v.float()).to(q.dtype)  # (B, nh, 1, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, explicit or fused (same weights, same results)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_dim
        inner = self.n_head * self.head_size  # may differ from n_embd (shakespeare-bpe500: 228 vs 232)
        self.c_attn = nn.Linear(config.n_embd, 3 * inner, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout_p = config.dropout
        self.impl = config.attention
        self.decode_math = False  # one-query decoding attention written out (see one_query_attention)
        self.one_query = one_query_attention  # what decode_math switches to (timed by its setter)
        if config.qk_norm:  # per-head norms over hs: bounded attention logits, steadier training
            self.q_norm = make_norm(config, self.head_size)
            self.k_norm = make_norm(config, self.head_size)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, C)
        qkv = self.c_attn(x)  # (B, T, 3*nh*hs)
        if T == 1:  # decoding: with one position (B, 1, 3, nh, hs) is already (B, 3, nh, 1, hs),
            # so one view replaces a split, three views and three transposes (each a ~2 us op)
            q, k, v = qkv.view(B, 3, self.n_head, 1, self.head_size).unbind(1)  # 3 x (B, nh, 1, hs)
        else:
            q, k, v = qkv.split(self.n_head * self.head_size, dim=2)  # 3 x (B, T, nh*hs)
            q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
            v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # (B, nh, T, hs)
        if rope is not None:  # rotate by position; the cache keeps rotated keys
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, S, hs) with S = cached + T
        if self.impl == "explicit":
            y = explicit_attention(q, k, v, mask, self.attn_dropout)  # (B, nh, T, hs)
        else:
            p = self.dropout_p if self.training else 0.0
            if mask is None and T == 1 and self.decode_math and not self.training:
                y = self.one_query(q, k, v)  # (B, nh, 1, hs)
            elif mask is None and T == 1:  # one new query (decoding) sees every cached key
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            elif mask is None and k.shape[2] == T:  # no cache: plain causal, flash kernels
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                if mask is None:  # several new queries against a longer cache
                    mask = build_attention_mask(T, k.shape[2], None, x.device)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        if T == 1:  # (B, nh, 1, hs) holds the heads in order already: a view, or one copy
            y = y.reshape(B, 1, self.n_head * self.head_size)  # (B, 1, nh*hs)
        else:
            y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_size)  # (B, T, nh*hs)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> H -> C with GELU (tanh), ReLU or ReLU²;
    with SwiGLU, ``c_fc`` makes [gate | up] (C -> 2H) and the activation joins them (2H -> H)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        width = 2 * config.hidden_dim if config.activation == "swiglu" else config.hidden_dim
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.act = make_activation(config.activation)
        self.c_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, H) -> (B, T, C)


class Block(nn.Module):
    """One transformer block. Pre-LN (GPT-2): x + f(ln(x)). Post-LN (GPT-1): ln(x + f(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, kv_cache: KVCache | None = None, layer: int = 0,
        rope: Rope | None = None,
    ) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), mask, kv_cache, layer, rope)  # (B, T, C)
            x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        else:
            x = self.ln_1(x + self.attn(x, mask, kv_cache, layer, rope))  # (B, T, C)
            x = self.ln_2(x + self.mlp(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    """Token (+ learned position) embeddings, ``n_layer`` blocks, a final norm (pre-LN only), an LM head."""

    # Methods callers run in place of forward (a sharded model gathers its weights around them too).
    forward_methods: tuple[str, ...] = ("hidden_states", "head")

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ModelError("model.vocab_size is not set; take it from the tokenizer (tokenizer.vocab_size)")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                # rotary positions rotate q and k instead: no position table
                **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.positions == "learned" else {}),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                # GPT-1's post-LN blocks already end in a LayerNorm, so it has no final one.
                ln_f=make_norm(config, config.n_embd) if config.norm == "pre" else nn.Identity(),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one matrix, used twice
        # see _sparse_embedding_grad; FSDP sharding switches it off
        self.sparse_embedding_grad = True
        # per-block activation checkpointing while training (train.activation_checkpointing):
        # less memory, one more forward per block in backward
        self.activation_checkpointing = False
        self.tokenizer = None  # set by load_model
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation.

        Linear and Embedding weights ~ N(0, 0.02); biases 0; norm gains 1, biases 0.
        The output projections that write into the residual stream (``attn.c_proj``
        and ``mlp.c_proj``) use std 0.02 / sqrt(2 * n_layer): each block adds two such
        outputs to the stream, and scaling keeps its variance from growing with depth.
        With ``zero_init_proj`` they start at exactly 0 instead (modded-nanogpt): every
        block is the identity at step 0 and the stream is the embedding alone.
        """
        residual_std = 0.0 if self.config.zero_init_proj else 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)  # std 0 gives exact zeros
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def _sparse_embedding_grad(self) -> bool:
        """Whether the token lookup sends its gradient as sparse rows (training forward only).

        Why: with tied weights the (V, C) matrix also gets the LM head's dense gradient.
        A dense lookup gradient would allocate and zero a second (V, C) matrix (154 MB for
        GPT-2) only to add B*T rows into it, then add all of it to the LM head's gradient;
        a sparse one adds the B*T rows straight into the LM head's gradient. The numbers are
        the same; on the CPU it saves ~10% of a small-batch GPT-2 step (``bench/model.py``).
        Only when the LM head's dense gradient is sure to be there too (a tied forward with
        grad enabled), so what reaches the optimizer is always a dense tensor; not under
        torch.compile or FSDP, which do not take sparse gradients.
        """
        return (
            self.config.tie_weights
            and self.sparse_embedding_grad
            and torch.is_grad_enabled()
            and type(self.transformer.wte) is nn.Embedding  # not a quantized or wrapped lookup
            and self.transformer.wte.weight.requires_grad
            and not torch.compiler.is_compiling()
        )

    def _check_input(
        self,
        idx: torch.Tensor,
        start: int,
        kv_cache: KVCache | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        """Raise ModelError, naming the value, for inputs the model cannot take."""
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ModelError(
                f"expected token ids as an integer tensor of shape (B, T), got {idx.dtype} of shape {tuple(idx.shape)}"
            )
        B, T = idx.shape
        if T == 0:
            raise ModelError("got an empty sequence (T = 0); pass at least one token")
        if start + T > self.config.block_size:
            raise ModelError(
                f"sequence length {start + T} exceeds model.block_size {self.config.block_size}; "
                "shorten the input (generation slides a window over it)"
            )
        if kv_cache is not None and kv_cache.batch_size != B:
            raise ModelError(f"the KV cache holds {kv_cache.batch_size} sequences but the batch has {B}")
        if kv_cache is not None and start + T > kv_cache.max_seq_len:
            raise ModelError(
                f"KV cache overflow: {start + T} positions exceed its size {kv_cache.max_seq_len}; "
                "make a larger cache (make_kv_cache(max_seq_len=...)) or crop it"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, start + T):
            raise ModelError(
                f"attention_mask must have shape (B, cached + T) = {(B, start + T)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if position_ids is not None and position_ids.shape[-1] != T:
            raise ModelError(f"position_ids must have shape (B, T) = {(B, T)}, got {tuple(position_ids.shape)}")
        # Bounds checks on the CPU only: on CUDA they would force a device sync every step,
        # and the trainer checks the dataset vocabulary against the model once instead.
        # Skipped under torch.compile, where reading a tensor value would break the graph.
        if idx.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ModelError(
                    f"token id {bad} is out of range for model.vocab_size {self.config.vocab_size}; "
                    "ids must be in [0, vocab_size): use the tokenizer the model was trained with"
                )
            if position_ids is not None and position_ids.numel():
                lo, hi = int(position_ids.min()), int(position_ids.max())
                if lo < 0 or hi >= self.config.block_size:
                    raise ModelError(
                        f"position id {lo if lo < 0 else hi} is out of range for "
                        f"model.block_size {self.config.block_size}"
                    )

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sparse_grad: bool = False,
    ) -> torch.Tensor:
        """The final hidden states (after ``ln_f``), before the LM head.

        Args:
            idx: (B, T) token ids. With a cache they are the T positions after ``kv_cache.pos``.
            kv_cache: a cache from :meth:`make_kv_cache`; it is written to and advanced by T.
            attention_mask: (B, S) with 1 for real tokens and 0 for padding, S = cached + T.
            position_ids: (B, T) positions; default ``pos .. pos + T - 1``. Left-padded
                batches pass positions that start at 0 on each row's first real token.
            sparse_grad: the token lookup's gradient as sparse rows; :meth:`forward` sets
                it when the LM head's dense gradient joins it (see ``_sparse_embedding_grad``).

        Returns:
            (B, T, C)

        Raises:
            ModelError: for a sequence longer than ``block_size`` (cache included), a full
                cache, mismatched mask/position/cache shapes, and (on the CPU) token or
                position ids out of range; the message names the value and the limit.
        """
        start = kv_cache.pos if kv_cache is not None else 0
        self._check_input(idx, start, kv_cache, attention_mask, position_ids)
        B, T = idx.shape
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=idx.device).unsqueeze(0)  # (1, T)
        wte = self.transformer.wte
        tok = F.embedding(idx, wte.weight, sparse=True) if sparse_grad else wte(idx)  # (B, T, C)
        rope = None
        if self.config.positions == "rope":
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_base)  # 2 x (B|1, 1, T, hs/2)
            x = self.transformer.drop(tok)  # (B, T, C)
        else:
            x = self.transformer.drop(tok + self.transformer.wpe(position_ids))  # (B, T, C) + (B|1, T, C)
        S = start + T
        mask = None
        if attention_mask is not None:
            mask = build_attention_mask(T, S, attention_mask, idx.device)  # (B, 1, T, S)
        elif S != T and T > 1:  # new queries after cached positions: causal offset by `start`
            mask = build_attention_mask(T, S, None, idx.device)  # (1, 1, T, S)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, block in enumerate(self.transformer.h):
            if recompute:  # keep only the block's input; its activations are recomputed in backward
                x = torch.utils.checkpoint.checkpoint(block, x, mask, None, i, rope, use_reentrant=False)  # (B, T, C)
            else:
                x = block(x, mask, kv_cache, i, rope)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.transformer.ln_f(x)  # (B, T, C)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states: the LM head, less ``pad_vocab_to``'s padding rows,
        soft-capped when ``logit_softcap`` is set.

        Every caller that projects hidden states itself (perplexity, instruct loss) goes
        through here, so a padded vocabulary never scores its padding columns.

        Args:
            h: (..., C) hidden states from :meth:`hidden_states` (any leading shape).

        Returns:
            (..., V) logits, V = ``config.vocab_size``.
        """
        logits = self.lm_head(h)  # (..., padded V)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (..., V): padding rows never predicted
        cap = self.config.logit_softcap
        if cap is not None:  # smooth clamp to (-cap, cap): no logit can run away (Gemma 2)
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits for every position, and the loss when ``targets`` are given.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids; ``IGNORE_INDEX`` (-100) positions are skipped.
            kv_cache, attention_mask, position_ids: see :meth:`hidden_states`.
            last_only: compute logits for the last position only (generation), (B, 1, V).

        Returns:
            logits (B, T, V), or ``(logits, loss)`` when targets are given.
        """
        x = self.hidden_states(
            idx, kv_cache=kv_cache, attention_mask=attention_mask, position_ids=position_ids,
            sparse_grad=self._sparse_embedding_grad(),
        )  # (B, T, C)
        if last_only and x.shape[1] > 1:  # (a decoding step's one position is the last already)
            x = x[:, [-1], :]  # (B, 1, C); a list index keeps the time dim
        logits = self.head(x)  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def make_kv_cache(
        self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A preallocated cache for ``batch_size`` sequences of up to ``max_seq_len`` (default block_size)."""
        c = self.config
        return KVCache(
            n_layer=c.n_layer,
            batch_size=batch_size,
            n_head=c.n_head,
            max_seq_len=min(max_seq_len or c.block_size, c.block_size),
            head_size=c.head_dim,
            device=self.device,
            dtype=dtype or self.transformer.wte.weight.dtype,
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors counted once). ``non_embedding`` leaves out the
        position embeddings, as nanoGPT reports; the token embedding is kept because, tied,
        it is also the LM head."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, **kwargs: object) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens``; returns (B, T + new). Temperature 0 is greedy.

        The decoding loop (KV cache, sampling methods, stop conditions) lives in
        :mod:`gptforge.generate.engine`; see :func:`gptforge.generate.engine.generate`
        for every option.
        """
        from gptforge.generate.engine import generate  # decoding is its own package

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, **kwargs)
