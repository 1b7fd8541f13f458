"""``python -m gptforge``: the same as the ``gptforge`` command."""

from gptforge.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
