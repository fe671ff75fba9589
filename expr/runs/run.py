"""A finished run, an export or an ensemble, opened once: ``Run.open(path)``.

A :class:`Run` gives what every command reading a finished model needs (evaluate, submit, predict, ensemble and
calibrate): its config (with the overrides a command may apply after training), its decision (calibration
offsets, then smoothing) and its raw outputs per task on the videos of a store. An ensemble folder is a Run whose
outputs are its members' weighted mean over the tasks every member trained, computed in one loop
(:meth:`Run.combine`); its decision is the ensemble's own, its members give raw outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expr.config import Config, resolve_device
from expr.data.source import open_store
from expr.runs.layout import (
    RunError,
    ensemble_decision,
    ensemble_members,
    load_head,
    member_overrides,
    run_decision,
    run_encoders,
)
from expr.scoring.decision import Decision
from expr.scoring.outputs import predict_outputs


class Run:
    """Open with :meth:`open`. ``cfg``: the run's config (an ensemble's: its first member's); ``info``: what the head
    records (``head.json`` or an export's ``config.json``); ``decision``: how its frame probabilities become labels;
    ``members``: an ensemble's (Run, weight) pairs, else None."""

    def __init__(self, path: Path, cfg: Config, info: dict[str, Any], decide, model=None, members=None):
        self.path, self.cfg, self.info, self._decide, self._decision = path, cfg, info, decide, None
        self.model = model
        self.members: list[tuple[Run, float]] | None = members
        self._encoders: tuple[tuple[str, str], Any] | None = None  # the last store's, kept while it is used

    @classmethod
    def open(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Run:
        """A run directory, an exported folder or an ensemble folder; ``overrides``: config keys a command may
        change after training (:data:`expr.runs.layout.RUN_OVERRIDES`), checked here, before any work."""
        path = Path(path)
        listed = ensemble_members(path)
        if listed is None:
            model, info = load_head(path, overrides=overrides)
            return cls(path, info["cfg"], info, lambda: run_decision(path, info["cfg"]), model=model)
        members = [(cls.open(run, member_overrides(overrides)), weight) for run, weight in listed]
        first = members[0][0]
        for member, _ in members[1:]:
            if list(member.cfg.data.classes) != list(first.cfg.data.classes):
                raise RunError(
                    f"{member.path}: classes {list(member.cfg.data.classes)} differ from the first member's "
                    f"({first.path}) {list(first.cfg.data.classes)}"
                )
        return cls(path, first.cfg, first.info, lambda: ensemble_decision(path, overrides), members=members)

    @property
    def decision(self) -> Decision:
        """How the run's (an ensemble's: its own) frame probabilities become labels: its calibration, then its
        smoothing; read when first asked for (the VA and AU tasks need none), so that its errors come before any
        work when a command asks first."""
        if self._decision is None:
            self._decision = self._decide()
        return self._decision

    @property
    def is_ensemble(self) -> bool:
        return self.members is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the run trained (an ensemble: those every member trained)."""
        if not self.members:
            return tuple(self.cfg.train.tasks)
        return tuple(t for t in self.members[0][0].tasks if all(t in m.tasks for m, _ in self.members))

    def combine(self, outputs_of: Callable[[Run, int | None], Any]) -> Any:
        """``outputs_of(self, None)`` for a run; for an ensemble, the weighted sum of ``outputs_of(member, i)`` over
        its members (arrays nested in dicts and lists; a dict keeps the keys every member gave)."""
        if not self.members:
            return outputs_of(self, None)
        total = None
        for i, (member, weight) in enumerate(self.members):
            total = _weighted_sum(total, outputs_of(member, i), weight)
        return total

    def open_store(self):
        """The store the run's config names (``data.cache``, or the demo data), its classes checked."""
        store = open_store(self.cfg)
        if list(store.classes) != list(self.cfg.data.classes):
            raise RunError(f"{store.path}: classes {store.classes} differ from the run's {list(self.cfg.data.classes)}")
        return store

    def encoders(self, store, device: str):
        """The encoders an online-trained head runs on (None for a cached-mode head), kept for the last store
        and device used."""
        key = (str(store.path), str(device))
        if self._encoders is None or self._encoders[0] != key:
            self._encoders = (key, run_encoders(self.path, self.cfg, store, device))
        return self._encoders[1]

    def window_outputs(self, store, split: str, videos: np.ndarray, device: str = "auto"):
        """(frame rows, {task: raw outputs [rows, K]}) of one run's head on ``videos`` (indices) of ``split`` of
        ``store``: :func:`expr.scoring.outputs.predict_outputs` with the run's window, stride, label frame, mode,
        encoders and test-time views. Raw: before the run's decision."""
        if self.members:
            raise RunError(f"{self.path} is an ensemble: its members' outputs come through Run.outputs")
        device = resolve_device(device)
        cfg = self.cfg
        return predict_outputs(self.model, store, split, cfg.data.window, cfg.data.resolved_eval_stride(),
                               device=device, label_rule=cfg.data.label_frame, videos=np.asarray(videos),
                               mode=cfg.data.mode, encoders=self.encoders(store, device), flip=cfg.eval.flip,
                               tasks=cfg.train.tasks)  # fmt: skip

    def outputs(self, videos: Sequence[str], store=None, device: str = "auto") -> dict[str, dict[str, np.ndarray]]:
        """Per video name: {task: raw outputs of every decoded frame [frames, K]} (before the decision), from
        ``store``: a store, a function giving a run's store, or None for the run's own (each ensemble member reads its
        own store, as it was trained on its features)."""
        return self.combine(lambda run, _: run._video_outputs(videos, store, device))

    def _video_outputs(self, videos: Sequence[str], store, device: str) -> dict[str, dict[str, np.ndarray]]:
        store = store(self) if callable(store) else store or self.open_store()
        index = np.array([store.names.index(v) for v in videos], np.int64)
        out: dict[str, dict[str, np.ndarray]] = {}
        for split in sorted(set(store.splits[index].tolist())):
            mine = index[store.splits[index] == split]
            rows, outputs = self.window_outputs(store, split, mine, device)
            for v in mine:
                a = int(store.frame_offset[v])
                inside = (rows >= a) & (rows < a + int(store.num_frames[v]))
                out[store.names[v]] = {t: o[inside] for t, o in outputs.items()}
        return out


def _weighted_sum(total: Any, part: Any, weight: float) -> Any:
    if isinstance(part, dict):
        keys = part if total is None else [k for k in total if k in part]
        return {k: _weighted_sum(None if total is None else total[k], part[k], weight) for k in keys}
    if isinstance(part, (list, tuple)):
        totals = [None] * len(part) if total is None else total
        return [_weighted_sum(t, p, weight) for t, p in zip(totals, part, strict=True)]
    return weight * part if total is None else total + weight * part
