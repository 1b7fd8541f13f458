"""Parameter counts, FLOPs per token, MFU and memory of a GPT, from its config alone.

Everything here is arithmetic on a :class:`GPTConfig` (no torch, no weights), so
``gptforge model info --preset toygpt-large`` is instant. The parameter count is
checked against the real module (``GPT.num_params``) for every preset in
``tests/model/test_model_presets.py``.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's ``estimate_mfu``)::

    training (forward + backward) = 6 * N + 12 * L * nh * hs * T
    forward only                  = 2 * N +  4 * L * nh * hs * T

N counts the weights that take part in a matrix multiply: every parameter except
the position embeddings, and except the token embedding when it is not tied to
the LM head (a lookup costs no FLOPs; tied, the same matrix *is* the LM head).
Each such weight costs one multiply and one add per token forward (2N) and twice
that backward (4N). The attention term counts ``q @ k^T`` and ``weights @ v``:
2 * hs * T FLOPs each per head and token forward, over the full T x T square
(PaLM and nanoGPT count the masked half too, so MFU figures stay comparable).

MFU (model FLOPs utilisation) = tokens/s * training FLOPs per token / device peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gptforge.errors import ConfigError
from gptforge.model.config import GPTConfig

# Dense (no sparsity) peak FLOP/s of common accelerators, by dtype, from the vendors'
# datasheets: NVIDIA H100 (SXM5 / PCIe), H200, A100 (SXM/PCIe share the figures), L4, V100.
# fp32 means plain fp32 (CUDA cores); tf32 is what fp32 matmuls use when allowed.
DEVICE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100-sxm": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "h100-pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "h200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "l4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30e12},
    "v100": {"fp16": 125e12, "fp32": 15.7e12},
}

BYTES_PER_PARAM: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}

# Training memory per parameter with AdamW, excluding activations: fp32 weights (4),
# fp32 gradients (4) and the two fp32 moment estimates (8). Autocast keeps fp32 weights.
ADAMW_TRAIN_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts, shared (tied) tensors counted once."""

    total: int
    without_positions: int  # total minus position embeddings: nanoGPT's "number of parameters"
    non_embedding: int  # total minus token and position embeddings (Kaplan et al. 2020)
    matmul: int  # weights used in a matrix multiply: the N of 6N (see the module docstring)
    token_embedding: int
    position_embedding: int
    per_layer: int


def _vocab(config: GPTConfig) -> int:
    """Rows of the token embedding: the vocabulary with ``pad_vocab_to``'s padding (they exist)."""
    if config.vocab_size is None:
        raise ConfigError(
            "model.vocab_size is not set (this preset takes it from the tokenizer); "
            "pass --model.vocab_size N"
        )
    return config.padded_vocab_size


def count_params(config: GPTConfig) -> ParamCounts:
    """Count the parameters of ``GPT(config)`` without building it.

    Per block: two LayerNorms, ``c_attn`` (C -> 3 * nh * hs), ``attn.c_proj`` (nh * hs -> C),
    ``mlp.c_fc`` (C -> H) and ``mlp.c_proj`` (H -> C), each with a bias when ``config.bias``.

    Example: GPT-2 124M (C=768, H=3072, V=50257, T=1024, 12 layers) has 7,087,872 per
    block, 38,597,376 + 786,432 in the embeddings and 1,536 in ``ln_f``: 124,439,808.
    """
    C, H, V = config.n_embd, config.hidden_dim, _vocab(config)
    inner = config.n_head * config.head_dim
    b = 1 if config.bias else 0
    fc = 2 * H if config.activation == "swiglu" else H  # swiglu: [gate | up]

    def norm(width: int) -> int:  # gain (+ LayerNorm's bias), or nothing for a parameter-free norm
        if not config.norm_gain:
            return 0
        return width + (b * width if config.normalization == "layernorm" else 0)

    layer_norm = norm(C)
    per_layer = (
        2 * layer_norm
        + (2 * norm(config.head_dim) if config.qk_norm else 0)  # attn.q_norm, attn.k_norm
        + C * 3 * inner + b * 3 * inner  # attn.c_attn
        + inner * C + b * C  # attn.c_proj
        + C * fc + b * fc  # mlp.c_fc
        + H * C + b * C  # mlp.c_proj
    )
    wte = V * C
    wpe = config.block_size * C if config.positions == "learned" else 0  # rope: no table
    ln_f = layer_norm if config.norm == "pre" else 0  # post-LN (GPT-1) has no final norm
    lm_head = 0 if config.tie_weights else V * C
    total = wte + wpe + config.n_layer * per_layer + ln_f + lm_head
    return ParamCounts(
        total=total,
        without_positions=total - wpe,
        non_embedding=total - wpe - wte,
        matmul=total - wpe - (0 if config.tie_weights else wte),
        token_embedding=wte,
        position_embedding=wpe,
        per_layer=per_layer,
    )


def flops_per_token(config: GPTConfig, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token: ``6N + 12 L nh hs T`` (training) or ``2N + 4 L nh hs T`` (forward).

    Args:
        config: the model shape.
        seq_len: the sequence length T (default ``block_size``).
        training: forward + backward (True) or forward only.
    """
    T = config.block_size if seq_len is None else seq_len
    if T <= 0:
        raise ConfigError(f"sequence length must be positive, got {T}")
    N = count_params(config).matmul
    attention = 4 * config.n_layer * config.n_head * config.head_dim * T
    return 3 * (2 * N + attention) if training else 2 * N + attention


def device_key(name: str) -> str | None:
    """Map a device name (``torch.cuda.get_device_name()`` or a table key) to a table key."""
    n = name.lower().replace(" ", "-")
    if n in DEVICE_PEAK_FLOPS:
        return n
    if "h100" in n:
        return "h100-pcie" if "pcie" in n else "h100-sxm"  # "NVIDIA H100 80GB HBM3" is the SXM part
    for key in ("h200", "a100", "l4", "v100"):
        if key in n:
            return key
    return None


def peak_flops(device: str, dtype: str = "bf16") -> float:
    """The dense peak FLOP/s of ``device`` (a table key, a CUDA device name, or a number).

    Raises:
        ConfigError: for a device not in :data:`DEVICE_PEAK_FLOPS` (pass the peak as a
            number instead, e.g. ``--peak 2e12`` for a CPU) or a dtype it has no figure for.
    """
    try:
        value = float(device)
    except ValueError:
        value = None
    if value is not None:
        if value <= 0:
            raise ConfigError(f"device peak must be a positive number of FLOP/s, got {device!r}")
        return value
    key = device_key(device)
    if key is None:
        raise ConfigError(
            f"unknown device {device!r} for a peak FLOP/s figure; known: {', '.join(DEVICE_PEAK_FLOPS)}; "
            "or give the peak as a number (e.g. 2e12)"
        )
    if dtype not in DEVICE_PEAK_FLOPS[key]:
        raise ConfigError(f"no {dtype} peak for {key}; known dtypes: {', '.join(DEVICE_PEAK_FLOPS[key])}")
    return DEVICE_PEAK_FLOPS[key][dtype]


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (tokens/s x training FLOPs per token) / peak."""
    return tokens_per_s * flops_per_tok / peak


def weight_bytes(config: GPTConfig, dtype: str = "fp32") -> float:
    """Bytes of the weights alone (tied tensors once) in ``dtype`` (fp32, bf16, fp16, int8, int4)."""
    if dtype not in BYTES_PER_PARAM:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(BYTES_PER_PARAM)}")
    return count_params(config).total * BYTES_PER_PARAM[dtype]


def kv_cache_bytes_per_token(config: GPTConfig, dtype: str = "bf16") -> float:
    """Bytes the KV cache holds per cached token of one sequence: keys and values of every layer."""
    return 2 * config.n_layer * config.n_head * config.head_dim * BYTES_PER_PARAM[dtype]


def summary(config: GPTConfig, seq_len: int | None = None) -> dict[str, object]:
    """Every figure above as one JSON-ready dict (what ``gptforge model info --json`` prints)."""
    counts = count_params(config)
    T = config.block_size if seq_len is None else seq_len
    return {
        "params": asdict(counts),
        "seq_len": T,
        "flops_per_token_train": flops_per_token(config, T, training=True),
        "flops_per_token_forward": flops_per_token(config, T, training=False),
        "weight_bytes": {d: weight_bytes(config, d) for d in BYTES_PER_PARAM},
        "train_bytes_adamw": counts.total * ADAMW_TRAIN_BYTES_PER_PARAM,
        "kv_cache_bytes_per_token": {d: kv_cache_bytes_per_token(config, d) for d in ("fp32", "bf16")},
    }
