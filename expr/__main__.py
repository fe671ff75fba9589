"""``python -m expr COMMAND ...``, and ``accelerate launch -m expr COMMAND ...`` for several processes."""

import sys

from expr.cli import main

if __name__ == "__main__":
    code = main()
    if "torch" not in sys.modules:  # nothing distributed ran (e.g. --help): no process group to leave
        sys.exit(code)
    from expr.training.distributed import exit_process

    exit_process(code)
