"""Continuous batching: one thread owns the model and decodes every running request at once.

Decoding one token reads all the weights for a single row of arithmetic; on a CPU that
read is the cost. One forward over R rows reads them once for all R, so R requests
decode for little more than the price of one. The scheduler keeps a batched KV cache
of ``max_batch`` rows and runs a loop; between two decode steps a request may:

* **join**: its prompt is prefilled into a private one-row cache, in chunks of
  ``prefill_chunk`` tokens (one chunk per loop turn, so a long prompt does not stall
  the others' streams), then copied into a free row of the shared cache;
* **leave**: it stopped, or its client went away; its row is freed at once (the last
  running row moves into the hole, so the running rows are always ``0 .. n-1``).

Layout of the shared cache (``k``/``v`` of shape (n_layer, max_batch, nh, S, hs)): every
running row writes its next key at the same column ``P``; row r holds its tokens in
columns ``[start_r, P)`` and ignores the columns before ``start_r`` through the attention
mask. Its position ids run 0, 1, ... from ``start_r``, so what each row computes is what
it would compute alone (the model sees only its own tokens at its own positions). A
joining prompt of length L lands in ``[P - L, P)``; when ``P`` reaches the end of the
cache the rows are shifted left by the smallest ``start_r`` (the columns no row needs).

Sampling is per row with the functions of :mod:`gptforge.generate.sampling`, in the
engine's order, each request with its own seeded generator; so a request's tokens equal
``gptforge generate``'s with the same seed, whoever else is running. A row whose context
fills (``block_size`` tokens) slides its window exactly as the engine does: it leaves,
re-prefills its last ``context_keep`` tokens and joins again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gptforge.generate.sampling import (
    apply_frequency_penalty,
    apply_repetition_penalty,
    inverse_cdf,
    sample,
)
from gptforge.generate.text import TextStream
from gptforge.model.kv_cache import KVCache
from gptforge.serve.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """What one sequence asks for (the OpenAI fields, already validated by the HTTP layer)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # per generated token: its logprob and the top N (0 = only its own)
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo + logprobs)


@dataclass
class TokenInfo:
    """One generated or prompt token with its log-probability under the model."""

    id: int
    logprob: float | None = None  # None for the first prompt token (nothing predicts it)
    top: list[tuple[int, float]] | None = None  # the top N (id, logprob), best first


@dataclass
class Event:
    """What the scheduler reports to a sequence's listener (from its own thread).

    kind: ``"prompt"`` (``tokens``: the prompt's TokenInfo), ``"token"`` (``token`` and the
    ``text`` that became printable), ``"done"`` (``text``: the held-back rest,
    ``finish_reason``, ``completion_tokens``) or ``"error"`` (``error``).
    """

    kind: str
    text: str = ""
    token: TokenInfo | None = None
    tokens: list[TokenInfo] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass
class Sequence:
    """One sequence being generated; created by the HTTP layer, advanced by the scheduler."""

    prompt: list[int]
    params: SamplingParams
    listener: Callable[[Event], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    # scheduler state
    tokens: list[int] = field(default_factory=list)  # prompt + generated, for windows and penalties
    generated: int = 0
    pending: int | None = None  # the token to feed at the next decode step
    length: int = 0  # tokens in its cache row
    prefill: list[int] | None = None  # tokens still to prefill (a prompt or a slid window)
    prefill_done: int = 0
    prefill_cache: KVCache | None = None
    prefill_logits: list[torch.Tensor] = field(default_factory=list)
    scoring: bool = False  # this prefill also scores the prompt's tokens
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (1, V) bool, for the repetition penalty
    counts: torch.Tensor | None = None  # (1, V), for frequency/presence penalties
    stream: TextStream | None = None
    submitted: float = 0.0
    last_token_at: float | None = None


class Busy(Exception):
    """The scheduler's queue is full."""


class Scheduler:
    """Owns ``model`` on one thread and batches every running :class:`Sequence`.

    Args:
        model: a GPT in eval mode.
        tokenizer: its tokenizer (stop tokens, stop strings, UTF-8-safe text).
        max_batch: rows decoded together (running sequences).
        max_queue: sequences waiting for a row before :meth:`submit` raises :class:`Busy`.
        cache_len: columns of the shared cache; at most ``block_size``, and at least the
            longest prompt plus ``max_tokens`` a request may ask for.
        prefill_chunk: prompt tokens prefilled per loop turn.
        context_keep: tokens kept when a row's context fills (default 3/4 of block_size,
            as the engine).
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, max_queue: int = 64,
                 cache_len: int | None = None, prefill_chunk: int = 128,
                 context_keep: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.block = model.config.block_size
        self.cache_len = min(cache_len or self.block, self.block)
        self.prefill_chunk = max(1, prefill_chunk)
        self.keep = min(context_keep or max(1, (3 * self.block) // 4), self.block)
        self.vocab = model.config.vocab_size
        self.device = model.transformer.wte.weight.device
        self.eot = tokenizer.eot_id
        self.stats = Metrics()
        self._queue: deque[Sequence] = deque()
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []  # row i of the shared cache
        self._starts: list[int] = []  # first column of each running row
        self._P = 0  # the column every running row writes next
        self._cache: KVCache | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="gptforge-scheduler", daemon=True)
        self._thread.start()

    # ---- the API (any thread) -------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefilling)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none); raises :class:`Busy` when they do not fit."""
        with self._cv:
            if self.running + len(self._queue) + len(seqs) > self.max_batch + self.max_queue:
                raise Busy()
            now = time.perf_counter()
            for s in seqs:
                s.submitted = now
                self._queue.append(s)
            self._cv.notify()

    def wake(self) -> None:
        """Make the loop look at cancellations now (a client went away)."""
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- the loop (scheduler thread) ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not (self._queue or self._prefilling or self._running):
                    self._cv.wait()
                if self._stop:
                    return
                while self._queue and self.running < self.max_batch:
                    self._start(self._queue.popleft())
                dropped = [s for s in self._queue if s.cancel.is_set()]
                for s in dropped:
                    self._queue.remove(s)
            for s in dropped:
                s.listener(Event("done", finish_reason="cancelled"))
            try:
                with torch.inference_mode():
                    self._turn()
            except Exception as e:  # noqa: BLE001 - a bug must not kill the server: fail everyone running
                logger.exception("scheduler step failed")
                for s in self._running + self._prefilling:
                    s.listener(Event("error", error=e))
                self._running, self._starts, self._prefilling, self._P = [], [], [], 0

    def _turn(self) -> None:
        for i in reversed(range(len(self._running))):
            if self._running[i].cancel.is_set():
                self._leave(i, "cancelled")
        for s in [s for s in self._prefilling if s.cancel.is_set()]:
            self._prefilling.remove(s)
            self._finish(s, "cancelled")
        budget = self.prefill_chunk
        # Short new prompts are prefilled together: one forward reads the weights once for all.
        fresh = [s for s in self._prefilling if s.prefill_done == 0 and not s.scoring
                 and len(s.prefill or []) <= self.prefill_chunk]
        if len(fresh) > 1:
            group, total = [], 0
            for s in fresh:
                total += len(s.prefill or [])
                if group and total > 4 * self.prefill_chunk:
                    break
                group.append(s)
            self._prefill_group(group)
            budget = 0
        while self._prefilling and budget > 0:
            budget -= self._prefill_step(self._prefilling[0], budget)
        if self._running:
            self._decode_step()

    def _start(self, s: Sequence) -> None:
        p = s.params
        s.tokens = list(s.prompt)
        s.stream = TextStream(self.tokenizer, p.stop)
        if p.seed is not None:
            s.generator = torch.Generator(device=self.device)
            s.generator.manual_seed(p.seed)
        if p.repetition_penalty != 1.0:
            s.seen = torch.zeros(1, self.vocab, dtype=torch.bool, device=self.device)
            s.seen[0, torch.tensor(s.prompt, device=self.device)] = True
        if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            s.counts = torch.zeros(1, self.vocab, dtype=torch.float32, device=self.device)
        s.scoring = p.prompt_logprobs is not None
        # A prompt longer than the context starts from its last block_size tokens (as the engine).
        self._begin_prefill(s, s.tokens[-self.block:])
        self.stats.prompt_tokens += len(s.prompt)

    def _begin_prefill(self, s: Sequence, ids: list[int]) -> None:
        s.prefill, s.prefill_done, s.prefill_logits = ids, 0, []
        s.prefill_cache = self.model.make_kv_cache(1, max_seq_len=len(ids))
        self._prefilling.append(s)

    def _prefill_step(self, s: Sequence, budget: int) -> int:
        """Prefill up to ``budget`` more tokens of ``s``; returns how many."""
        assert s.prefill is not None and s.prefill_cache is not None
        lo = s.prefill_done
        hi = min(len(s.prefill), lo + budget)
        x = torch.tensor([s.prefill[lo:hi]], dtype=torch.long, device=self.device)  # (1, t)
        logits = self.model(x, kv_cache=s.prefill_cache, last_only=not s.scoring)  # (1, t or 1, V)
        s.prefill_logits.append(logits[0])
        s.prefill_done = hi
        if hi == len(s.prefill):
            self._prefilling.remove(s)
            self._prefilled(s)
        return hi - lo

    def _prefill_group(self, group: list[Sequence]) -> None:
        """Prefill several whole prompts in one left-padded forward (positions 0.. on each
        row's first real token, padding masked out, as the engine batches prompts)."""
        B, T = len(group), max(len(s.prefill or []) for s in group)
        idx = torch.zeros(B, T, dtype=torch.long)  # (B, T)
        mask = torch.zeros(B, T, dtype=torch.long)  # (B, T)
        for r, s in enumerate(group):
            ids = s.prefill or []
            idx[r, T - len(ids):] = torch.tensor(ids)
            mask[r, T - len(ids):] = 1
        pos = (mask.cumsum(dim=1) - 1).clamp_(min=0)  # (B, T)
        cache = self.model.make_kv_cache(B, max_seq_len=T)
        padded = not bool(mask.all())
        logits = self.model(idx.to(self.device), kv_cache=cache, last_only=True,
                            attention_mask=mask.to(self.device) if padded else None,
                            position_ids=pos.to(self.device))  # (B, 1, V)
        for r, s in enumerate(group):
            self._prefilling.remove(s)
            s.prefill_done = len(s.prefill or [])
            s.prefill_logits = [logits[r]]
            s.prefill_cache = None
            self._prefilled(s, cache, r, T - s.prefill_done)

    def _prefilled(self, s: Sequence, cache: KVCache | None = None, row: int = 0, offset: int = 0) -> None:
        """The prompt (or window) is prefilled (in its private cache, or row ``row`` of a group's
        cache from column ``offset``): score it, sample its next token, join the batch."""
        last = s.prefill_logits[-1][-1:].float()  # (1, V)
        if s.scoring:
            self._report_prompt(s, torch.cat(s.prefill_logits, dim=0))
            s.scoring = False
        s.prefill_logits = []
        if s.params.max_tokens == 0:
            s.prefill_cache = None
            self._finish(s, "length")
            return
        s.length = len(s.prefill or [])
        cache = cache if cache is not None else s.prefill_cache
        s.prefill, s.prefill_cache = None, None
        if not self._sampled(s, last):
            return
        assert cache is not None
        self._join(s, cache, row, offset)

    def _report_prompt(self, s: Sequence, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt's tokens 1.. under the model (token 0: None)."""
        ids = s.prefill or []
        n = s.params.prompt_logprobs or 0
        logp = F.log_softmax(logits.float(), dim=-1)  # (L, V)
        infos = [TokenInfo(ids[0], None, None)]
        if len(ids) > 1:
            target = torch.tensor(ids[1:], device=logp.device)
            chosen = logp[:-1].gather(1, target[:, None])[:, 0].tolist()  # (L-1,)
            tops = torch.topk(logp[:-1], n, dim=-1) if n > 0 else None
            for j, tok in enumerate(ids[1:]):
                top = list(zip(tops.indices[j].tolist(), tops.values[j].tolist())) if tops is not None else None
                infos.append(TokenInfo(tok, chosen[j], top))
        s.listener(Event("prompt", tokens=infos))

    def _sample_rows(self, seqs: list[Sequence], logits: torch.Tensor) -> list[TokenInfo]:
        """The next token of each sequence from its row of ``logits`` (n, V), with logprobs.

        The same operations as the engine's :func:`~gptforge.generate.sampling.sample` on each
        row alone, batched where that cannot change a value: greedy rows share one argmax;
        plain temperature rows share the shift, scale and softmax (row-wise operations), and
        each draws with its own generator. Rows with penalties or top-k/top-p go one by one.
        """
        n = len(seqs)
        biased = logits
        pairs = [(r, t, b) for r, s in enumerate(seqs) for t, b in (s.params.logit_bias or {}).items()]
        if pairs:
            biased = logits.clone()
            rows, toks, vals = zip(*pairs)
            biased.index_put_((torch.tensor(rows), torch.tensor(toks)),
                              torch.tensor(vals, dtype=logits.dtype), accumulate=True)
        chosen = [0] * n
        greedy, plain, single = [], [], []
        for r, s in enumerate(seqs):
            p = s.params
            if s.seen is not None or s.counts is not None or p.top_k is not None or p.top_p is not None:
                single.append(r)
            elif p.temperature == 0:
                greedy.append(r)
            else:
                plain.append(r)
        if greedy:
            for r, t in zip(greedy, torch.argmax(biased[greedy], dim=-1).tolist()):
                chosen[r] = t
        if plain:
            x = biased if len(plain) == n else biased[plain]  # (m, V)
            temps = torch.tensor([seqs[r].params.temperature for r in plain], dtype=torch.float64)[:, None]
            scale = temps != 1.0  # the engine leaves temperature-1 logits untouched
            if bool(scale.all()):  # (the usual case: no where() pass over the whole batch)
                shifted = x - x.max(dim=-1, keepdim=True).values
            else:
                shifted = torch.where(scale, x - x.max(dim=-1, keepdim=True).values, x)
            probs = torch.softmax(shifted.double().div_(temps).to(x.dtype), dim=-1)  # (m, V)
            u = torch.cat([torch.rand(1, 1, generator=seqs[r].generator, dtype=torch.float64, device=x.device)
                           for r in plain])  # (m, 1) each row's own draw, as sample() makes it
            for r, t in zip(plain, inverse_cdf(probs, u).tolist()):
                chosen[r] = t
        for r in single:
            s, p = seqs[r], seqs[r].params
            row = biased[r : r + 1]
            if s.seen is not None:
                row = apply_repetition_penalty(row, s.seen, p.repetition_penalty)
            if s.counts is not None:
                row = apply_frequency_penalty(row, s.counts, p.frequency_penalty, p.presence_penalty)
            chosen[r] = int(sample(row, p.temperature, p.top_k, p.top_p, None, s.generator)[0])
        infos = [TokenInfo(t) for t in chosen]
        want = [r for r, s in enumerate(seqs) if s.params.logprobs is not None]
        if want:
            logp = F.log_softmax(logits[want].float(), dim=-1)  # (w, V) the model's own distribution
            picked = logp.gather(1, torch.tensor([chosen[r] for r in want])[:, None])[:, 0].tolist()
            k = max(seqs[r].params.logprobs or 0 for r in want)
            top = torch.topk(logp, k, dim=-1) if k > 0 else None
            for j, r in enumerate(want):
                infos[r].logprob = picked[j]
                n_top = seqs[r].params.logprobs or 0
                if top is not None and n_top > 0:
                    infos[r].top = list(zip(top.indices[j, :n_top].tolist(), top.values[j, :n_top].tolist()))
        return infos

    def _sampled(self, s: Sequence, logits: torch.Tensor, info: TokenInfo | None = None) -> bool:
        """Take the next token of ``s`` (sampled from its (1, V) logits unless ``info`` is
        given) and report it; False if the sequence ended."""
        p = s.params
        if info is None:
            info = self._sample_rows([s], logits)[0]
        tok = info.id
        s.generated += 1
        s.tokens.append(tok)
        if s.seen is not None:
            s.seen[0, tok] = True
        if s.counts is not None:
            s.counts[0, tok] += 1
        now = time.perf_counter()
        if s.last_token_at is None:
            self.stats.ttft.observe(now - s.submitted)
        else:
            self.stats.token_latency.observe(now - s.last_token_at)
        s.last_token_at = now
        self.stats.tokens_generated += 1
        if self.eot is not None and tok == self.eot:  # the end-of-text token ends it, unshown
            s.listener(Event("token", token=info))
            self._finish(s, "stop")
            return False
        assert s.stream is not None
        piece = s.stream.push([tok])
        s.listener(Event("token", token=info, text=piece))
        if s.stream.stopped:
            self._finish(s, "stop")
            return False
        if s.generated >= p.max_tokens:
            self._finish(s, "length")
            return False
        s.pending = tok
        return True

    def _finish(self, s: Sequence, reason: str) -> None:
        rest = s.stream.finish() if s.stream is not None and reason != "cancelled" else ""
        s.listener(Event("done", text=rest, finish_reason=reason, completion_tokens=s.generated))

    # ---- the shared cache -----------------------------------------------------------------

    def _shared(self) -> KVCache:
        if self._cache is None:
            self._cache = self.model.make_kv_cache(self.max_batch, max_seq_len=self.cache_len)
        return self._cache

    def _shift(self, by: int) -> None:
        """Move every running row's columns by ``by`` (negative: left)."""
        c, n, P = self._shared(), len(self._running), self._P
        lo = min(self._starts)
        for buf in (c.k, c.v):
            block = buf[:, :n, :, lo:P].clone()
            buf[:, :n, :, lo + by : P + by] = block
        self._starts = [st + by for st in self._starts]
        self._P += by

    def _join(self, s: Sequence, private: KVCache, prow: int = 0, poff: int = 0) -> None:
        """Copy a prefilled row (``private`` row ``prow``, columns from ``poff``) into the next
        free row of the shared cache."""
        c = self._shared()
        L = s.length
        if not self._running:
            self._P = L
        elif self._P < L:
            self._shift(L - self._P)
        row = len(self._running)
        start = self._P - L
        c.k[:, row, :, start : self._P] = private.k[:, prow, :, poff : poff + L]
        c.v[:, row, :, start : self._P] = private.v[:, prow, :, poff : poff + L]
        self._running.append(s)
        self._starts.append(start)

    def _leave(self, i: int, reason: str | None) -> None:
        """Free row ``i`` (the last row moves into it); report the end unless reason is None."""
        s = self._running[i]
        last = len(self._running) - 1
        if i != last:
            c, st = self._shared(), self._starts[last]
            c.k[:, i, :, st : self._P] = c.k[:, last, :, st : self._P]
            c.v[:, i, :, st : self._P] = c.v[:, last, :, st : self._P]
            self._running[i], self._starts[i] = self._running[last], st
        self._running.pop()
        self._starts.pop()
        if not self._running:
            self._P = 0
        if reason is not None:
            self._finish(s, reason)

    def _decode_step(self) -> None:
        # A row whose context is full slides its window (leaves, re-prefills, joins again).
        for i in reversed(range(len(self._running))):
            s = self._running[i]
            if s.length >= self.block:
                self._leave(i, None)
                self._begin_prefill(s, s.tokens[-self.keep:])
        if not self._running:
            return
        if self._P >= self.cache_len:
            self._shift(-min(self._starts))
        c, n, P = self._shared(), len(self._running), self._P
        view = KVCache.__new__(KVCache)  # the first n rows of the shared buffers, no copy
        view.k, view.v, view.pos, view.max_seq_len = c.k[:, :n], c.v[:, :n], P, self.cache_len
        x = torch.tensor([[s.pending] for s in self._running], dtype=torch.long, device=self.device)  # (n, 1)
        starts = torch.tensor(self._starts, device=self.device)  # (n,)
        pos = (P - starts)[:, None]  # (n, 1) each row's own position
        mask = None
        if any(self._starts):
            mask = torch.arange(P + 1, device=self.device)[None, :] >= starts[:, None]  # (n, P + 1)
        logits = self.model(x, kv_cache=view, attention_mask=mask, position_ids=pos, last_only=True)  # (n, 1, V)
        self._P += 1
        self.stats.steps += 1
        logits = logits[:, -1, :].float()  # (n, V)
        ended = []
        infos = self._sample_rows(self._running, logits)
        for i, s in enumerate(self._running):
            s.length += 1
            if not self._sampled(s, logits[i : i + 1], infos[i]):
                ended.append(i)
        for i in reversed(ended):
            self._leave(i, None)
