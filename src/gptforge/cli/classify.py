"""Classify text with a model fine-tuned by `gptforge finetune classify`: prints the
label and its probability (or every probability with --json)."""

from __future__ import annotations

import argparse
import json

from gptforge.cli.options import DEVICE_HELP
from gptforge.errors import GptforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a classifier model dir or its run dir")
    parser.add_argument("--text", required=True, action="append", help="text to classify (repeatable)")
    parser.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    parser.add_argument("--json", action="store_true", help="one JSON object per text on stdout")


def run(args: argparse.Namespace) -> int:
    from gptforge.finetune.classify import GPTClassifier, encode_texts, predict
    from gptforge.model.loading import load_model
    from gptforge.train.device import resolve_device

    model = load_model(args.model, device=resolve_device(args.device, flag="--device"))
    if not isinstance(model, GPTClassifier):
        raise GptforgeError(
            f"{args.model} is not a classifier (its config.json has no 'classifier' key); "
            "train one with `gptforge finetune classify`"
        )
    tok = model.tokenizer
    if tok is None:
        raise GptforgeError(f"{args.model} has no tokenizer.json")
    ids, _ = encode_texts(tok, args.text, getattr(model, "max_length", model.config.block_size))
    probs = predict(model, ids, tok.eot_id if tok.eot_id is not None else 0)
    for text, p in zip(args.text, probs.tolist()):
        k = max(range(len(p)), key=p.__getitem__)
        if args.json:
            print(json.dumps({"text": text, "label": model.labels[k], "probability": p[k],
                              "probabilities": dict(zip(model.labels, p))}))  # fmt: skip
        else:
            print(f"{model.labels[k]}\t{p[k]:.4f}")
    return 0
