"""``accelerate launch expr/train.py ...`` (the paper's form): the same as ``expr train ...``; the command itself is
:mod:`expr.cli.train`, the library :mod:`expr.training.trainer`."""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # as a script: expr/ itself must not shadow top-level packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

if __name__ == "__main__":
    from expr.cli.train import main
    from expr.training.distributed import exit_process

    exit_process(main())
