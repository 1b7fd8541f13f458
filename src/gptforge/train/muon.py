"""Muon: momentum, then each 2-D update replaced by its nearest semi-orthogonal matrix.

Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks" (the
optimizer of the modded-nanogpt speedrun). For a weight W with gradient G:

    B <- momentum * B + (1 - momentum) * G           (the momentum buffer, as an EMA)
    U <- G + momentum * (B - G)                      (Nesterov: look one step ahead)
    O <- NewtonSchulz5(U) ~ U (U^T U)^(-1/2)          (singular values pushed towards 1)
    W <- (1 - lr * wd) * W - lr * sqrt(max(1, rows / cols)) * O

so every direction of the matrix moves at the same rate, however small its gradient.

Why not ``torch.optim.Muon``, which computes the same step: it runs the Newton-Schulz
iterations in bfloat16, fixed. That is right on a GPU, but a CPU without bf16 matrix
units (AVX2 only, as the AMD EPYC this was measured on) emulates bf16 matmuls at about a
tenth of the fp32 speed (a 384 x 128 orthogonalisation: 484 ms in bf16, 50 ms in fp32 on
a loaded 2-core machine), and Muon's step then costs more than the model's forward and
backward. Here ``ns_dtype`` picks the precision, and :func:`default_ns_dtype` chooses it:
bfloat16 on CUDA and on a CPU with bf16 instructions (AVX-512 BF16 or AMX: on a 2-core Intel
Xeon with AMX the modern CPU preset's orthogonalisations take 4.0 ms in bf16 against 8.7 ms in
fp32), float32 on other CPUs. With ``ns_dtype="bf16"`` this class gives bitwise the same weights as ``torch.optim.Muon``
(``tests/train/test_train_muon.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Quintic Newton-Schulz coefficients of Keller Jordan's Muon (also torch.optim.Muon's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_ns_dtype(device: torch.device) -> str:
    """"bf16" where bf16 matrix products are fast (CUDA; a CPU with AVX-512 BF16 or AMX), else "fp32".

    Decided by the CPU's instruction set, not by timing both: a timing could choose
    differently in a run and in its resume, and the precision changes the weights. (The
    choice is kept in the optimizer's param groups, so a checkpoint resumes with it.)
    """
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            if cpu is not None and getattr(cpu, probe, lambda: False)():
                return "bf16"
    return "fp32"


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32,
                  eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``g`` (R, K).

    Five iterations of X <- a X + (b A + c A^2) X with A = X X^T, after scaling X so its
    spectral norm is at most 1 (the Frobenius norm bounds it). The result is U S' V^T with
    S' roughly in [0.7, 1.2] rather than exactly 1, which trains as well (Jordan et al.).
    Worked on the wide orientation (R <= K), so the Gram matrix A is the smaller one.

    ``g`` may also be a stack (N, R, K) of same-shaped matrices, each orthogonalised on its
    own (batched matmuls: see :meth:`Muon.step` for why).

    Returns:
        (R, K) or (N, R, K) in ``dtype``.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    if x.dim() == 2:
        x = x / x.norm().clamp(min=eps)  # (R, K) with R <= K
        addmm = torch.addmm
    else:
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # (N, R, K), each matrix by its own norm
        addmm = torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT  # (..., R, R)
        poly = addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (see the module docstring for the update and why it is ours).

    Args:
        params: 2-D tensors, or groups of them.
        lr: learning rate (scaled per matrix by sqrt(max(1, rows / cols))).
        momentum: the EMA factor of the momentum buffer.
        nesterov: use the Nesterov look-ahead of the buffer.
        weight_decay: decoupled, ``W *= 1 - lr * weight_decay``.
        ns_steps: Newton-Schulz iterations.
        ns_dtype: "fp32" or "bf16", the precision of the iterations.
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: str = "fp32") -> None:
        if ns_dtype not in _DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(_DTYPES)}, got {ns_dtype!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Muon step for every parameter with a gradient.

        The updates of same-shaped matrices (after turning tall ones wide: ``mlp.c_fc`` (4C, C)
        joins ``mlp.c_proj`` (C, 4C)) are orthogonalised together, as one stack of batched
        matmuls. Why: these matrices are small (128 x 512 in the CPU preset) and one matmul of
        such a size leaves the CPU's cores half idle; a stack of 8 runs the iterations in about
        half the time of 8 separate ones (bench/modern_step.py), with the same numbers.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            buckets: dict[Any, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mu)  # (R, K)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                wide = update.mT if update.size(0) > update.size(1) else update  # (min, max)
                # only plain tensors are stacked (a sharded DTensor goes on its own)
                key = (tuple(wide.shape), wide.dtype, wide.device) if type(wide) is torch.Tensor else id(p)
                buckets.setdefault(key, []).append((p, wide))
            for members in buckets.values():
                stack = torch.stack([w for _, w in members]) if len(members) > 1 else members[0][1]
                ortho = newton_schulz(stack, group["ns_steps"], _DTYPES[group["ns_dtype"]])  # (N, R, K) or (R, K)
                for i, (p, _) in enumerate(members):
                    o = ortho[i] if len(members) > 1 else ortho  # (min, max)
                    o = o.mT if p.size(0) > p.size(1) else o  # back to (R, K)
                    p.mul_(1 - lr * wd)
                    p.add_(o, alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))
        return loss
