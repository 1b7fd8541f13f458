"""LoRA: low-rank adapters on a frozen model (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models", arXiv:2106.09685).

A frozen ``nn.Linear`` computes ``y = x W^T + b``. LoRA learns a low-rank update
``delta W = (alpha / r) * B A`` beside it, with ``A`` (r, in) and ``B`` (out, r)::

                    x (..., in)
            ┌────────────┴────────────┐
            │                         │
     ┌──────┴──────┐            dropout(x)
     │  W (frozen) │           ┌──────┴──────┐
     │ (out, in)   │           │ A (r, in)   │  random (Kaiming-uniform)
     └──────┬──────┘           └──────┬──────┘
            │                  ┌──────┴──────┐
            │                  │ B (out, r)  │  zeros: the adapter starts as a no-op
            │                  └──────┬──────┘
            │                   × alpha / r
            └──────────(+)────────────┘
                        y (..., out)

Only A and B train: ``r * (in + out)`` numbers per layer instead of ``in * out``.
Because B starts at zero, the adapted model equals the base model at step 0.
The frozen layer may also be a quantized ``QuantLinear`` (QLoRA's idea, Dettmers et al.
2023, arXiv:2305.14314: integer base, float adapters); such adapters stay unmerged.
:func:`merge_lora` folds ``W + (alpha / r) B A`` back into plain ``nn.Linear``
layers, so the result is an ordinary GPT that saves and exports like any other.

The target ``lm_head`` adapts the (V, C) matrix that a tied GPT uses twice, as the LM
head and as the token embedding: one update ``(alpha / r) B A`` (B (V, r), A (r, C)),
read by both (:class:`LoRAEmbedding`), so merging keeps the tie. It is what lets LoRA
move the output distribution token by token (a base pretrained on other text gives
modern-English tokens low logits that the blocks alone can only shift in an
n_embd-dimensional subspace); it costs ``r * (V + C)`` parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.errors import ConfigError, ModelError
from gptforge.model.variants import add_variant, remove_variants

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A``.

    Args:
        base: the layer to adapt; its parameters are frozen (``requires_grad=False``).
        rank: r, the rank of the update (> 0).
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout on the adapter's input only.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRA rank must be > 0, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        h = (self.dropout(x) @ self.lora_A.t()) * self.scaling  # (..., r): scale the small tensor
        # y + h B^T in one kernel: no (..., out) temporaries beside y and the result
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.t())  # (N, out)
        return out.view(y.shape)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is ``W + (alpha / r) B A``."""
        if not isinstance(self.base, nn.Linear):
            raise ModelError(
                f"cannot merge LoRA adapters into a {type(self.base).__name__} (a quantized base has no "
                "float weight to fold them into); keep them unmerged, or fine-tune the float model"
            )
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        out.weight.copy_((self.base.weight.float() + delta).to(self.base.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


class LoRAEmbedding(nn.Module):
    """The token embedding of a tied GPT whose LM head is a :class:`LoRALinear`: it looks
    rows up in ``W + (alpha / r) B A``, the same adapted matrix as the head.

    The adapter (A, B) belongs to the head; this module keeps a reference to it outside
    the module tree so the parameters are registered (and saved, and counted) once.
    """

    def __init__(self, base: nn.Embedding, head: LoRALinear) -> None:
        super().__init__()
        if base.weight is not head.base.weight:
            raise ConfigError("LoRAEmbedding needs the embedding tied to the adapted LM head")
        self.base = base
        self._head = (head,)  # a tuple, not a submodule

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        head = self._head[0]
        rows = F.embedding(idx, head.lora_B)  # (..., r): the rows of B for these ids
        return self.base(idx) + (rows * head.scaling) @ head.lora_A  # (..., C)


def _adaptable(module: nn.Module) -> bool:
    """A float ``nn.Linear``, or a quantized ``QuantLinear`` (frozen integers, float adapters)."""
    if isinstance(module, nn.Linear):
        return True
    # a QuantLinear, recognised by what it offers (the model package does not import quantize/)
    return (hasattr(module, "dequantized_weight") and hasattr(module, "in_features")
            and not getattr(module, "_tied_to", None))  # fmt: skip


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS,
    scope: str = "",
) -> list[str]:
    """Freeze ``model`` and wrap every linear layer whose name ends with a target in LoRALinear.

    ``targets`` are the last component of a module name (``c_attn``, ``c_proj``,
    ``c_fc``, ``lm_head``); only modules under ``scope`` (a module path, "" = all) are
    wrapped. Everything else in the model is frozen; the caller may unfreeze more (a
    classification head) afterwards. When ``lm_head`` is adapted and tied to
    ``transformer.wte``, the embedding reads the same update (:class:`LoRAEmbedding`).
    The ``lora`` variant (with the full names of the wrapped modules) is recorded on ``model``.

    Returns:
        the names of the wrapped modules.

    Raises:
        ConfigError: when no module matches ``targets``.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = [
        f"{name}.{child_name}" if name else child_name
        for name, module in model.named_modules()
        if not scope or name == scope or name.startswith(scope + ".")
        for child_name, child in module.named_children()
        if child_name in targets and _adaptable(child)
    ]
    if not names:
        raise ConfigError(f"no linear layer named {list(targets)} in the model; LoRA targets are e.g. {list(DEFAULT_TARGETS)}")
    _wrap(model, names, rank, alpha, dropout)
    return names


def _wrap(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float) -> None:
    """Wrap the modules ``names`` in LoRALinear (and the tied embedding) and record the variant."""
    for full in names:
        parent_name, _, child_name = full.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank, alpha, dropout))
    head, transformer = getattr(model, "lm_head", None), getattr(model, "transformer", None)
    wte = getattr(transformer, "wte", None)
    if isinstance(head, LoRALinear) and isinstance(wte, nn.Embedding) and wte.weight is head.base.weight:
        transformer.wte = LoRAEmbedding(wte, head)
    add_variant(model, {"kind": "lora", "rank": rank, "alpha": alpha, "dropout": dropout, "modules": list(names)})


def apply_variant(model: nn.Module, entry: dict, source) -> nn.Module:  # noqa: ANN001
    """The ``lora`` variant on a (meta-device) model being loaded: the adapters, no weights yet.

    ``modules`` names the wrapped layers; entries written before it existed give the
    targets' last names instead (``targets``), matched over the whole model.
    """
    try:
        rank, alpha = int(entry["rank"]), float(entry["alpha"])
        dropout = float(entry.get("dropout", 0.0))
        if "modules" in entry:
            _wrap(model, [str(n) for n in entry["modules"]], rank, alpha, dropout)
        else:
            apply_lora(model, rank, alpha, dropout, tuple(entry["targets"]))
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as e:
        raise ModelError(f"{source}: the lora variant does not fit the model ({e})") from None
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain ``nn.Linear`` holding the merged weight (in place);
    a :class:`LoRAEmbedding` becomes an ``nn.Embedding`` tied to its merged head again."""
    merged: dict[int, nn.Linear] = {}
    if any(isinstance(m, LoRALinear) and not isinstance(m.base, nn.Linear) for m in model.modules()):
        raise ModelError(
            "cannot merge LoRA adapters into a quantized base (it has no float weight to fold them "
            "into); keep them unmerged (they load back as they are), or fine-tune the float model"
        )
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                merged[id(child)] = child.merged()
                setattr(module, child_name, merged[id(child)])
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRAEmbedding):
                emb = child.base
                emb.weight = merged[id(child._head[0])].weight  # the tie, restored
                setattr(module, child_name, emb)
    remove_variants(model, "lora")
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``...lora_A`` / ``...lora_B``), to save adapters apart."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), shared tensors counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_config_entry(model: nn.Module) -> dict | None:
    """The ``lora`` variant entry describing the adapters in ``model`` (None if none)."""
    entries = [v for v in getattr(model, "variants", None) or [] if v["kind"] == "lora"]
    return entries[-1] if entries else None
