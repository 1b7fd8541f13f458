"""Task accuracy: multiple choice (HellaSwag, ``mc:``) and last-word cloze (``cloze:``).

Multiple choice, completion style (llm.c, nanochat): every choice is scored by the sum of
its tokens' log-probabilities after the context (:mod:`gptforge.evaluate.continuations`).

* ``acc``: the choice with the highest sum is right.
* ``acc_norm``: the highest *mean* wins, so long choices are not punished for their
  length. Per token (``norm="token"``, llm.c's ``acc_norm``, the default) or per UTF-8
  byte of the choice's text (``norm="byte"``, what lm-eval's ``acc_norm`` does with the
  choice's characters, and independent of the tokenizer); both are always reported, as
  ``acc_norm_token`` and ``acc_norm_byte``, and ``acc_norm`` is the chosen one.

Cloze (LAMBADA style): ``acc`` is the share of items whose last word greedy decoding
reproduces exactly (every target token is the argmax given the true prefix, which is the
same thing); ``perplexity`` is ``exp`` of the mean negative log-likelihood of the whole last
word per item (lm-eval's ``perplexity`` for LAMBADA).

An item the tokenizer cannot encode (a character a char tokenizer has never seen) is
skipped, counted in ``skipped`` and named in the log, never silently dropped.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from gptforge.errors import ConfigError, DataError, ModelError, TokenizerError
from gptforge.evaluate.continuations import TASK_BATCH_SIZE, Scored, score_all
from gptforge.evaluate.task_files import ChoiceItem, Task

logger = logging.getLogger(__name__)

NORMS = ("token", "byte")


def encode_item(tokenizer: Any, item: ChoiceItem) -> tuple[list[int], list[list[int]]]:
    """Context and choice ids, each encoded on its own (as llm.c does): the choice's ids
    are exactly what the model would have to write after the context. An empty context
    becomes ``<|endoftext|>``, the token GPT-2 saw before every document."""
    context = tokenizer.encode_ordinary(item.context) if item.context else []
    if not context:
        if tokenizer.eot_id is None:
            raise TokenizerError(f"item {item.id} has an empty context and the tokenizer has no end-of-text token")
        context = [tokenizer.eot_id]
    choices = [tokenizer.encode_ordinary(c) for c in item.choices]
    if any(not c for c in choices):
        raise TokenizerError(f"item {item.id} has a choice that encodes to no tokens")
    return context, choices


def _mc_metrics(items: list[ChoiceItem], scores: list[list[Scored]]) -> tuple[dict[str, float], list[dict]]:
    correct = {"acc": 0, "acc_norm_token": 0, "acc_norm_byte": 0}
    samples = []
    for item, scored in zip(items, scores, strict=True):
        lp = np.array([s.logprob for s in scored])
        n_tok = np.array([s.tokens for s in scored])
        n_byte = np.array([len(c.encode("utf-8")) for c in item.choices])
        preds = {
            "acc": int(np.argmax(lp)),
            "acc_norm_token": int(np.argmax(lp / n_tok)),
            "acc_norm_byte": int(np.argmax(lp / n_byte)),
        }
        for k, p in preds.items():
            correct[k] += p == item.label
        samples.append({
            "id": item.id, "label": item.label, "logprobs": lp.tolist(), "tokens": n_tok.tolist(),
            "bytes": n_byte.tolist(), "pred": preds["acc"], "pred_norm_token": preds["acc_norm_token"],
            "pred_norm_byte": preds["acc_norm_byte"],
        })
    n = max(len(items), 1)
    return {k: v / n for k, v in correct.items()}, samples


def _cloze_metrics(items: list[ChoiceItem], scores: list[list[Scored]]) -> tuple[dict[str, float], list[dict]]:
    hits, nll, samples = 0, 0.0, []
    for item, (s,) in zip(items, scores, strict=True):
        hits += s.greedy
        nll -= s.logprob
        samples.append({"id": item.id, "target": item.choices[0], "logprob": s.logprob, "tokens": s.tokens,
                        "greedy_correct": s.greedy})
    n = max(len(items), 1)
    mean = nll / n
    return {"acc": hits / n, "perplexity": math.exp(mean) if mean < 700 else float("inf")}, samples


def evaluate_task(
    model: torch.nn.Module,
    task: Task,
    tokenizer: Any = None,
    batch_size: int = TASK_BATCH_SIZE,
    limit: int | None = None,
    norm: str = "token",
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict]]:
    """Score ``task`` (the first ``limit`` items) with ``model``.

    Args:
        tokenizer: default ``model.tokenizer``.
        batch_size: items per forward pass (their choices run together).
        norm: ``token`` or ``byte``, which mean ``acc_norm`` reports.
        progress: a tqdm bar on stderr.

    Returns:
        ``(result, samples)``: the result holds ``task``, ``kind``, ``source``, ``items``
        (scored), ``skipped``, ``metrics`` (``acc``, ``acc_norm``, ``acc_norm_token``,
        ``acc_norm_byte`` or, for cloze, ``acc`` and ``perplexity``), ``norm``, ``seconds``,
        ``items_per_s``; ``samples`` has one dict per scored item (scores and predictions).
    """
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    extra = getattr(model, "extra_config", None) or {}
    if "classifier" in extra:
        raise ModelError("a classifier model has no language-model head to score continuations with")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer.json, so task text cannot be encoded")
    items = task.items[:limit] if limit is not None else task.items
    kept, encoded, skipped = [], [], []
    for item in items:
        try:
            encoded.append(encode_item(tokenizer, item))
        except TokenizerError as e:
            skipped.append((item.id, str(e)))
            continue
        kept.append(item)
    if skipped:
        logger.warning("%s: %d of %d items skipped, the tokenizer cannot encode them (first: item %s: %s)",
                       task.name, len(skipped), len(items), skipped[0][0], skipped[0][1])
    if not encoded:
        raise DataError(f"{task.name}: none of the {len(items)} items can be encoded with this tokenizer "
                        f"(item {skipped[0][0]}: {skipped[0][1]})" if skipped else f"{task.name} has no items")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(encoded), unit="item", desc=task.name, dynamic_ncols=True)
    t0 = time.perf_counter()
    scores = score_all(model, encoded, batch_size=batch_size, on_batch=bar.update if bar is not None else None)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if task.kind == "cloze":
        metrics, samples = _cloze_metrics(kept, scores)
    else:
        metrics, samples = _mc_metrics(kept, scores)
        metrics["acc_norm"] = metrics[f"acc_norm_{norm}"]
    result = {
        "task": task.name,
        "kind": task.kind,
        "source": task.source,
        "items": len(kept),
        "skipped": len(skipped),
        "metrics": metrics,
        "norm": norm if task.kind == "mc" else None,
        "seconds": seconds,
        "items_per_s": len(kept) / seconds if seconds > 0 else None,
    }
    return result, samples
