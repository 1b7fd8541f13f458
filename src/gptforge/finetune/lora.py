"""LoRA lives in :mod:`gptforge.model.lora` (a model variant; training from scratch uses it
too, with ``train --init-from``); these names stay importable from here."""

from gptforge.model.lora import (  # noqa: F401
    DEFAULT_TARGETS,
    LoRAEmbedding,
    LoRALinear,
    apply_lora,
    apply_variant,
    count_trainable,
    lora_config_entry,
    lora_state_dict,
    merge_lora,
)
