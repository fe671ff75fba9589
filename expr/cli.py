"""The ``expr`` command: ``expr train [TRAIN OPTIONS]`` (same as ``python expr/train.py``)."""

from __future__ import annotations

import sys

USAGE = """usage: expr COMMAND [OPTIONS]

commands:
  train    train the fusion head (options: --config FILE, --preset NAME, --resume RUN_DIR, --section.key VALUE);
           for several processes use `accelerate launch expr/train.py ...` or ./launch.sh train

`expr train --help` describes the run directory and options."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from expr import __version__

        print(f"expr {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from expr.train import main as train_main

        return train_main(rest)
    print(f"expr: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
