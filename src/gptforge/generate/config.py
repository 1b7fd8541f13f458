"""Generation options, validated without importing torch (so bad CLI flags fail fast).

The meaning of each sampling option is defined in :mod:`gptforge.generate.sampling`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gptforge.config import cfg_field
from gptforge.errors import ConfigError


def validate_sampling(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> None:
    """Check sampling options; raise one :class:`ConfigError` listing every problem."""
    problems = []
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        problems.append(f"temperature {temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        problems.append(f"top_k {top_k} must be an integer >= 1 (or unset to disable)")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        problems.append(f"top_p {top_p} must be in (0, 1] (or unset to disable)")
    if min_p is not None and not (0.0 <= min_p <= 1.0):
        problems.append(f"min_p {min_p} must be in [0, 1] (or unset to disable)")
    if not repetition_penalty > 0:
        problems.append(f"repetition_penalty {repetition_penalty} must be > 0 (1 = off)")
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if not math.isfinite(value):
            problems.append(f"{name} {value} must be a finite number (0 = off)")
    if problems:
        raise ConfigError("invalid sampling options: " + "; ".join(problems))


@dataclass
class GenerationConfig:
    """Every decoding option. Invalid values raise :class:`ConfigError` at construction."""

    max_new_tokens: int = cfg_field(256, "how many tokens to generate at most")
    temperature: float = cfg_field(1.0, "softmax temperature; 0 = greedy")
    top_k: int | None = cfg_field(None, "sample among the k most likely tokens only")
    top_p: float | None = cfg_field(None, "nucleus sampling: smallest set with probability >= p")
    min_p: float | None = cfg_field(None, "drop tokens less likely than min_p x the top token")
    repetition_penalty: float = cfg_field(1.0, "CTRL penalty on tokens already in the sequence; 1 = off")
    frequency_penalty: float = cfg_field(0.0, "subtract f x (times generated) from a token's logit")
    presence_penalty: float = cfg_field(0.0, "subtract p from the logit of every token generated so far")
    stop_token_ids: list[int] | None = cfg_field(None, "token ids that end a sequence (the token is kept)")
    stop_strings: list[str] | None = cfg_field(None, "strings that end the text (text helpers; not included)")
    stop_at_eot: bool = cfg_field(True, "text helpers stop at the tokenizer's end-of-text token")
    seed: int | None = cfg_field(None, "seed for reproducible sampling")
    num_samples: int = cfg_field(1, "independent samples per prompt")
    pad_token_id: int | None = cfg_field(None, "fills rows after they stop; default the first stop id")
    context_keep: int | None = cfg_field(None, "tokens kept when the context overflows; default 3/4 block_size")

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens {self.max_new_tokens} must be an integer >= 0")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            problems.append(f"num_samples {self.num_samples} must be an integer >= 1")
        if self.context_keep is not None and self.context_keep < 1:
            problems.append(f"context_keep {self.context_keep} must be >= 1")
        if self.stop_strings is not None and any(not isinstance(s, str) or not s for s in self.stop_strings):
            problems.append(f"stop_strings {self.stop_strings!r} must be non-empty strings")
        if problems:
            raise ConfigError("invalid generation options: " + "; ".join(problems))
        validate_sampling(
            self.temperature, self.top_k, self.top_p, self.min_p,
            self.repetition_penalty, self.frequency_penalty, self.presence_penalty,
        )  # fmt: skip

    def replace(self, **changes: object) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
