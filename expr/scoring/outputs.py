"""A trained head over a store's windows: window probabilities, then frame probabilities by the one path of
:mod:`expr.scoring.decision`. Training's validation, ``expr evaluate``, ``expr submit`` and ``expr predict`` call
this."""

from __future__ import annotations

import numpy as np
import torch

from expr.config import TASK_SCORES, Config, default_num_workers, scores_p_mtl
from expr.data.online import OnlineWindowDataset, collate_online
from expr.data.windows import WindowDataset, load_or_build_windows
from expr.models.online import store_encoders
from expr.scoring.decision import frame_probabilities, frame_report, smooth_rows
from expr.scoring.metrics import au_report, va_report
from expr.tasks import AU_NAMES, MTL_TASKS, OTHER_TASKS, P_MTL


def predict_frames(model: torch.nn.Module, store, split: str, window: int, stride: int, **kw):
    """Frame probabilities of every video of ``split`` (or of ``videos`` among them): (frame rows, [rows, C]);
    :func:`predict_outputs` of the expression task alone."""
    rows, outputs = predict_outputs(model, store, split, window, stride, **kw)
    return rows, outputs["expr"]


@torch.no_grad()
def predict_outputs(
    model: torch.nn.Module,
    store,
    split: str,
    window: int,
    stride: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    label_rule: str = "center",
    videos: np.ndarray | None = None,
    mode: str = "cached",
    num_workers: int | None = None,
    encoders=None,
    flip: bool = False,
    tasks=("expr",),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frame outputs of every video of ``split`` (or of ``videos`` among them): (frame rows, {task: [rows, K]}),
    the class probabilities under ``expr`` and, for ``tasks`` a head trained on, valence-arousal under ``va`` and AU
    probabilities under ``au`` (:meth:`FusionOutput.scores`), all placed on frames by step 1 of
    :mod:`expr.scoring.decision`'s path (``label_rule``: the run's ``data.label_frame``; frames without a face filled
    from the nearest face frame). ``mode="online"`` runs the store's frozen encoders on its face crops and audio, as an
    online-trained head saw (``encoders``: (encoders, image transform) of the run, see
    :func:`expr.runs.layout.run_encoders`; default: the store's frozen ones); ``flip`` (online mode, ``eval.flip``)
    averages every window's outputs with those of its mirrored crops."""
    names = ("expr", *(t for t in OTHER_TASKS if t in tasks))
    # every video of the split (the EXPR split, which holds test videos) or of the split of a task the store has
    window_tasks = ("expr", *(t for t in tasks if t != "expr" and t in store.task_splits))
    # Every video of the split of any task is predicted (train.task_overlap decides what trains, not what is seen).
    windows = load_or_build_windows(store, split, window, stride, label_rule, keep_unlabelled=True, tasks=window_tasks,
                                    overlap="allow")  # fmt: skip
    videos = store.videos_in(split) if videos is None else np.asarray(videos)
    model = model.to(device)
    if mode == "online":
        encoders, image_transform = encoders or store_encoders(store, device)
        data = OnlineWindowDataset(store, windows, image_transform, augment=False)
        mine = np.flatnonzero(np.isin(data.video, videos))
        batches = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, mine.tolist()),
            batch_size=batch_size // 4,  # each window is T decoded crops, not T feature rows
            collate_fn=collate_online,
            num_workers=default_num_workers("online") if num_workers is None else num_workers,
        )
        features = encoders.encode_batch

    else:
        data = WindowDataset(store, windows)
        mine = np.flatnonzero(np.isin(data.video, videos))
        batches = (data.__getitems__(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size))

        def features(batch):
            return batch

    def window_probs(batch):
        scores = head_scores(model, features(batch), names, device)
        widths[:] = [scores[t].shape[1] for t in names]
        return torch.cat([scores[t] for t in names], -1)

    chunks, widths = [], [0] * len(names)  # each task's columns, as the head gives them
    for batch in batches:
        p = window_probs(batch)
        if flip and mode == "online":
            p = (p + window_probs(mirrored(batch))) / 2
        chunks.append(p.cpu().numpy())
    probs = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    rows, frames = store_frame_probabilities(store, videos, data, mine, probs, label_rule)
    edges = np.cumsum([0, *widths])
    return rows, {t: frames[:, a:b] for t, a, b in zip(names, edges[:-1], edges[1:], strict=True)}


def head_scores(model, batch: dict[str, torch.Tensor], names, device) -> dict[str, torch.Tensor]:
    """The head's outputs of a batch of windows (``visual``, ``visual_mask``, ``audio``, ``audio_mask``) for tasks
    ``names``: class probabilities (``expr``), valence-arousal (``va``), AU probabilities (``au``)."""
    out = model(
        batch["visual"].to(device).float(),
        batch["visual_mask"].to(device),
        batch["audio"].to(device).float(),
        batch["audio_mask"].to(device),
    )
    return out.scores(names)


def mirrored(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An online batch with its face crops (``pixels`` [B, T, 3, S, S]) mirrored left to right: a test-time view."""
    return {**batch, "pixels": batch["pixels"].flip(-1)}


def store_frame_probabilities(store, videos, data, picked, probs, label_rule: str):
    """Step 1 of :mod:`expr.scoring.decision`'s path over a store: the probabilities of windows ``picked`` of ``data``
    (a window dataset) placed on the frames of ``videos`` -> (frame rows, [rows, C])."""
    return frame_probabilities(
        store.num_frames,
        store.frame_offset,
        store.face,
        videos,
        data.video[picked],
        data.start[picked],
        data.window,
        probs,
        label_rule,
    )


def validation_metrics(store, val_set, index: np.ndarray, probs: np.ndarray, cfg: Config, outputs=None):
    """Validation as the challenge scores it, from the probabilities of windows ``index`` of ``val_set`` (and the
    VA / AU ``outputs`` of those windows when the run trains those tasks): (``val/*`` metrics, (frame rows, frame
    probabilities) of EXPR, {task: (frame rows, frame values, targets)} of VA / AU; ``val/smoothed_ccc`` with
    ``eval.va_smoothing``). ``val/macro_f1`` is frame-level over all classes on the EXPR validation videos; the
    window-level metric stands beside it, and the smoothed one when ``eval.smoothing`` is set. VA and AU outputs take
    the same path to frames (placed at each window's label frame, interpolated, faceless frames filled) and are
    scored on their own task's validation videos: ``val/ccc`` (mean of ``val/ccc_valence`` and
    ``val/ccc_arousal``), ``val/au_f1`` (mean over the 12 units at 0.5) and ``val/per_au_f1``. ``val/score``: the sum
    of the trained tasks' scores; ``val/p_mtl`` (the three tasks on the multi-task split): the challenge's P_MTL,
    CCC + macro-F1 + AU F1."""
    tasks, metrics, task_frames = cfg.train.tasks, {}, {}
    rows, frame_probs = np.zeros(0, np.int64), np.zeros((0, len(cfg.data.classes)))
    if "expr" in tasks:
        metrics, (rows, frame_probs) = expression_metrics(store, val_set, index, probs, cfg)
    for task, values in (outputs or {}).items():
        videos = store.videos_in("validation", task)
        task_rows, frames = store_frame_probabilities(store, videos, val_set, index, values, cfg.data.label_frame)
        targets = store.task_labels[task][task_rows]
        task_frames[task] = (task_rows, frames, targets)
        if task == "va":
            report = va_report(frames, targets)
            metrics.update({f"val/{k}": report[k] for k in ("ccc", "ccc_valence", "ccc_arousal")})
            metrics["val/va_frames"] = report["count"]
            method, width = cfg.eval.va_smoothing, cfg.eval.va_smoothing_width
            if method != "none" and width > 1:
                smoothed = smooth_rows(task_rows, frames, store.num_frames, store.frame_offset, method, width)
                metrics["val/smoothed_ccc"] = va_report(smoothed, targets)["ccc"]
        else:
            report = au_report(frames, targets, AU_NAMES)
            metrics.update({"val/au_f1": report["au_f1"], "val/per_au_f1": report["per_au_f1"]})
            metrics["val/au_frames"] = report["count"]
    metrics["val/score"] = float(sum(metrics[TASK_SCORES[t]] for t in tasks))
    if scores_p_mtl(cfg):  # the challenge's score, exactly the sum of its three terms on the same frames
        metrics[P_MTL] = float(sum(metrics[TASK_SCORES[t]] for t in MTL_TASKS))
    return metrics, (rows, frame_probs), task_frames


def expression_metrics(store, val_set, index: np.ndarray, probs: np.ndarray, cfg: Config):
    """The EXPR part of :func:`validation_metrics`."""
    windows = frame_report(val_set.label[index], probs, cfg.data.classes)
    rows, frame_probs = store_frame_probabilities(
        store, store.videos_in("validation"), val_set, index, probs, cfg.data.label_frame
    )
    labels = store.labels[rows]
    frames = frame_report(labels, frame_probs, cfg.data.classes)
    metrics = {
        "val/macro_f1": frames["macro_f1"],
        "val/accuracy": frames["accuracy"],
        "val/per_class_f1": frames["per_class_f1"],
        "val/confusion_matrix": frames["confusion_matrix"],
        "val/frames": frames["count"],
        "val/window_macro_f1": windows["macro_f1"],
        "val/window_accuracy": windows["accuracy"],
        "val/windows": windows["count"],
    }
    if frames["absent_classes"]:
        metrics["val/absent_classes"] = frames["absent_classes"]
        metrics["val/macro_f1_present"] = frames["macro_f1_present"]
    if cfg.eval.smoothing != "none" and cfg.eval.smoothing_width > 1:
        width = cfg.eval.smoothing_width
        smoothed = smooth_rows(rows, frame_probs, store.num_frames, store.frame_offset, cfg.eval.smoothing, width)
        metrics["val/smoothed_macro_f1"] = frame_report(labels, smoothed, cfg.data.classes)["macro_f1"]
    return metrics, (rows, frame_probs)
