"""``expr train [--config FILE] [--section.key VALUE ...]``; on several processes ``accelerate launch -m expr train
...`` (or, as a script, ``accelerate launch expr/train.py ...``).

``run(cfg)`` trains the fusion head from a feature store (the built-in demo data when ``data.cache`` is unset)
and returns a result dict; ``main(argv)`` parses the command line. Sweeps call ``run`` directly.

A run directory holds: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per epoch),
``best/`` (the best head by validation macro-F1: ``model.safetensors`` + ``head.json``), ``states/`` (accelerate
resume states, the newest named in ``states/latest.json``) and tracker logs (TensorBoard by default).
``--resume RUN_DIR`` continues a killed run from its newest state and ends with the same metrics as an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import sys

from expr.cli._training import launch
from expr.config import options_help
from expr.training.head import HeadUnit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: expr train [--config FILE] [--preset paper|demo] [--resume RUN_DIR] [--section.key VALUE ...]\n")
        print(__doc__)
        print("Options (defaults of the paper preset; without data.cache the demo preset applies):\n")
        print(options_help())
        return 0
    code, result = launch(argv, HeadUnit)
    if result is not None:
        print(
            f"best {result['best_metric']} {result['best_score']:.4f} at epoch {result['best_epoch']}; run: "
            f"{result['run_dir']}"
        )
    return code
