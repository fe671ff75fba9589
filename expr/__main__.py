"""``python -m expr COMMAND ...``, and ``accelerate launch -m expr COMMAND ...`` for several processes."""

from expr.cli import main
from expr.distributed import exit_process

if __name__ == "__main__":
    exit_process(main())
