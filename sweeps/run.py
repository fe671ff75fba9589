"""``python sweeps/run.py --study window [-- --train.epochs 2]``: ``expr sweep`` from a checkout, without installing.

Results default to this checkout's ``sweeps/results/<study>/``. Everything else is ``expr sweep``
(:mod:`expr.cli.sweep`; ``python sweeps/run.py --help`` lists the options).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from expr.cli.sweep import main
from expr.training.distributed import exit_process

if __name__ == "__main__":
    exit_process(main(results_root=ROOT / "sweeps" / "results", prog="python sweeps/run.py"))
