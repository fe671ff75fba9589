"""The body the training commands share (``expr train``, ``expr finetune``): parse, fit or resume, and turn the
errors a user can fix into one line. Not a command itself."""

from __future__ import annotations

import logging
import sys

from expr.config import ConfigError, config_from_argv
from expr.data.store import StoreError
from expr.features.backbones import BackboneError
from expr.features.encoders import EncoderError
from expr.features.spec import SpecError
from expr.features.tuning import TuningError
from expr.locks import LockedError
from expr.training.checkpoint import CheckpointError
from expr.training.distributed import leave_process_group, peer_failure
from expr.training.trainer import NonFiniteError, Trainer
from expr.training.unit import TrainUnit


def launch(argv: list[str], unit: type[TrainUnit], default_preset: str | None = None):
    """A training command's body: parse ``argv``, train ``unit`` (or resume), and turn the errors a user can fix
    into one line. Returns (exit code, the result dict on the main process, else None)."""
    # Our own messages at INFO; libraries (open_clip logs through the root logger) only from WARNING up.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("expr").setLevel(logging.INFO)
    try:
        cfg, resume = config_from_argv(argv, default_preset)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    from accelerate import PartialState

    run = None
    try:
        run = Trainer(cfg, resume_dir=resume, unit=unit)
        result = run.fit()
        is_main = PartialState().is_main_process
    except (
        ConfigError,
        StoreError,
        BackboneError,
        EncoderError,
        SpecError,
        TuningError,
        CheckpointError,
        LockedError,
        NonFiniteError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    except RuntimeError as e:
        lost = peer_failure(e)
        if lost is None:
            raise
        where = getattr(run, "run_dir", None) or cfg.train.output_dir or "RUN_DIR"
        print(f"error: another process of this run stopped ({lost}). Finished epochs and the last kept state are in "
              f"{where}: relaunch every machine with --resume {where}", file=sys.stderr)  # fmt: skip
        return 1, None
    finally:
        if run is not None:
            run.close()
        leave_process_group()  # entry point only: run() may be called again
    return 0, result if is_main else None
