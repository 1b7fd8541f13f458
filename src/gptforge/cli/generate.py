"""Generate text from a model: greedy or sampled, streamed to stdout as it is produced.

Examples:
  gptforge generate --model runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200
  gptforge generate --model gpt2-dir --prompt "The meaning of life" --temperature 0.8 --top-p 0.95 --seed 1
  gptforge generate --model gpt2-dir --prompt "" --temperature 0       # empty: start from end-of-text

Only the continuation is printed (add --echo to print the prompt too). With
--num-samples N the samples are generated as one batch and printed one after
another, separated by a line "----- sample i -----".
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from gptforge.cli.options import DEVICE_HELP, DTYPE_HELP, dtype_name
from gptforge.config import finite_float

logger = logging.getLogger(__name__)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags shared by ``generate`` and ``chat``."""
    parser.add_argument("--model", required=True, help="model dir, run dir or Hugging Face GPT-2 folder")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate at most")
    parser.add_argument("--temperature", type=finite_float, default=None, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=finite_float, default=None, help="nucleus sampling threshold in (0, 1]")
    parser.add_argument("--min-p", type=finite_float, default=None, help="drop tokens below min_p x the top probability")
    parser.add_argument("--repetition-penalty", type=finite_float, default=1.0, help="CTRL repetition penalty; 1 = off")
    parser.add_argument("--frequency-penalty", type=finite_float, default=0.0, help="OpenAI frequency penalty; 0 = off")
    parser.add_argument("--presence-penalty", type=finite_float, default=0.0, help="OpenAI presence penalty; 0 = off")
    parser.add_argument("--stop", nargs="+", default=None, metavar="S", help="stop strings (not printed)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    parser.add_argument("--dtype", type=dtype_name, default=None,
                        help=f"weight dtype: {DTYPE_HELP} (default: as saved)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_generation_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the text to continue ('' = start from end-of-text)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples of the prompt")
    parser.add_argument("--no-stream", action="store_true", help="print the text once it is complete")
    parser.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    parser.add_argument("--chat-template", action="store_true",
                        help="send the prompt as one user message through the model's chat template "
                             "(fine-tuned models) and stop at the template's stop strings")


def build_config(args: argparse.Namespace, **defaults: object) -> object:
    """A validated GenerationConfig from the flags (unset flags take ``defaults``)."""
    from gptforge.generate.config import GenerationConfig

    values = dict(
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed,
        stop_strings=args.stop,
    )  # fmt: skip
    values.update(defaults)
    if args.max_new_tokens is not None:
        values["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        values["temperature"] = args.temperature
    return GenerationConfig(**values)


def load_for_generation(args: argparse.Namespace) -> object:
    """Load the model named by --model on --device/--dtype; it must carry a tokenizer."""

    from gptforge.errors import ModelError
    from gptforge.model.loading import load_model
    from gptforge.train.device import DTYPES, resolve_device

    dtype = DTYPES[args.dtype] if args.dtype is not None else None
    model = load_model(args.model, device=resolve_device(args.device, flag="--device"), dtype=dtype)
    if getattr(model, "tokenizer", None) is None:
        raise ModelError(f"the model at {args.model} has no tokenizer.json; save the model with its tokenizer")
    from gptforge.generate.cpu_decoding import prepare_for_decoding

    return prepare_for_decoding(model)  # faster batch-1 decoding on CPU (see its docstring)


def run(args: argparse.Namespace) -> int:
    config = build_config(args, num_samples=args.num_samples)  # validate flags before loading anything
    from gptforge.generate.text import generate_texts, stream_chunks

    model = load_for_generation(args)
    tok = model.tokenizer
    prompt = args.prompt
    if args.chat_template:
        from gptforge.errors import ModelError
        from gptforge.generate.chat import load_template

        template = load_template(model)
        if template is None:
            raise ModelError(f"the model at {args.model} has no chat template; drop --chat-template")
        prompt = template.render([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        stops = list(dict.fromkeys(list(config.stop_strings or []) + list(template.stop_strings)))
        config = config.replace(stop_strings=stops)
    out = sys.stdout
    if args.echo:
        out.write(prompt)
    t0 = time.perf_counter()
    if config.num_samples == 1 and not args.no_stream:
        n = 0
        for chunk in stream_chunks(model, tok, prompt, config):
            out.write(chunk.text)
            out.flush()
            n = chunk.completion_tokens
        out.write("\n")
    else:
        texts = generate_texts(model, tok, [prompt], config)
        n = None
        for i, text in enumerate(texts):
            if len(texts) > 1:
                out.write(f"----- sample {i} -----\n")
            out.write(text + "\n")
    out.flush()
    dt = time.perf_counter() - t0
    if n:
        logger.info("%d tokens in %.2fs (%.1f tokens/s)", n, dt, n / dt)
    return 0
