"""The optimizer of a pretraining run: AdamW, or Muon for the hidden matrices + AdamW for the rest.

AdamW (``train.optimizer adamw``, the default) follows nanoGPT's ``configure_optimizers``:
every parameter with 2 or more dimensions (Linear weights, and the embeddings, which are
tied to the LM head) decays; biases and norm gains (1-D) do not, since shrinking them
towards 0 only fights the normalisation.

Muon (``train.optimizer muon``; Jordan et al. 2024, "Muon: an optimizer for hidden layers
in neural networks", the optimizer of the modded-nanogpt speedrun) keeps a momentum of
each 2-D weight's gradient and replaces the update by its nearest semi-orthogonal matrix
(a few Newton-Schulz iterations, the singular values pushed towards 1), so every direction
of the matrix learns at the same rate. It is meant for the matrices inside the blocks only:
the embeddings, the LM head, gains and biases stay on AdamW, each group with its own
learning rate. The step is :class:`gptforge.train.muon.Muon` (``torch.optim.Muon``'s
algorithm, but with the orthogonalisation in fp32 on the CPU, where torch's fixed bf16 is
about 10x slower: see that module); :class:`MuonWithAdamW` runs it and an AdamW side by
side as one optimizer.

Every group carries ``lr_scale`` (its peak learning rate / ``train.lr``); the schedule
sets ``group["lr"] = lr_at(step) * lr_scale`` (:func:`set_lr`), so warmup and decay shape
every group alike.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from gptforge.train.config import TrainConfig
from gptforge.train.muon import Muon, default_ns_dtype

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


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The weights Muon takes: 2-D matrices inside the blocks (not embeddings, head, gains, biases)."""
    return p.dim() == 2 and ".h." in f".{name}" and not name.endswith("bias")


def muon_param_groups(model: torch.nn.Module, cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(Muon groups, AdamW groups) for ``model``: the hidden matrices, then the rest.

    AdamW gets the embeddings and LM head (decayed, ``lr``) and the gains and biases
    (not decayed, ``lr``); Muon gets the block matrices at ``muon_lr`` with ``weight_decay``.
    """
    seen: set[int] = set()
    hidden, matrices, vectors = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if is_hidden_matrix(name, p):
            hidden.append(p)
        else:
            (matrices if p.dim() >= 2 else vectors).append(p)
    base = cfg.lr if cfg.lr > 0 else 1.0
    muon = [{"params": hidden, "weight_decay": cfg.weight_decay, "name": "muon", "lr_scale": cfg.muon_lr / base}]
    adamw = [
        {"params": matrices, "weight_decay": cfg.weight_decay, "name": "embed_head", "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "name": "no_decay", "lr_scale": 1.0},
    ]
    return muon, adamw


class MuonWithAdamW(torch.optim.Optimizer):
    """:class:`Muon` on some groups and ``torch.optim.AdamW`` on the others, as one optimizer.

    Why one object: the training loop, the grad scaler, gradient clipping, checkpoints
    and FSDP's state conversion all take a single ``torch.optim.Optimizer``. The two
    inner optimizers share this object's ``param_groups`` (Muon's first) and ``state``
    (keyed by parameter), so ``state_dict()`` / ``load_state_dict()`` are the standard
    ones and a checkpoint holds both halves.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, muon: dict[str, Any],
                 adamw: dict[str, Any]) -> None:
        self._muon = Muon(muon_groups, **muon)
        self._adamw = torch.optim.AdamW(adamw_groups, **adamw)
        super().__init__(self._muon.param_groups + self._adamw.param_groups, {})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this object's groups and state (after init and after loading)."""
        n = len(self._muon.param_groups)
        self._muon.param_groups, self._adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self._muon.state = self._adamw.state = self.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Optimizer.__init__ adds each group again; they are the inner optimizers' groups,
        # already filled with their defaults, so they are kept as they are.
        self.param_groups.append(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # rebuilds param_groups and state
        self._link()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon.step()
        self._adamw.step()
        return loss


def fused_supported(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA always; CPU/MPS on newer torch).

    The signature says only that the argument exists; which devices have the kernel depends on
    the build, so a one-element AdamW is made on ``device`` (a torch without the CPU kernel
    raises RuntimeError there, which ``--train.fused true`` once passed on to the user).
    """
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def default_fused(optimizer: str, device: torch.device) -> bool:
    """Whether AdamW runs fused when ``train.fused`` is not set: on CUDA, and on the CPU for
    ``optimizer adamw`` where this torch has the kernel.

    Why on the CPU: without ``fused`` or ``foreach``, torch steps AdamW one tensor at a time,
    about ten small kernels per parameter; the fused kernel does one pass per tensor. On
    nanoGPT's CPU recipe (27 tensors, 0.8M parameters) the step takes 0.85 ms instead of
    4.8 ms (2-core AMD EPYC, torch 2.13), ~5% of a training step. The update is the same
    formula; its rounding differs by about 1 ulp (2e-7 on these weights). Muon's AdamW half
    keeps torch's default on the CPU, where its tests compare bitwise against plain AdamW.
    """
    if device.type == "cuda":
        return fused_supported(device)
    return device.type == "cpu" and optimizer == "adamw" and fused_supported(device)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer (``cfg.optimizer``): AdamW over :func:`param_groups`, fused by default
    where :func:`default_fused` says (or as ``cfg.fused`` says), or :class:`MuonWithAdamW` over
    :func:`muon_param_groups`."""
    fused = cfg.fused if cfg.fused is not None else default_fused(cfg.optimizer, device)
    if fused and not fused_supported(device):
        logger.warning("fused AdamW is not available for %s in this torch; using the foreach kernel", device)
        fused = False
    kwargs = {"fused": True} if fused else {}
    adamw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)
    if cfg.optimizer == "muon":
        muon_groups, adamw_groups = muon_param_groups(model, cfg)
        # bf16 Newton-Schulz where matmuls have bf16 units (CUDA, AMX), fp32 elsewhere (see train/muon.py)
        muon = dict(lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=True, ns_dtype=default_ns_dtype(device))
        return MuonWithAdamW(muon_groups, adamw_groups, muon=muon, adamw=adamw)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **adamw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
