"""Serve a model over an OpenAI-compatible HTTP API, with a chat page at /.

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with
"stream": true), GET /v1/models, GET /health, GET /metrics, and vLLM's
/tokenizer_info, /tokenize, /detokenize (for lm-evaluation-harness). Requests are
batched continuously: every running request shares one decode step. Binds to
127.0.0.1 by default. Needs the [serve] extra (fastapi, uvicorn).
"""

from __future__ import annotations

import argparse
import os

from gptforge.cli.options import DEVICE_HELP
from gptforge.errors import GptforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir, run dir or GPT-2 folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model-name", default=None, help="the model id clients use (default: the folder name)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 requests (or set GPTFORGE_API_KEY)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="sequences decoded together in one batched step (1 = one at a time)")
    parser.add_argument("--max-concurrent", type=int, default=None, help=argparse.SUPPRESS)  # old name
    parser.add_argument("--max-queue", type=int, default=64, help="sequences waiting for a row before 429")
    parser.add_argument("--max-tokens-limit", type=int, default=400, help="largest max_tokens a request may ask")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt (default: the context)")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size limit")
    parser.add_argument("--prefill-chunk", type=int, default=128,
                        help="prompt tokens prefilled between two decode steps (long prompts do not stall streams)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="also serve this browser origin / host (e.g. http://myhost:8000); '*' = any. "
                             "By default only this server's own pages on localhost or the bound address")
    parser.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from gptforge.serve.app import ServeSettings, create_app
    except ImportError as e:
        raise GptforgeError(f"serving needs the [serve] extra ({e.name} is missing): pip install 'gptforge[serve]'") from None
    from pathlib import Path

    from gptforge.model.loading import load_model
    from gptforge.serve.backend import Backend

    if args.max_concurrent is not None:
        args.max_batch = args.max_concurrent
    for name in ("max_batch", "max_tokens_limit", "max_body_bytes", "prefill_chunk"):
        if getattr(args, name) < 1:
            raise GptforgeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise GptforgeError(f"--max-queue must be at least 0, got {args.max_queue}")
    if not 0 < args.port < 65536:
        raise GptforgeError(f"--port must be in 1..65535, got {args.port}")
    from gptforge.generate.cpu_decoding import prepare_for_decoding
    from gptforge.train.device import resolve_device

    # The same weight layout as `gptforge generate`, so equal seeds give equal text (and
    # batch-1 CPU decoding reads weights faster).
    model = prepare_for_decoding(load_model(args.model, device=resolve_device(args.device, flag="--device")))
    if model.tokenizer is None:
        raise GptforgeError(f"{args.model} has no tokenizer.json; the server needs one to read prompts")
    name = args.model_name or Path(args.model).resolve().name
    if args.max_prompt_tokens is not None and not 1 <= args.max_prompt_tokens <= model.config.block_size:
        raise GptforgeError(f"--max-prompt-tokens must be in 1..{model.config.block_size} (the model's context), "
                            f"got {args.max_prompt_tokens}")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        max_prompt_tokens=args.max_prompt_tokens,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("GPTFORGE_API_KEY") or None,
        host=args.host,
        allow_origins=list(args.allow_origin),
        prefill_chunk=args.prefill_chunk,
    )
    app = create_app(Backend(model, name), settings)
    print(f"serving {name} on http://{args.host}:{args.port}  (chat page at /, API at /v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
