"""A run as ONNX models (``expr export RUN --format onnx --out DIR``) and the head and encoders that ONNX Runtime runs
from such a folder (``expr predict VIDEO --run DIR --backend onnxruntime``).

The folder is the plain export (``config.json``, ``model.safetensors``, the calibration, ``README.md``) plus
``head.onnx`` (windows of features and their masks -> the head's raw outputs per task), one ``image_<set>.onnx`` per
visual feature set, ``audio_<set>.onnx`` for the audio set (:mod:`expr.features.onnx_encoders`), MTCNN's three networks
(``mtcnn_pnet.onnx``, ``mtcnn_rnet.onnx``, ``mtcnn_onet.onnx``), and ``onnx.json``:
each model's file, inputs and outputs, the encoders' specs and preprocessing, and the parity each one showed against
torch at export. Every model is checked at export (ONNX Runtime against torch on a random input, within
:data:`~expr.features.onnx_encoders.PARITY`); one that fails is refused by name, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expr.features.backbones import Backbones
from expr.features.onnx_encoders import (
    OPSET,
    OnnxAudioEncoder,
    OnnxExportError,
    OnnxImageEncoder,
    OnnxNet,
    export_audio_encoder,
    export_detector,
    export_image_encoder,
    export_module,
    onnx_manifest,
    session,
)
from expr.features.spec import parse_spec
from expr.models.fusion import CrossAttention, FusionOutput
from expr.runs.export import ExportError, export_run
from expr.runs.run import Run

ONNX_FORMAT = 1
HEAD_INPUTS = ["visual", "visual_mask", "audio", "audio_mask"]


class _Head(torch.nn.Module):
    def __init__(self, head, outputs: list[str]):
        super().__init__()
        self.head, self.outputs = head, outputs

    def forward(self, visual, visual_mask, audio, audio_mask):
        out = self.head(visual, visual_mask, audio, audio_mask)
        return tuple({"logits": out.logits, "va": out.va, "au": out.au}[n] for n in self.outputs)


def export_head(run: Run, path: Path) -> dict[str, Any]:
    cfg, head = run.cfg, run.model.float().eval()
    outputs = ["logits", *(t for t in ("va", "au") if t in cfg.train.tasks)]
    T, g = cfg.data.window, torch.Generator().manual_seed(0)
    Ta = max(2, round(T * 50 / 30))  # audio frames of a window at 30 frames/s (any count works)
    visual, audio = (
        torch.randn(2, T, cfg.model.visual_dim, generator=g),
        torch.randn(2, Ta, cfg.model.audio_dim, generator=g),
    )
    visual_mask, audio_mask = torch.ones(2, T, dtype=torch.bool), torch.ones(2, Ta, dtype=torch.bool)
    visual_mask[1, : T // 3], audio_mask[1, Ta // 2 :] = False, False
    dynamic = {"visual": {0: "batch", 1: "frames"}, "visual_mask": {0: "batch", 1: "frames"},
               "audio": {0: "batch", 1: "audio_frames"}, "audio_mask": {0: "batch", 1: "audio_frames"},
               **{n: {0: "batch"} for n in outputs}}  # fmt: skip
    CrossAttention.spelled_out = True  # nn.MultiheadAttention's trace would fix the audio length
    try:
        diff = export_module(_Head(head, outputs), (visual, visual_mask, audio, audio_mask), path, HEAD_INPUTS,
                             outputs, dynamic, f"the head of {run.path}")  # fmt: skip
    finally:
        CrossAttention.spelled_out = False
    widths = {"logits": cfg.num_classes, "va": 2, "au": 12}
    return {"file": path.name, "parity": diff, "window": T, "tasks": list(cfg.train.tasks),
            "inputs": {"visual": ["batch", "frames", cfg.model.visual_dim], "visual_mask": ["batch", "frames"],
                       "audio": ["batch", "audio_frames", cfg.model.audio_dim],
                       "audio_mask": ["batch", "audio_frames"]},
            "outputs": {n: ["batch", widths[n]] for n in outputs}}  # fmt: skip


def check_exportable(run: Run) -> None:
    """An ensemble folder or an online-mode head is refused by name."""
    if run.is_ensemble:
        raise ExportError(f"{run.path}: an ensemble folder; export each member")
    if run.cfg.data.mode != "cached":
        raise ExportError(f"{run.path}: an online-mode head (its encoders train with it) has no ONNX export yet")


def export_onnx(run: Run, out: str | Path, backbones: Backbones) -> Path:
    """The export of ``run`` (opened from its directory) with its head and ``backbones`` (its feature sets' encoders,
    on the CPU) as ONNX models, in the module's layout."""
    check_exportable(run)

    def write(folder: Path) -> None:
        head = export_head(run, folder / "head.onnx")
        manifest: dict[str, Any] = {"format": ONNX_FORMAT, "opset": OPSET, "head": head, "visual": {}, "audio": {}}
        for name in backbones.visual_sets:
            manifest["visual"][name] = export_image_encoder(backbones.visual(name), folder / f"image_{name}.onnx")
        for name in backbones.audio_sets:
            manifest["audio"][name] = export_audio_encoder(backbones.audio(name), folder / f"audio_{name}.onnx")
        detector = export_detector(folder)
        if detector is not None:
            manifest["detector"] = detector
        (folder / "onnx.json").write_text(json.dumps(manifest, indent=2))

    try:
        return export_run(run.path, out, write)
    except OnnxExportError as e:
        raise ExportError(str(e)) from None


class OnnxHead:
    """The exported head under ONNX Runtime, called like the torch head by :func:`expr.scoring.outputs.predict_outputs`
    (torch tensors in and out as glue; no torch module runs)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], device: str = "cpu"):
        self.session = session(folder / manifest["head"]["file"], device)
        self.outputs = list(manifest["head"]["outputs"])

    def to(self, device):
        return self

    def __call__(self, visual, visual_mask, audio, audio_mask) -> FusionOutput:
        feeds = {"visual": visual.float().cpu().numpy(), "visual_mask": visual_mask.bool().cpu().numpy(),
                 "audio": audio.float().cpu().numpy(), "audio_mask": audio_mask.bool().cpu().numpy()}  # fmt: skip
        got = {
            n: torch.from_numpy(np.asarray(x)) for n, x in zip(self.outputs, self.session.run(None, feeds), strict=True)
        }
        return FusionOutput(got["logits"], None, None, got.get("va"), got.get("au"))


def onnx_run(run: Run, detector=None, device: str = "cpu") -> tuple[Run, Backbones]:
    """``run`` (opened from an ONNX export) with its head, and the encoders of its sets, on ONNX Runtime; an MTCNN
    ``detector``'s networks too (OpenCV's Haar cascade runs no torch anyway); on the CPU, or with every provider
    the installed ONNX Runtime offers for ``device`` cuda."""
    if run.is_ensemble:
        raise ExportError(f"{run.path}: --backend onnxruntime takes one exported run, not an ensemble")
    manifest = onnx_manifest(run.path)
    run.model = OnnxHead(run.path, manifest, device)
    backbones = Backbones(device="cpu", visual_sets={n: parse_spec(e["spec"]) for n, e in manifest["visual"].items()},
                          audio_sets={n: parse_spec(e["spec"]) for n, e in manifest["audio"].items()})  # fmt: skip
    if detector is not None and hasattr(detector, "model") and "detector" in manifest:
        files = [run.path / manifest["detector"][n]["file"] for n in ("pnet", "rnet", "onet")]
        detector.model.nets = [OnnxNet(f, device) for f in files]
    for name, entry in manifest["visual"].items():
        backbones._encoders[name] = OnnxImageEncoder(run.path, entry, backbones.batch_size, device)
    for name, entry in manifest["audio"].items():
        backbones._encoders[name] = OnnxAudioEncoder(
            run.path, entry, backbones.chunk_seconds, backbones.context_seconds, device
        )
    return run, backbones
