"""Chat with a model in the terminal.

Uses the model's chat template when it has one (fine-tuned with
`gptforge finetune instruct`), else a plain continuation of the conversation.
Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves. Ctrl-C
stops the reply being written and returns to the prompt.

Example:
  gptforge chat --model runs/instruct --temperature 0.7 --top-p 0.9
"""

from __future__ import annotations

import argparse
import sys

from gptforge.cli.generate import add_generation_arguments, build_config, load_for_generation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_generation_arguments(parser)
    parser.add_argument("--system", default=None, help="a system message kept at the start of the chat")


def run(args: argparse.Namespace) -> int:
    config = build_config(args, max_new_tokens=256, temperature=0.7)  # validate flags first
    from gptforge.generate.chat import ChatSession, load_template

    model = load_for_generation(args)
    template = load_template(model)
    session = ChatSession(model, model.tokenizer, config, template=template, system=args.system)
    mode = f"template '{template.name}'" if template is not None else "plain continuation (no chat template)"
    interactive = sys.stdin.isatty()
    sys.stderr.write(f"chatting with {args.model} ({mode}); /reset to start over, /quit to leave\n")
    while True:
        try:
            if interactive:
                line = input("you> ")
            else:
                sys.stdout.write("you> ")
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
                line = line.rstrip("\n")
        except EOFError:
            sys.stdout.write("\n")
            return 0
        except KeyboardInterrupt:
            sys.stdout.write("\n(use /quit or Ctrl-D to leave)\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            session.reset()
            sys.stdout.write("(conversation forgotten)\n")
            continue
        sys.stdout.write("bot> ")
        sys.stdout.flush()
        reply = session.reply(text)
        try:
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        finally:
            reply.close()  # keeps what was shown as the reply
        sys.stdout.write("\n")
        sys.stdout.flush()
