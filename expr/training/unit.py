"""What one kind of run trains, as a unit the one :class:`~expr.training.trainer.Trainer` runs (fairseq2's train
units): the unit builds its data and model, computes a batch's losses, validates, and writes its best model; the
trainer owns the loop, the processes, checkpoints, resume and logging.

A unit reads the run's state through its trainer (``cfg``, ``accelerator``, ``model`` once prepared, ``progress``,
``run_dir`` ...), and hands the trainer its data (``data``) and model (:meth:`prepare`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from expr.training.trainer import Trainer


def _shared(name: str, doc: str) -> property:
    """An attribute that lives on the trainer, read and set through the unit."""
    return property(lambda self: getattr(self.trainer, name), lambda self, v: setattr(self.trainer, name, v), doc=doc)


class TrainUnit:
    """The base of a unit: the trainer's state, shared. Subclasses define :meth:`setup`, :meth:`loss`,
    :meth:`evaluate`, :meth:`save_best`, :meth:`epoch_line` and :meth:`target_coverage`."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    cfg = _shared("cfg", "the run's config")
    accelerator = _shared("accelerator", "the run's Accelerator")
    data = _shared("data", "the run's data (:class:`~expr.training.loaders.RunData`), set by :meth:`setup`")
    store = _shared("store", "the feature store the run reads")
    encoders = _shared("encoders", "online mode's frozen encoders (None otherwise)")
    model = _shared("model", "the prepared model")
    val_loader = _shared("val_loader", "the prepared validation loader")
    run_dir = _shared("run_dir", "the run directory")
    progress = _shared("progress", "epoch, step, best and history")
    lr = _shared("lr", "the (scaled) learning rate")
    steps_per_epoch = _shared("steps_per_epoch", "optimizer steps per epoch")
    resuming = _shared("resuming", "whether the run continues a saved state")

    def save_config(self) -> None:
        self.trainer.save_config()

    def prepare(self, model: torch.nn.Module, groups=None) -> None:
        """Hand ``model`` to the trainer: optimizer (``groups(lr)``), schedule, all prepared with the loaders."""
        self.trainer.prepare(model, groups)

    def setup(self) -> None:
        """Build the data (``self.data``), the objective and the model, and :meth:`prepare` it."""
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of a batch (``loss`` is optimised, all are logged)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """The ``val/*`` metrics of the epoch, over every process."""
        raise NotImplementedError

    def save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Write the best model so far into ``run_dir/best`` (every process calls it; the main one writes)."""
        raise NotImplementedError

    def epoch_line(self, metrics: dict[str, Any], improved: bool) -> str:
        """The log line of an epoch."""
        raise NotImplementedError

    def target_coverage(self) -> dict[str, float]:
        """Per task: the share of labelled training examples that were a target at least once."""
        raise NotImplementedError
