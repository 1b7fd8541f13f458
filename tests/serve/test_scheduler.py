"""Continuous batching against the generation engine: each sequence alone is the reference.

Sequences join and leave the batch mid-flight (different prompt lengths, chunked prefill,
a cancelled one, early stops, context windows sliding, the shared cache shifting); every
sequence must produce exactly the tokens ``stream_tokens`` gives it alone with the same
options and seed.
"""

from __future__ import annotations

import threading

import pytest
import torch

from gptforge.generate.config import GenerationConfig
from gptforge.generate.engine import stream_tokens
from gptforge.serve.scheduler import Event, SamplingParams, Scheduler, Sequence


class _Tok:
    """A byte-level stand-in tokenizer: id i < 256 is byte i; 256 is end-of-text."""

    eot_id = 256
    special_tokens = {"<|endoftext|>": 256}

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(i for i in ids if i < 256)


def _model(block: int = 64, seed: int = 0) -> torch.nn.Module:
    from gptforge import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("test-tiny", vocab_size=257, block_size=block)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init: no near-ties for greedy
        model.transformer.wte.weight.mul_(20)
        model.transformer.wpe.weight.mul_(20)
    return model


def _alone(model: torch.nn.Module, prompt: list[int], p: SamplingParams) -> list[int]:
    cfg = GenerationConfig(max_new_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                           seed=p.seed, frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty,
                           repetition_penalty=p.repetition_penalty, stop_token_ids=[256])
    out = []
    for step in stream_tokens(model, torch.tensor([prompt]), cfg):
        out.append(int(step[0]))
        if out[-1] == 256:
            break
    return out


class _Collector:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.reason: str | None = None
        self.hook = None  # called with the number of tokens so far

    def __call__(self, ev: Event) -> None:
        if ev.kind == "token":
            self.tokens.append(ev.token.id)
            if self.hook is not None:
                self.hook(len(self.tokens))
        elif ev.kind in ("done", "error"):
            self.reason = ev.finish_reason if ev.kind == "done" else repr(ev.error)
            self.done.set()


def _run(sched: Scheduler, jobs: list[tuple[list[int], SamplingParams]], join_after: int = 3,
         cancel: int | None = None) -> list[_Collector]:
    """Submit the first half at once; each later job joins when the previous one has
    ``join_after`` tokens (so they join mid-flight). Job ``cancel`` is cancelled after 4 tokens."""
    cols = [_Collector() for _ in jobs]
    seqs = [Sequence(prompt, p, c) for (prompt, p), c in zip(jobs, cols)]
    half = len(jobs) // 2
    for i in range(half, len(jobs)):
        def hook(n: int, i: int = i, fired: list = []) -> None:  # noqa: B006 - one flag per job
            if n == join_after and not fired:
                fired.append(1)
                sched.submit([seqs[i]])
        cols[i - 1].hook = hook
    if cancel is not None:
        prev = cols[cancel].hook

        def cancel_hook(n: int, prev=prev) -> None:
            if prev is not None:
                prev(n)
            if n == 4:
                seqs[cancel].cancel.set()
        cols[cancel].hook = cancel_hook
    sched.submit(seqs[:half])
    for i, c in enumerate(cols):
        if not c.done.wait(60):
            # a job whose trigger never fired (its predecessor stopped early): start it now
            sched.submit([seqs[i]])
            assert c.done.wait(60), f"job {i} never finished"
    return cols


def _jobs(seed: int, n: int, sampled: bool, max_tokens: int = 20) -> list[tuple[list[int], SamplingParams]]:
    g = torch.Generator().manual_seed(seed)
    jobs = []
    for i in range(n):
        length = int(torch.randint(1, 30, (1,), generator=g))
        prompt = torch.randint(0, 256, (length,), generator=g).tolist()
        if sampled:
            p = SamplingParams(max_tokens=max_tokens - i % 5, temperature=0.7 + 0.1 * (i % 4), seed=100 + i,
                               top_p=0.9 if i % 2 else None, top_k=40 if i % 3 == 0 else None,
                               frequency_penalty=0.5 if i % 4 == 1 else 0.0,
                               repetition_penalty=1.3 if i % 4 == 2 else 1.0)
        else:
            p = SamplingParams(max_tokens=max_tokens - i % 7, temperature=0.0)
        jobs.append((prompt, p))
    return jobs


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_batched_equals_alone(sampled: bool) -> None:
    model = _model()
    sched = Scheduler(model, _Tok(), max_batch=4, max_queue=16, prefill_chunk=8)
    try:
        jobs = _jobs(1, 6, sampled, max_tokens=14)
        cols = _run(sched, jobs, cancel=2)
    finally:
        sched.close()
    for i, ((prompt, p), c) in enumerate(zip(jobs, cols)):
        ref = _alone(model, prompt, p)
        if i == 2:  # cancelled after 4 tokens: what it got is the start of its own sequence
            assert c.reason == "cancelled" and c.tokens == ref[: len(c.tokens)] and len(c.tokens) < len(ref)
        else:
            assert c.tokens == ref, f"job {i} ({'seeded' if sampled else 'greedy'})"
            assert c.reason == ("stop" if ref[-1] == 256 else "length")
    assert sched.running == 0 and sched.queued == 0


def test_sliding_window_and_shifting_cache_equal_alone() -> None:
    """Block 32: prompts plus 40 new tokens overflow the context (windows slide), and the
    shared cache of 32 columns must shift its rows left to make room."""
    model = _model(block=32, seed=3)
    sched = Scheduler(model, _Tok(), max_batch=3, max_queue=8, prefill_chunk=5)
    try:
        jobs = [(prompt, SamplingParams(max_tokens=30, temperature=t, seed=7 + i))
                for i, (prompt, t) in enumerate([([1, 2, 3], 0.0), (list(range(40, 60)), 0.8),
                                                 ([9] * 31, 0.0), (list(range(100, 140)), 0.9)])]
        cols = _run(sched, jobs, join_after=5)
    finally:
        sched.close()
    for i, ((prompt, p), c) in enumerate(zip(jobs, cols)):
        assert c.tokens == _alone(model, prompt, p), f"job {i}"


def test_queue_full_is_busy() -> None:
    from gptforge.serve.scheduler import Busy

    model = _model()
    sched = Scheduler(model, _Tok(), max_batch=1, max_queue=1)
    try:
        block = threading.Event()
        first = _Collector()
        first.hook = lambda n: block.wait(10) if n == 1 else None  # hold the scheduler on its first token
        a = Sequence([1, 2], SamplingParams(max_tokens=5, temperature=0), first)
        sched.submit([a])
        sched.submit([Sequence([3], SamplingParams(max_tokens=2), _Collector())])
        with pytest.raises(Busy):
            sched.submit([Sequence([4], SamplingParams(max_tokens=2), _Collector())])
        block.set()
        assert first.done.wait(30)
    finally:
        sched.close()


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_prompts_prefilled_together_equal_alone(sampled: bool) -> None:
    """Prompts arriving together are prefilled in one left-padded forward."""
    model = _model(seed=5)
    sched = Scheduler(model, _Tok(), max_batch=8, max_queue=8, prefill_chunk=16)
    jobs = _jobs(4, 6, sampled, max_tokens=10)
    cols = [_Collector() for _ in jobs]
    try:
        sched.submit([Sequence(prompt, p, c) for (prompt, p), c in zip(jobs, cols)])
        assert all(c.done.wait(60) for c in cols)
    finally:
        sched.close()
    assert any(len(prompt) <= 16 for prompt, _ in jobs[:2])
    for i, ((prompt, p), c) in enumerate(zip(jobs, cols)):
        assert c.tokens == _alone(model, prompt, p), f"job {i}"
