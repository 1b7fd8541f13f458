"""AdamW with two parameter groups: weight decay on matrices, none on the rest.

Following nanoGPT's ``configure_optimizers``: every parameter with 2 or more
dimensions (Linear weights, and the embeddings, which are tied to the LM head)
decays; biases and LayerNorm gains (1-D) do not, since shrinking them towards 0
only fights the normalisation.
"""

from __future__ import annotations

import inspect
import logging

import torch

from gptforge.train.config import TrainConfig

logger = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed (dim >= 2) and a non-decayed group.

    Shared (tied) parameters appear once. Group names are kept so tests and
    logs can tell them apart.
    """
    seen: set[int] = set()
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def fused_supported(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA always; CPU/MPS on newer torch)."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return device.type in ("cuda", "cpu", "mps")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused on CUDA by default (or as ``cfg.fused`` says)."""
    fused = cfg.fused if cfg.fused is not None else (device.type == "cuda" and fused_supported(device))
    if fused and not fused_supported(device):
        logger.warning("fused AdamW is not available for %s in this torch; using the foreach kernel", device)
        fused = False
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs
    )
