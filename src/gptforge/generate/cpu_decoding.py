"""Batch-1 CPU decoding at the speed weights stream from memory, with kernels chosen by measuring.

Decoding one token multiplies a single row by every weight matrix of the model, so a step
reads all the weights once and does little arithmetic with each byte: its speed is the
speed at which weights stream from memory (the bound ``bench/generate.py`` measures). Which
PyTorch product streams a given matrix fastest differs from CPU to CPU and from shape to
shape (measured with a gpt2-124M-shaped model):

* **Layout.** The matrix-vector kernel behind ``F.linear`` may read an (out, in) weight
  faster when it lies in memory as (in, out) (GPT-2's original Conv1D layout): about 28 vs
  17 GB/s on one core of an AMD EPYC, no difference on an Intel Xeon.
* **Threads.** That kernel may run on one core however many there are, while ``torch.bmm``
  gives each matrix of a batch its own thread: viewing a weight as ``parts`` slices (a
  view, nothing is copied) and multiplying by all slices in one ``bmm`` streams it on every
  core (1.5x on the EPYC, nothing on the Xeon).
* **bf16** weights (half the bytes) go through another kernel again, fast on some CPUs,
  slow on others.

So nothing is assumed: :func:`prepare_for_decoding` times the candidate kernels
(:data:`KERNELS`) for each weight shape on this machine, with the threads torch will use,
on as many bytes as the model's layers of that shape (at least ``PROBE_BYTES``, so caches
do not flatter a kernel), and gives each large ``nn.Linear`` the fastest one as a
:class:`DecodeLinear`. Choices are kept for the process, so a model is tuned once per
shape. Only products of at most ``MAX_ROWS`` rows in inference (no grad, eval mode) use
the chosen kernel; everything else is plain ``F.linear``.

What it never changes: values, parameter objects, tied weights, state dicts, and what
training does. A kernel that reads (in, out) re-stores the weight in place with the same
values (``weight.t()`` becomes contiguous; no memory is added), and ``model.train()``
puts every weight back as (out, in) before training sees it. Sums may round differently in
the last bits (the tests compare with ``F.linear`` within float tolerance).

:func:`~gptforge.generate.engine.stream_tokens` calls :func:`prepare_for_decoding` by
itself on the first call with a CPU model in eval mode (``load_model`` returns one), so
``model.generate()`` and ``generate_text()`` get the speed without asking; a model in
training mode (sampling during training) is left as it is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Above this many rows (batch x new positions) a product is a real matrix multiply that
# already uses every core (prefill): the plain kernel is kept.
MAX_ROWS = 32
# Below this many weights (512 KB of fp32) a matrix sits in cache and is read faster than
# threads start: such layers keep F.linear (a 4x128 character model decodes ~30% slower
# with its layers split, a 6x384 one ~50% faster).
MIN_WEIGHTS = 1 << 17
# Bytes each candidate kernel streams per timing round: more than the last-level cache
# of the machines measured (32 MB), so the timings are of memory, not of cache.
PROBE_BYTES = 96 << 20
PROBE_ROUNDS = 5

# (shape (out, in), dtype, bias, threads) -> kernel name, for the whole process
_CHOICES: dict[tuple, str] = {}


def _split_rows(x2: torch.Tensor, w: torch.Tensor, parts: int) -> torch.Tensor:
    """(M, in) x (out, in) row-major -> (M, out), the output rows cut into ``parts`` bmm slices."""
    n_out, n_in = w.shape
    height = n_out // parts  # output rows per slice; the last n_out % parts rows go apart
    m = x2.shape[0]
    slices = w[: height * parts].view(parts, height, n_in)  # (parts, height, in), a view
    y = torch.bmm(slices, x2.t().unsqueeze(0).expand(parts, n_in, m))  # (parts, height, M)
    y = y.reshape(height * parts, m).t()  # (M, parts * height)
    if height * parts < n_out:
        y = torch.cat([y, F.linear(x2, w[height * parts :])], dim=1)  # (M, out)
    return y


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as ``parts`` column slices in one ``torch.bmm``.

    Args:
        x: (..., in).
        weight: (out, in) stored column-major, i.e. ``weight.t()`` is a contiguous (in, out).
        bias: (out,) or None.
        parts: number of slices, normally the number of threads; out >= parts.

    Returns:
        (..., out).
    """
    w = weight.t()  # (in, out), contiguous
    n_in, n_out = w.shape
    width = n_out // parts  # columns per slice; the last n_out % parts columns go apart
    rows = x.reshape(-1, n_in)  # (M, in)
    m = rows.shape[0]
    slices = w[:, : width * parts].view(n_in, parts, width).transpose(0, 1)  # (parts, in, width), a view
    y = torch.bmm(rows.unsqueeze(0).expand(parts, m, n_in), slices)  # (parts, M, width): one slice per thread
    y = y.transpose(0, 1).reshape(m, width * parts)  # (M, parts * width), columns back in order
    if width * parts < n_out:
        y = torch.cat([y, rows @ w[:, width * parts :]], dim=1)  # (M, out)
    if bias is not None:
        y = y + bias  # (M, out)
    return y.view(*x.shape[:-1], n_out)  # (..., out)


def _mv(x2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """torch.mv for one row (another BLAS entry point than F.linear's). (1, in) -> (1, out)"""
    return torch.mv(w, x2[0]).unsqueeze(0)


# name -> (weight layout the kernel reads, fn(x2 (M, in), weight (out, in), threads) -> (M, out))
KERNELS: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]] = {
    "linear": ("row", lambda x2, w, p: F.linear(x2, w)),
    "mv": ("row", lambda x2, w, p: _mv(x2, w)),
    "split-rows": ("row", lambda x2, w, p: _split_rows(x2, w, p)),
    "linear-in-out": ("col", lambda x2, w, p: F.linear(x2, w)),
    "mv-in-out": ("col", lambda x2, w, p: _mv(x2, w)),
    "split-in-out": ("col", lambda x2, w, p: split_linear(x2, w, None, p)),
}
SPLIT_KERNELS = ("split-rows", "split-in-out")
ONE_ROW_KERNELS = ("mv", "mv-in-out")


def _is_col(w: torch.Tensor) -> bool:
    """Stored (in, out): ``w.t()`` contiguous and ``w`` not (a 1-wide matrix is both)."""
    return not w.is_contiguous() and w.t().is_contiguous()


def _set_layout(w: torch.Tensor, layout: str) -> None:
    """Re-store a 2-D parameter as (out, in) ("row") or (in, out) ("col") in place, same values."""
    if (layout == "col") == _is_col(w):
        return
    with torch.no_grad():
        w.data = w.data.t().contiguous().t() if layout == "col" else w.data.contiguous()


class DecodeLinear(nn.Linear):
    """An ``nn.Linear`` whose inference products with few rows use the kernel chosen for it.

    It holds the same parameters as the layer it replaces (see :meth:`from_linear`), so
    state dicts, tying and saving are unchanged. It uses plain ``F.linear`` when
    gradients are on, in training mode, for more than ``MAX_ROWS`` rows, and whenever the
    weight is not in the kernel's layout; ``train()`` restores the (out, in) layout.
    """

    kernel: str = "linear"
    upcast: bool = False  # products of several rows in float32 (bf16 weights on a CPU without bf16)
    _plan: tuple | None = None  # (key, fn(x (in,)) -> (out,)): the one-row product, see _one_row

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "linear") -> DecodeLinear:
        """A DecodeLinear sharing ``linear``'s weight and bias (nothing is copied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.kernel = kernel
        new.train(linear.training)
        return new

    def train(self, mode: bool = True) -> DecodeLinear:
        if mode:
            self._plan = None  # its views would keep the old storage alive
            _set_layout(self.weight, "row")  # training sees the usual layout
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        self._plan = None  # .to(...) gives new tensors: the plan's views are of the old ones
        return super()._apply(fn, recurse)

    def _one_row(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The chosen kernel for one row as a single fused call, or None where it does not apply.

        Why: a decoding step makes ~50 such products, and re-deriving each kernel's views
        (slices, transposes, a separate bias add) cost ~10 small ops, some 20 us, per product.
        The views and the bias (fused into ``addmv``/``baddbmm``) are made once; the plan is
        re-derived when the weight's storage, strides or the thread count change (``train()``
        and ``.to()`` drop it). With one row, a bmm's (parts, 1, width) output is already the
        columns in order, so no transpose or copy follows.
        """
        w, b = self.weight, self.bias
        parts = torch.get_num_threads()
        key = (w.data_ptr(), w.stride(), None if b is None else b.data_ptr(), parts, self.kernel)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        layout = KERNELS[self.kernel][0]
        n_out, n_in = w.shape
        fn = None
        if (layout == "col") != _is_col(w):
            fn = None  # the weight is not in the kernel's layout (F.linear below)
        elif self.kernel in ONE_ROW_KERNELS:  # (in,) -> (out,)
            fn = (lambda x: torch.mv(w, x)) if b is None else (lambda x: torch.addmv(b, w, x))
        elif self.kernel in SPLIT_KERNELS and parts >= 2 and n_out >= parts:
            width = n_out // parts  # outputs per slice
            main = width * parts  # the last n_out - main outputs (GPT-2's odd vocabulary) go apart
            if self.kernel == "split-in-out":
                wt = w.t()  # (in, out), contiguous
                slices = wt[:, :main].view(n_in, parts, width).transpose(0, 1)  # (parts, in, width), a view
                rest = wt[:, main:]  # (in, out - main)
            else:  # split-rows: w (out, in) row-major
                slices = w[:main].view(parts, width, n_in)  # (parts, width, in), a view
                rest = w[main:].t()  # (in, out - main)
            b_main = None if b is None else b[:main].view(parts, width, 1)  # (parts, width, 1)
            if self.kernel == "split-in-out" and b_main is not None:
                b_main = b_main.transpose(1, 2)  # (parts, 1, width)
            b_rest = None if b is None else b[main:]

            def fn(x: torch.Tensor) -> torch.Tensor:
                if self.kernel == "split-in-out":  # (parts, 1, in) @ (parts, in, width)
                    xs = x.view(1, 1, n_in).expand(parts, 1, n_in)
                    y = torch.bmm(xs, slices) if b_main is None else torch.baddbmm(b_main, xs, slices)
                else:  # (parts, width, in) @ (parts, in, 1)
                    # strides (0, 1, in), exactly as _split_rows (the timed kernel) passes it: with
                    # view(1, in, 1)'s (0, 1, 1) the BLAS behind bmm took a path 3.6x slower on
                    # an AMD EPYC Zen 4 (1,050 against 290 us for 2304 x 768), same values
                    xs = x.view(1, n_in).t().expand(parts, n_in, 1)
                    y = torch.bmm(slices, xs) if b_main is None else torch.baddbmm(b_main, slices, xs)
                y = y.view(main)  # (parts, 1, width) or (parts, width, 1): the outputs in order
                if main == n_out:
                    return y  # (out,)
                r = x @ rest if b_rest is None else torch.addmv(b_rest, rest.t(), x)  # (out - main,)
                return torch.cat([y, r])  # (out,)
        else:  # linear, linear-in-out: F.linear adds the bias itself; a (1, in) row, as timed
            fn = lambda x: F.linear(x.view(1, n_in), w, b).view(n_out)  # noqa: E731
        self._plan = (key, fn)
        return fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.training or torch.is_grad_enabled() or x.dtype != w.dtype:
            return F.linear(x, w, self.bias)
        rows = x.numel() // self.in_features
        if rows == 1 and (fn := self._one_row()) is not None:
            return fn(x.reshape(self.in_features)).view(*x.shape[:-1], self.out_features)  # (..., out)
        layout, fn = KERNELS[self.kernel]
        parts = torch.get_num_threads()
        if (
            (rows == 1 or (rows <= MAX_ROWS and self.kernel not in ONE_ROW_KERNELS))
            and (layout == "col") == _is_col(w)
            and not (self.kernel in SPLIT_KERNELS and (parts < 2 or self.out_features < parts))
        ):
            y = fn(x.reshape(rows, self.in_features), w, parts)  # (M, out)
            if self.bias is not None:
                y = y + self.bias
            return y.view(*x.shape[:-1], self.out_features)  # (..., out)
        if self.upcast:
            b = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), w.float(), b).to(x.dtype)  # (..., out)
        return F.linear(x, w, self.bias)


def _candidates(threads: int) -> list[str]:
    return [k for k in KERNELS if threads > 1 or k not in SPLIT_KERNELS]


def time_kernels(shape: tuple[int, int], dtype: torch.dtype, count: int, threads: int | None = None) -> dict[str, float]:
    """Seconds per product of the fastest round of each candidate kernel for one weight shape.

    Each round multiplies one row by ``count`` weights of ``shape`` in turn (enough of them
    to stream ``PROBE_BYTES``), alternating kernels round by round so that load from other
    processes hits them alike; a kernel's time is its best round. The weights are
    synthetic copies (speed does not depend on the values); they are freed on return.
    """
    threads = threads or torch.get_num_threads()
    return time_candidates(KERNELS, _candidates(threads), shape, dtype, count, rows=1, threads=threads, prune=True)


def time_candidates(table: dict[str, tuple[str, Callable]], names: list[str], shape: tuple[int, int], dtype: torch.dtype,
                    count: int, rows: int, threads: int, prune: bool) -> dict[str, float]:  # fmt: skip
    """The timing loop of :func:`time_kernels` for any kernel table and ``rows`` rows per product.

    ``table[name] = (layout, fn(x2, weight, threads))``; with ``prune`` a kernel 3x slower
    than the best in the warm-up round is not timed again (its time stays that round's).
    """
    n_out, n_in = shape
    nbytes = n_out * n_in * torch.empty(0, dtype=dtype).element_size()
    count = max(count, math.ceil(PROBE_BYTES / nbytes))
    row_w = torch.full((count, n_out, n_in), 0.01, dtype=dtype)  # (count, out, in)
    col_w = row_w.transpose(1, 2).contiguous().transpose(1, 2)  # the same, stored (in, out)
    x2 = torch.full((rows, n_in), 0.5, dtype=dtype)
    best = {k: math.inf for k in names}
    with torch.inference_mode():
        for r in range(PROBE_ROUNDS + 1):  # round 0 warms up
            for k in names:
                layout, fn = table[k]
                ws = row_w if layout == "row" else col_w
                t0 = time.perf_counter()
                for i in range(count):
                    fn(x2, ws[i], threads)
                if prune or r > 0:
                    best[k] = min(best[k], (time.perf_counter() - t0) / count)
            if prune and r == 0:
                fastest = min(best.values())
                names = [k for k in names if best[k] <= 3 * fastest]
                best = {k: (math.inf if k in names else v) for k, v in best.items()}
    return best


def choose_kernel(shape: tuple[int, int], dtype: torch.dtype, count: int) -> str:
    """The fastest kernel for ``count`` weights of ``shape`` (out, in), measured once per process."""
    threads = torch.get_num_threads()
    key = (tuple(shape), dtype, threads)
    if key not in _CHOICES:
        times = time_kernels(shape, dtype, count, threads)
        _CHOICES[key] = min(times, key=times.get)
        logger.debug("decoding kernel for %s %s on %d threads: %s (%s)", shape, dtype, threads,
                     _CHOICES[key], {k: f"{v * 1e6:.0f}us" for k, v in times.items()})
    return _CHOICES[key]


def choose_upcast(shape: tuple[int, int], dtype: torch.dtype, layout: str) -> bool:
    """Whether a prefill-sized product (``MAX_ROWS`` rows) of a low-precision weight runs
    faster converted to float32 (a CPU without bf16 arithmetic: ~50x on an AMD EPYC)."""
    if dtype == torch.float32:
        return False
    threads = torch.get_num_threads()
    key = ("upcast", tuple(shape), dtype, layout, threads)
    if key not in _CHOICES:
        w = torch.full(shape, 0.01, dtype=dtype)  # (out, in)
        if layout == "col":
            w = w.t().contiguous().t()
        x2 = torch.full((MAX_ROWS, shape[1]), 0.5, dtype=dtype)
        fns = {False: lambda: F.linear(x2, w), True: lambda: F.linear(x2.float(), w.float()).to(dtype)}
        best = {k: math.inf for k in fns}
        with torch.inference_mode():
            for r in range(PROBE_ROUNDS):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    best[k] = min(best[k], time.perf_counter() - t0)
                if r == 0 and best[False] > 20 * best[True]:
                    break  # no need to time the slow one again
        _CHOICES[key] = best[True] < best[False]
    return _CHOICES[key]


def choose_attention(
    n_head: int, head_size: int, dtype: torch.dtype, one_query_attention: Callable, length: int = 128
) -> bool:
    """Whether one-query attention written out (the model's ``one_query_attention``) beats the
    fused ``scaled_dot_product_attention`` here, timed over a ``length``-key slice of a cache."""
    threads = torch.get_num_threads()
    key = ("attention", n_head, head_size, dtype, length, threads)
    if key not in _CHOICES:
        q = torch.full((1, n_head, 1, head_size), 0.1, dtype=dtype)
        cache = torch.full((2, 1, n_head, 2 * length, head_size), 0.1, dtype=dtype)
        k, v = cache[0, :, :, :length], cache[1, :, :, :length]  # views, as the KV cache gives
        fns = {False: lambda: F.scaled_dot_product_attention(q, k, v), True: lambda: one_query_attention(q, k, v)}
        best = {k_: math.inf for k_ in fns}
        with torch.inference_mode():
            for _ in range(PROBE_ROUNDS + 1):
                for k_, fn in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(20):
                        fn()
                    best[k_] = min(best[k_], time.perf_counter() - t0)
        _CHOICES[key] = best[True] < best[False]
        logger.debug("one-query attention %s: fused %.0f us, written out %.0f us", (n_head, head_size, dtype),
                     best[False] / 20 * 1e6, best[True] / 20 * 1e6)
    return _CHOICES[key]


def _plain_cpu_float(w: torch.Tensor) -> bool:
    """A dense CPU float32/bf16 tensor (not a tensor subclass such as torchao's quantized weights)."""
    return type(w.data) is torch.Tensor and w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)


def prepare_for_decoding(model: nn.Module) -> nn.Module:
    """Give every large CPU float ``nn.Linear`` of ``model`` its fastest decoding kernel, in place.

    See the module docstring. Float32 and bf16 CPU layers with at least ``MIN_WEIGHTS``
    weights only; everything else (CUDA, quantized layers, small layers) is left as it is.
    Calling it again is cheap: kernels already chosen are kept and only layouts that
    ``model.train()`` restored are re-applied. Weights are re-stored one at a time, so
    peak memory grows by one matrix at most (plus ``PROBE_BYTES`` while measuring).
    Returns ``model``.
    """
    layers: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and type(child) in (nn.Linear, DecodeLinear):
                w = child.weight
                if _plain_cpu_float(w) and w.numel() >= MIN_WEIGHTS:
                    layers.append((parent, name, child))
    counts: dict[tuple, int] = {}
    for _, _, child in layers:
        key = (tuple(child.weight.shape), child.weight.dtype)
        counts[key] = counts.get(key, 0) + 1
    for parent, name, child in layers:
        w = child.weight
        kernel = choose_kernel(tuple(w.shape), w.dtype, counts[(tuple(w.shape), w.dtype)])
        if type(child) is nn.Linear:
            child = DecodeLinear.from_linear(child, kernel)
            setattr(parent, name, child)
        child.kernel = kernel
        child.upcast = choose_upcast(tuple(w.shape), w.dtype, KERNELS[kernel][0])
        child._plan = None
        _set_layout(w, KERNELS[kernel][0])  # a tied LM head shares this tensor with the embedding
    p = next((p for p in model.parameters() if p.is_floating_point()), None)  # activations' dtype
    if p is not None and p.device.type == "cpu" and p.dtype in (torch.float32, torch.bfloat16):
        for m in model.modules():  # GPT's attention layers: written-out or fused one-query attention
            if hasattr(m, "decode_math") and hasattr(m, "one_query"):  # the model is not imported here
                m.decode_math = choose_attention(m.n_head, m.head_size, p.dtype, m.one_query)
    return model


def step_read_bytes(model: nn.Module) -> int:
    """Bytes one batch-1 decoding step reads at least: every parameter and buffer once.

    Tensors shared between modules (a tied LM head and embedding) count once. The KV
    cache is not included (at 32+128 positions it is a few MB against hundreds).
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if t.numel() == 0 or key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
