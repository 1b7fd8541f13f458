"""Quantized drop-in modules: :class:`QuantLinear` and :class:`QuantEmbedding`.

Both store a weight (N, K) the same way, so a tied LM head and token embedding can
share one quantized tensor:

* ``int8`` / ``int8-dynamic``: ``qweight`` int8 (N, K), ``scales`` float32 (N,)
* ``int4``: ``qweight`` uint8 (N, K / 2) (two values per byte), ``scales`` float32
  (N, K / group_size), plus ``zeros`` float32 (N, K / group_size) when asymmetric.

For an embedding N is the vocabulary and K the width: each token's row is quantized on
its own, which is also the LM head's per-output-channel layout.

A tied LM head (``tie_weights``) holds no tensors of its own: it reads the embedding's
(``tied_to``). Buffers are per module, so two modules registering the same tensor would
be split apart by ``model.to(device)``; reading through the module keeps one copy, and
the state dict holds the shared tensor once (safetensors refuses shared tensors anyway).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from gptforge.quantize import int4, int8
from gptforge.quantize.spec import BITS, METHODS  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference")
_STORED = ("qweight", "scales", "zeros")  # the quantized weight: its dtypes are part of the format


def quantize_weight(
    weight: torch.Tensor, method: str, group_size: int, symmetric: bool
) -> dict[str, torch.Tensor]:
    """The stored tensors (``qweight``, ``scales``[, ``zeros``]) for one float weight (N, K).

    The weight is read row-major first: a column-major one (``prepare_for_decoding``)
    would otherwise give column-major integer weights, which the CPU kernels refuse.
    """
    weight = weight.contiguous()
    if method == "int4":
        packed, scales, zeros = int4.quantize_int4(weight, group_size, symmetric)
        out = {"qweight": packed, "scales": scales}
        if zeros is not None:
            out["zeros"] = zeros
        return out
    q, scales = int8.quantize_int8(weight)
    return {"qweight": q, "scales": scales}


def empty_tensors(
    n: int,
    k: int,
    method: str,
    group_size: int,
    symmetric: bool,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Uninitialised stored tensors of the right shapes (filled by ``load_state_dict``)."""
    if method == "int4":
        g = k // group_size
        out = {
            "qweight": torch.empty(n, k // 2, dtype=torch.uint8, device=device),
            "scales": torch.empty(n, g, dtype=torch.float32, device=device),
        }
        if not symmetric:
            out["zeros"] = torch.empty(n, g, dtype=torch.float32, device=device)
        return out
    return {
        "qweight": torch.empty(n, k, dtype=torch.int8, device=device),
        "scales": torch.empty(n, dtype=torch.float32, device=device),
    }


def aligned(t: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """``t``, or a copy of it whose data starts on an ``alignment``-byte boundary.

    Tensors read from a safetensors file sit at arbitrary offsets in the file's buffer;
    ``aten._weight_int8pack_mm`` crashes (SIGSEGV, torch 2.13 CPU) on int8 weights that
    are not 16-byte aligned, so weights are copied to fresh (64-byte aligned) memory.
    """
    return t if t.data_ptr() % alignment == 0 else t.clone()


def _probe_like(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor of ``t``'s dtype and device (the CPU for a meta tensor)."""
    return torch.empty(0, dtype=t.dtype, device="cpu" if t.is_meta else t.device)


class _QuantWeight(nn.Module):
    """What QuantLinear and QuantEmbedding share: the stored weight, its dequantization."""

    def __init__(self, n: int, k: int, method: str, group_size: int, symmetric: bool) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self.group_size = group_size if method == "int4" else None
        self.symmetric = symmetric if method == "int4" else True
        self.backend = "auto"
        self._n, self._k = n, k
        self._tied_to: list[_QuantWeight] = []  # a list, so it is not registered as a submodule
        self._kernel_cache: tuple | None = None
        # The compute dtype (and device), as an empty buffer that follows model.to(...): the
        # outputs are cast to it, while the stored integers and scales keep their own dtype.
        # Never on the meta device: it is not in the state dict, so loading would not fill it.
        self.register_buffer("_compute", torch.empty(0, device="cpu"), persistent=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute.dtype

    def _set_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def realign(self) -> None:
        """Move the stored tensors to aligned memory (after loading from a file)."""
        for name, t in list(self._buffers.items()):
            if t is not None:
                self._buffers[name] = aligned(t)
        self._kernel_cache = None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(qweight, scales, zeros or None)``, from this module or the one it is tied to."""
        src = self._tied_to[0] if self._tied_to else self
        return src._buffers["qweight"], src._buffers["scales"], src._buffers.get("zeros")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (N, K) these integers stand for."""
        q, s, z = self.tensors()
        if self.method == "int4":
            return int4.dequantize_int4(q, s, z, dtype)
        return int8.dequantize_int8(q, s, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """An empty tensor of the compute dtype on this module's device.

        Code that asks a layer for ``.weight.device`` / ``.weight.dtype`` (``GPT.device``,
        ``make_kv_cache``) keeps working; the values are in ``qweight`` and ``scales``
        (see :meth:`dequantized_weight`).
        """
        return self._compute

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        self._kernel_cache = None  # tensors may be overwritten in place
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """``.to(device)``, ``.to(bfloat16)``, ``.half()`` ... move the stored tensors but never
        cast them: a cast is for the compute dtype (the bias and ``_compute`` follow it). Casting
        float32 scales to bfloat16 once broke ``load_model(dtype=bf16)`` on quantized models."""
        self._kernel_cache = None  # new tensors
        stored = {n: t for n, t in self._buffers.items() if n in _STORED and t is not None}
        out = super()._apply(fn, recurse)
        device = self._compute.device
        for name, t in stored.items():
            self._buffers[name] = t.to(device)
        return out

    def stored_bytes(self) -> int:
        """Bytes of the stored weight tensors (0 for a tied head: they are counted once)."""
        if self._tied_to:
            return 0
        return sum(t.numel() * t.element_size() for t in self.tensors() if t is not None)


class QuantLinear(_QuantWeight):
    """``nn.Linear`` with a quantized weight: ``y = x @ W.T + b`` with ``W`` from integers.

    ``backend`` "auto" uses PyTorch's CPU kernels where they apply (int8/int4 with bf16
    activations inside the call) and dequantizes per call elsewhere (GPU, odd shapes);
    "reference" always dequantizes (the exact-in-float path the tests compare against).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        method: str,
        group_size: int = 64,
        symmetric: bool = False,
    ) -> None:
        super().__init__(out_features, in_features, method, group_size, symmetric)
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "bias", torch.zeros(out_features) if bias else None
        )  # float, not quantized

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, method: str, group_size: int = 64, symmetric: bool = False
    ) -> QuantLinear:
        """Quantize an ``nn.Linear`` (its weight (N, K); the bias stays float)."""
        m = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            method,
            group_size,
            symmetric,
        )
        m._set_tensors(quantize_weight(linear.weight, method, group_size, symmetric))
        m._compute = _probe_like(linear.weight)  # computes in the dtype it was quantized from
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    @classmethod
    def empty(
        cls,
        in_features: int,
        out_features: int,
        bias: bool,
        method: str,
        group_size: int,
        symmetric: bool,
    ) -> QuantLinear:
        """A module with uninitialised tensors, to be filled from a state dict."""
        m = cls(in_features, out_features, bias, method, group_size, symmetric)
        m._set_tensors(empty_tensors(out_features, in_features, method, group_size, symmetric))
        return m

    @classmethod
    def tied(cls, embedding: QuantEmbedding, bias: bool = False) -> QuantLinear:
        """An LM head that reads the quantized token embedding's tensors (tied weights)."""
        m = cls(
            embedding.embedding_dim,
            embedding.num_embeddings,
            bias,
            embedding.method,
            embedding.group_size or 64,
            embedding.symmetric,
        )
        m._tied_to.append(embedding)
        m._compute = _probe_like(embedding._compute)
        return m

    def _kernel(self, x: torch.Tensor):
        """The prepared CPU kernel call for this weight, or None when it does not apply."""
        if (
            self.backend != "auto"
            or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.bfloat16)
            or (x.requires_grad and torch.is_grad_enabled())  # training adapters (QLoRA): the
        ):  # kernels have no backward, the reference path (dequantize, matmul) does
            return None
        q, s, z = self.tensors()
        key = (q.data_ptr(), s.data_ptr(), None if z is None else z.data_ptr())
        if self._kernel_cache is not None and self._kernel_cache[0] == key:
            return self._kernel_cache[1]
        fn = None
        if self.method == "int8" and int8.kernel_available():
            s_bf16 = s.to(torch.bfloat16)
            q = aligned(q)

            def fn(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
                return int8.int8_linear_kernel(x, q, s_bf16, bias)
        elif self.method == "int4" and int4.Int4CpuKernel.accepts(
            self.out_features, self.in_features
        ):
            fn = int4.Int4CpuKernel(q, s, z)
        self._kernel_cache = (key, fn)
        return fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)"""
        q, s, z = self.tensors()
        if self.method == "int8-dynamic":
            y = int8.int8_linear_dynamic(x, q, s, self.bias)
        elif (kernel := self._kernel(x)) is not None:
            y = kernel(x, self.bias)
        elif self.method == "int4":
            y = int4.int4_linear_reference(x, q, s, z, self.bias)
        else:
            y = int8.int8_linear_reference(x, q, s, self.bias)
        return y.to(self._compute.dtype)  # (..., out_features), the compute dtype whatever the kernel's

    def extra_repr(self) -> str:
        g = (
            f", group_size={self.group_size}, symmetric={self.symmetric}"
            if self.method == "int4"
            else ""
        )
        tied = ", tied" if self._tied_to else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, method={self.method}{g}{tied}"
        )


class QuantEmbedding(_QuantWeight):
    """``nn.Embedding`` with quantized rows: a lookup dequantizes only the rows it reads."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        method: str,
        group_size: int = 64,
        symmetric: bool = False,
    ) -> None:
        # "int8-dynamic" is about activations; an embedding has none, so it stores plain int8.
        super().__init__(num_embeddings, embedding_dim, method, group_size, symmetric)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim

    @classmethod
    def from_embedding(
        cls, emb: nn.Embedding, method: str, group_size: int = 64, symmetric: bool = False
    ) -> QuantEmbedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, method, group_size, symmetric)
        m._set_tensors(quantize_weight(emb.weight, method, group_size, symmetric))
        m._compute = _probe_like(emb.weight)
        return m

    @classmethod
    def empty(
        cls, num_embeddings: int, embedding_dim: int, method: str, group_size: int, symmetric: bool
    ) -> QuantEmbedding:
        m = cls(num_embeddings, embedding_dim, method, group_size, symmetric)
        m._set_tensors(empty_tensors(num_embeddings, embedding_dim, method, group_size, symmetric))
        return m

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (...) long -> (..., embedding_dim) in the compute dtype"""
        q, s, z = self.tensors()
        flat = idx.reshape(-1)  # (M,)
        if self.method == "int4":
            rows = int4.dequantize_int4(q[flat], s[flat], None if z is None else z[flat])  # (M, C)
        else:
            rows = int8.dequantize_int8(q[flat], s[flat])  # (M, C)
        return rows.view(*idx.shape, self.embedding_dim).to(self._compute.dtype)

    def extra_repr(self) -> str:
        g = (
            f", group_size={self.group_size}, symmetric={self.symmetric}"
            if self.method == "int4"
            else ""
        )
        return f"{self.num_embeddings}, {self.embedding_dim}, method={self.method}{g}"
