"""``GPTConfig`` and the named presets (DESIGN.md's table).

Imports no torch: configs are parsed and checked before the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from gptforge.config import apply, cfg_field
from gptforge.errors import ConfigError

# The allowed values of the Literal fields, checked in __post_init__ as well as by
# config.apply, so a GPTConfig built directly in Python is checked too.
_CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ("gelu", "relu", "relu2", "swiglu"),
    "norm": ("pre", "post"),
    "normalization": ("layernorm", "rmsnorm"),
    "positions": ("learned", "rope"),
    "attention": ("sdpa", "explicit"),
}


@dataclass
class GPTConfig:
    """The shape and options of a GPT. Every field maps to ``--model.FIELD``."""

    vocab_size: int | None = cfg_field(None, "vocabulary size; None = taken from the tokenizer/dataset")
    block_size: int = cfg_field(256, "context length (maximum sequence length)")
    n_layer: int = cfg_field(6, "number of transformer blocks")
    n_head: int = cfg_field(6, "attention heads per block")
    n_embd: int = cfg_field(384, "embedding (residual stream) width")
    head_size: int | None = cfg_field(None, "size of one head; None = n_embd // n_head")
    mlp_hidden: int | None = cfg_field(None, "MLP hidden width; None = 4 * n_embd")
    activation: Literal["gelu", "relu", "relu2", "swiglu"] = cfg_field(
        "gelu", "MLP activation: gelu (tanh approximation, as GPT-1, GPT-2 and HF's gelu_new), relu, "
        "relu2 (ReLU squared, Primer), swiglu (silu(gate) * up, Llama)"
    )
    norm: Literal["pre", "post"] = cfg_field("pre", "LayerNorm before (GPT-2) or after (GPT-1) each sub-block")
    normalization: Literal["layernorm", "rmsnorm"] = cfg_field(
        "layernorm", "the norm layers: layernorm (GPT-2) or rmsnorm (Llama; no mean, no bias)"
    )
    norm_gain: bool = cfg_field(True, "norms have a learnable gain (false: parameter-free norms)")
    qk_norm: bool = cfg_field(False, "normalise queries and keys per head before attention (QK-norm)")
    positions: Literal["learned", "rope"] = cfg_field(
        "learned", "learned position embeddings (wpe, GPT-2) or rotary positions on q and k (rope, Llama)"
    )
    rope_base: float = cfg_field(10000.0, "RoPE base: the slowest rotation's wavelength scale (positions rope)")
    mlp_multiple_of: int = cfg_field(
        256, "swiglu with mlp_hidden unset: the hidden width 8/3 * n_embd is rounded up to a multiple of this (Llama)"
    )
    logit_softcap: float | None = cfg_field(
        None, "cap the logits smoothly at +-this: cap * tanh(logits / cap) (Gemma 2); None = off"
    )
    zero_init_proj: bool = cfg_field(
        False, "initialise the output projections (attn.c_proj, mlp.c_proj) to zero: each block starts as identity"
    )
    dropout: float = cfg_field(0.0, "dropout on embeddings, attention weights and residual outputs")
    bias: bool = cfg_field(True, "biases in Linear and LayerNorm layers")
    tie_weights: bool = cfg_field(True, "share the token embedding and LM head weights")
    attention: Literal["sdpa", "explicit"] = cfg_field(
        "sdpa", "sdpa = torch scaled_dot_product_attention (fused); explicit = readable reference"
    )
    layer_norm_eps: float = cfg_field(1e-5, "LayerNorm epsilon")
    pad_vocab_to: int = cfg_field(
        1, "round the embedding/LM-head rows up to a multiple of this (64 on GPUs: 50257 -> 50304, faster "
        "matmuls); the extra rows never reach the logits"
    )

    def __post_init__(self) -> None:
        # Every problem is collected and reported at once (STYLE.md section 7).
        problems = []
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"model.{name} must be a positive integer, got {value!r}")
        for name in ("vocab_size", "head_size", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                problems.append(f"model.{name} must be a positive integer or None, got {value!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"model.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.pad_vocab_to, bool) or not isinstance(self.pad_vocab_to, int) or self.pad_vocab_to < 1:
            problems.append(f"model.pad_vocab_to must be an integer >= 1 (1: no padding), got {self.pad_vocab_to!r}")
        if isinstance(self.mlp_multiple_of, bool) or not isinstance(self.mlp_multiple_of, int) or self.mlp_multiple_of < 1:
            problems.append(f"model.mlp_multiple_of must be an integer >= 1, got {self.mlp_multiple_of!r}")
        if not isinstance(self.rope_base, (int, float)) or not self.rope_base > 1:
            problems.append(f"model.rope_base must be a number > 1, got {self.rope_base!r}")
        if self.logit_softcap is not None and (
            not isinstance(self.logit_softcap, (int, float)) or not self.logit_softcap > 0
        ):
            problems.append(f"model.logit_softcap must be positive or None, got {self.logit_softcap!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            problems.append(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if (
            self.head_size is None
            and isinstance(self.n_head, int)
            and isinstance(self.n_embd, int)
            and self.n_head > 0
            and self.n_embd > 0
            and self.n_embd % self.n_head != 0
        ):
            problems.append(
                f"model.n_embd ({self.n_embd}) is not divisible by model.n_head ({self.n_head}); "
                "change one of them or set model.head_size explicitly"
            )
        if self.positions == "rope" and not problems and self.head_dim % 2:
            problems.append(f"model.positions rope needs an even head size, got {self.head_dim}")
        if problems:
            raise ConfigError("\n".join(problems))

    @property
    def head_dim(self) -> int:
        """The size of one attention head (``head_size`` or ``n_embd // n_head``)."""
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and LM head: ``vocab_size`` rounded up to ``pad_vocab_to``.

        Why: GPU matmuls run faster on sizes that are multiples of 64 (nanoGPT pads
        GPT-2's 50,257 to 50,304). Ids never reach the extra rows and the model cuts
        their logits off, so outputs and losses are those of the unpadded model.
        """
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    @property
    def hidden_dim(self) -> int:
        """The MLP hidden width H: ``mlp_hidden``, else ``4 * n_embd``.

        For swiglu, whose ``c_fc`` makes two H-wide halves (gate, up), the default is
        Llama's: 2/3 of ``4 * n_embd`` (the same parameter count as a 4x GELU MLP),
        rounded up to a multiple of ``mlp_multiple_of`` (n_embd 4096 -> 11008 with 256).
        """
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.activation == "swiglu":
            h, m = int(2 * 4 * self.n_embd / 3), self.mlp_multiple_of
            return m * -(-h // m)
        return 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> GPTConfig:
        """A copy of the named preset, with ``overrides`` applied (e.g. ``vocab_size=65``)."""
        import difflib

        if name not in PRESETS:
            hint = difflib.get_close_matches(name, PRESETS, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; choose one of: {', '.join(PRESETS)}"
            raise ConfigError(f"unknown preset {name!r}{extra}")
        return apply(dataclasses.replace(PRESETS[name]), overrides, source=f"preset {name}")


def _gpt2(n_layer: int, n_head: int, n_embd: int) -> GPTConfig:
    # OpenAI GPT-2 (Radford et al. 2019): pre-LN, GELU (tanh), learned positions, tied LM head.
    return GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


def _toygpt(n_layer: int, n_head: int, n_embd: int) -> GPTConfig:
    # The toyGPT seed: GPT-2 blocks (biases, tied head) at context 512 with the GPT-2 vocabulary.
    # Counted without position embeddings these give 123.65M / 253.00M / 1311.53M, within
    # 0.05% of the seed's 123.70M / 253.06M / 1311.58M (checked in tests/model/).
    return GPTConfig(vocab_size=50257, block_size=512, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


PRESETS: dict[str, GPTConfig] = {
    # GPT-1 (Radford et al. 2018): post-LN, GELU, learned positions, 40478 BPE vocab, context 512,
    # tied LM head. OpenAI's finetune-transformer-lm code uses the tanh GELU, and so does Hugging
    # Face's OpenAIGPTModel (its afn "gelu" maps to gelu_new), so "gelu" here matches both.
    # 116.5M parameters (tests/model/test_model_presets.py).
    "gpt1": GPTConfig(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768, norm="post"),
    "gpt2": _gpt2(12, 12, 768),
    "gpt2-medium": _gpt2(24, 16, 1024),
    "gpt2-large": _gpt2(36, 20, 1280),
    "gpt2-xl": _gpt2(48, 25, 1600),
    "toygpt-small": _toygpt(12, 8, 768),
    "toygpt-medium": _toygpt(16, 8, 1024),
    "toygpt-large": _toygpt(24, 16, 2048),
    # nanoGPT config/train_shakespeare_char.py: the "baby GPT".
    "shakespeare-char": GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
    # The BPE-500 seed: ReLU MLP, 6 heads of 38 in a 232-wide model (6 * 38 = 228 != 232).
    "shakespeare-bpe500": GPTConfig(
        vocab_size=500, block_size=256, n_layer=5, n_head=6, n_embd=232, head_size=38,
        activation="relu", dropout=0.2, tie_weights=False,
    ),
    # nanoGPT README's CPU recipe (n_layer=4 n_head=4 n_embd=128 block_size=64 dropout=0).
    "shakespeare-char-cpu": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
    # The modern recipe (bench/recipes.py, README "A modern recipe"): nanoGPT's CPU shape with
    # rotary positions (Su et al. 2021), RMSNorm, QK-norm, ReLU² (So et al. 2021), an untied
    # head and zero-initialised output projections (modded-nanogpt); trained with Muon on a
    # schedule sized to nanoGPT's wall time (train/config.py TRAIN_RECIPES has how it was chosen).
    "shakespeare-char-modern-cpu": GPTConfig(
        block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False, positions="rope",
        normalization="rmsnorm", qk_norm=True, activation="relu2", tie_weights=False, zero_init_proj=True,
    ),
    # The same options on nanoGPT's baby GPT shape, for a GPU (not measured here: no GPU was lent).
    "shakespeare-char-modern": GPTConfig(
        block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False, positions="rope",
        normalization="rmsnorm", qk_norm=True, activation="relu2", tie_weights=False, zero_init_proj=True,
    ),
    # A tiny model for tests (in the spirit of torchtitan's debugmodel flavour).
    "test-tiny": GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32),
}
