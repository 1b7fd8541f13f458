"""Small building blocks of the modern options: norms, rotary positions, ReLU².

Kept apart from ``gpt.py`` so the model file stays one sitting; each is a few
lines and a reference.

References:
  RMSNorm: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
  RoPE: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
        The "halves" layout (the first hs/2 channels pair with the last hs/2), as
        Hugging Face's Llama uses, so a model exports to LlamaForCausalLM without a
        permutation of the q/k weights.
  ReLU²: So et al. 2021, "Primer: Searching for Efficient Transformers for Language Modeling".
  SwiGLU: Shazeer 2020, "GLU Variants Improve Transformer".
  QK-norm: Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion Parameters".

Shapes: B batch, T time, nh heads, hs head size, C width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.model.config import GPTConfig


def make_norm(config: GPTConfig, width: int) -> nn.Module:
    """The configured normalisation over the last dimension of size ``width``.

    LayerNorm subtracts the mean and divides by the standard deviation; RMSNorm only
    divides by the root mean square (cheaper, no bias). ``norm_gain`` False drops the
    learnable gain (and LayerNorm's bias): a fixed, parameter-free norm.
    """
    if config.normalization == "rmsnorm":
        return nn.RMSNorm(width, eps=config.layer_norm_eps, elementwise_affine=config.norm_gain)
    if not config.norm_gain:
        return nn.LayerNorm(width, eps=config.layer_norm_eps, elementwise_affine=False)
    return nn.LayerNorm(width, eps=config.layer_norm_eps, bias=config.bias)


def rope_cos_sin(
    position_ids: torch.Tensor, head_size: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotation angles ``pos * base^(-2i/hs)``, in float32.

    Computed from the positions on every forward (hs/2 frequencies: negligible work), so
    no buffer is saved, moved or cast to a low precision with the weights.

    Args:
        position_ids: (B or 1, T) integer positions.

    Returns:
        (cos, sin), each (B or 1, 1, T, hs/2), broadcast over the heads.
    """
    exponent = torch.arange(0, head_size, 2, device=position_ids.device, dtype=torch.float32) / head_size
    inv_freq = base ** (-exponent)  # (hs/2,)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq  # (B|1, T, hs/2)
    return angles.cos()[:, None], angles.sin()[:, None]  # (B|1, 1, T, hs/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of ``x`` (B, nh, T, hs) by its angle.

    The dot product of a rotated query at position m and a rotated key at n then
    depends on m - n only: attention sees relative positions.
    """
    half = x.shape[-1] // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]  # 2 x (B, nh, T, hs/2)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, nh, T, hs)
    return out.to(x.dtype)


class ReLUSquared(nn.Module):
    """relu(x)²: as cheap as ReLU, learns faster in small language models (Primer).

    Written ``r * r`` rather than ``r.square()``: the same numbers both ways (backward
    2 r g), but autograd's backward of a product is two multiplies where that of a power
    is a pow kernel, ~3x slower on a CPU (bench/modern_step.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return r * r


class SwiGLU(nn.Module):
    """silu(gate) * up, with ``c_fc`` producing [gate | up] side by side: (..., 2H) -> (..., H)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)  # 2 x (..., H)
        return F.silu(gate) * up


def make_activation(name: str) -> nn.Module:
    """The MLP non-linearity named by ``GPTConfig.activation``."""
    return {
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "relu": nn.ReLU,
        "relu2": ReLUSquared,
        "swiglu": SwiGLU,
    }[name]()
