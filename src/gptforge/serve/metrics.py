"""Counters and histograms for ``GET /metrics``, written in the Prometheus text format.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (``# HELP``, ``# TYPE``,
``name{label="value"} number``; a histogram is cumulative ``_bucket{le=...}`` lines plus
``_sum`` and ``_count``). Updates come from the scheduler thread and the event loop; each
is one small locked operation.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A cumulative histogram with fixed upper bounds (seconds)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def lines(self, name: str) -> list[str]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        out, running = [], 0
        for bound, c in zip((*self.bounds, float("inf")), counts):
            running += c
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {total}", f"{name}_count {running}"]
        return out


class Metrics:
    """Everything ``/metrics`` reports; the scheduler and the HTTP layer update it."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.steps = 0
        self.ttft = Histogram()
        self.token_latency = Histogram()
        self._lock = threading.Lock()

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def render(self, running: int, queued: int, max_batch: int) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
        lines = ["# HELP gptforge_requests_total HTTP requests answered, by path and status.",
                 "# TYPE gptforge_requests_total counter"]
        lines += [f'gptforge_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in requests]
        for name, kind, help_, value in (
            ("gptforge_generated_tokens_total", "counter", "Tokens generated.", self.tokens_generated),
            ("gptforge_prompt_tokens_total", "counter", "Prompt tokens prefilled.", self.prompt_tokens),
            ("gptforge_decode_steps_total", "counter", "Batched decode steps run.", self.steps),
            ("gptforge_running_rows", "gauge", "Sequences holding a batch row (decoding or prefilling).", running),
            ("gptforge_queue_length", "gauge", "Sequences waiting for a row.", queued),
            ("gptforge_max_batch", "gauge", "Rows the batch may hold (--max-batch).", max_batch),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        for name, help_, hist in (
            ("gptforge_time_to_first_token_seconds", "From submission to the first generated token.", self.ttft),
            ("gptforge_time_per_output_token_seconds", "Between two tokens of one sequence.", self.token_latency),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *hist.lines(name)]
        return "\n".join(lines) + "\n"
