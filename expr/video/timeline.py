"""What ``expr predict`` writes per person: the CSV of frame labels and outputs, the timeline of class
probabilities, and the VA / AU plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from expr.atomic import atomic_path
from expr.plots import pyplot, save_figure
from expr.tasks import AU_NAMES, VA
from expr.video.footage import Footage, Person


def write_csv(path: Path, person: Person, footage: Footage, probs: np.ndarray, classes: list[str],
              tasks: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
    """One row per frame of the person's span: the video's frame index and time, the track, whether a face was
    found and its box (empty without), the label and the class probabilities (``probs`` None: a run without the
    expression task, no such columns); then, for a run trained on them, ``valence``, ``arousal`` and each action
    unit's probability (``p_AU1`` ...)."""
    tasks, T = tasks or {}, len(person.faces)
    extra = (list(VA.names) if "va" in tasks else []) + ([f"p_{n}" for n in AU_NAMES] if "au" in tasks else [])
    columns = np.concatenate([tasks[t] for t in ("va", "au") if t in tasks], 1) if tasks else np.zeros((T, 0))
    expr_columns = ["label", "label_name", *(f"p_{c}" for c in classes)] if probs is not None else []
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(",".join(["frame,time_s,track,face,box_x,box_y,box_w,box_h", *expr_columns, *extra]) + "\n")
        for i in range(T):
            face, t = person.faces[i], person.first + i
            box = ",".join(f"{v:.1f}" for v in face.box) if face is not None else ",,,"
            label = ""
            if probs is not None:
                lab = int(probs[i].argmax())
                label = f",{lab},{classes[lab]}"
            values = [*(probs[i] if probs is not None else []), *columns[i]]
            f.write(f"{t},{footage.times[t]:.3f},{person.track},{int(face is not None)},{box}{label}"
                    + "".join(f",{x:.4f}" for x in values) + "\n")  # fmt: skip


def plot_tasks(tasks: dict[str, np.ndarray], fps: float, path: Path, title: str, start: float = 0.0) -> None:
    """Valence and arousal over time (lines) above the action units' probabilities (a heat map, a row per unit)."""
    plt = pyplot()
    panels = [t for t in ("va", "au") if t in tasks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels) + 0.6), dpi=110, sharex=True,
                             squeeze=False)  # fmt: skip
    T = len(next(iter(tasks.values())))
    t = start + np.arange(T) / fps
    for ax, task in zip(axes[:, 0], panels, strict=True):
        if task == "va":
            ax.plot(t, tasks["va"][:, 0], label="valence", color="#C44E52")
            ax.plot(t, tasks["va"][:, 1], label="arousal", color="#4C72B0")
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_ylim(-1, 1)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        else:
            image = ax.imshow(tasks["au"].T, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                              extent=(start, start + T / fps, len(AU_NAMES) - 0.5, -0.5))  # fmt: skip
            ax.set_yticks(range(len(AU_NAMES)), AU_NAMES, fontsize=7)
            fig.colorbar(image, cax=ax.inset_axes([1.01, 0.0, 0.015, 1.0]), label="probability")  # panels aligned
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("time (s)")
    save_figure(fig, path)


def plot_timeline(probs, face, fps, classes, path: Path, title: str, has_audio: bool, start: float = 0.0) -> None:
    """Stacked class probabilities over time (from ``start`` seconds) above a strip of the labels, frames without a
    face greyed."""
    import matplotlib

    plt = pyplot()

    t = start + np.arange(len(probs)) / fps
    colors = plt.get_cmap("tab10").colors
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(11, 4.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [5, 1]}
    )
    ax.stackplot(t, probs.T, labels=classes, colors=colors[: len(classes)], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlim(start, start + len(t) / fps)
    ax.set_ylabel("class probability")
    ax.set_title(title + ("" if has_audio else "  (no audio: faces only)"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    labels = probs.argmax(1)
    strip.imshow(
        labels[None, :],
        aspect="auto",
        cmap=matplotlib.colors.ListedColormap(colors[: len(classes)]),
        vmin=-0.5,
        vmax=len(classes) - 0.5,
        extent=(start, start + len(t) / fps, 0, 1),
    )
    no_face = ~np.asarray(face, bool)
    if no_face.any():
        strip.fill_between(t, 0, 1, where=no_face, color="white", alpha=0.6, step="mid", label="no face")
        strip.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    strip.set_yticks([])
    strip.set_ylabel("label", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    save_figure(fig, path)
