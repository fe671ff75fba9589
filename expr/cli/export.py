"""``expr export RUN_DIR --out DIR [--format onnx]``: the trained head as a self-contained folder in the layout of a
Hugging Face Hub model repository (``config.json``, ``model.safetensors``, ``README.md`` model card), loadable without
the run directory and without unpickling anything; ``--format onnx`` adds the head and the run's encoders as ONNX
models (:mod:`expr.runs.onnx`)::

    from expr.runs.export import load_head
    head, info = load_head("exported/")          # an exported folder or a run directory
    logits = head(visual, visual_mask, audio, audio_mask).logits"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from expr.cli.options import parse_options, positional
from expr.features.encoders import EncoderError
from expr.features.spec import SpecError
from expr.runs.export import ExportError, export_run, export_tuned
from expr.runs.layout import CALIBRATION, EXPORT_FORMAT, TUNED_ENCODERS, RunError, load_head, load_run, run_info  # noqa: F401 (load_head: documented here)
from expr.training.checkpoint import CheckpointError, export_head
from expr.video.predict import PredictError, run_backbones


@dataclass(kw_only=True)
class ExportOptions:
    run_dir: str = positional()
    """a run directory (its best head is exported)"""
    out: str
    """folder to write (replaced if it exists)"""
    merge: bool = False
    """an `expr finetune` run: merge its LoRA adapters into full encoder weights (default: the adapters or unfrozen
    blocks alone, which need the base weights to load)"""
    format: Literal["safetensors", "onnx"] = "safetensors"
    """safetensors: the head's weights; onnx: also the head and the run's image and audio encoders as ONNX models
    (head.onnx, image_<set>.onnx, audio_<set>.onnx, onnx.json), each checked against torch as it is written, for
    `expr predict --backend onnxruntime`"""
    clip: str | None = None
    """--format onnx: the CLIP weights to export, as expr predict takes them (default: those of the run's features)"""
    wav2vec2: str | None = None
    """--format onnx: the Wav2Vec2 weights to export (default: those of the run's features)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(ExportOptions, argv, "expr export", "export", __doc__.split("\n\n")[0], config_keys=False)
    try:
        if (args.clip or args.wav2vec2) and args.format != "onnx":
            raise ExportError("--clip and --wav2vec2 choose the encoders of an ONNX export: add --format onnx")
        if (Path(args.run_dir) / "best" / "tuning.json").is_file():
            if args.format == "onnx":
                raise ExportError(f"{args.run_dir}: an `expr finetune` run (a tuned encoder) has no ONNX export yet")
            out = export_tuned(args.run_dir, args.out, args.merge)
            kind = "merged encoder weights" if args.merge else "trained weights only; the base loads from its spec"
            print(f"wrote {out}: tuning.json, model.safetensors ({kind}), config.json, README.md")
            return 0
        if args.merge:
            raise ExportError(f"--merge: {args.run_dir} is not an `expr finetune` run (it has no tuned encoder)")
        if args.format == "onnx":
            return export_onnx_folder(args)
        out = export_run(args.run_dir, args.out)
    except (RunError, PredictError, EncoderError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: config.json, model.safetensors, README.md (upload as a Hugging Face model repository)")
    return 0


def export_onnx_folder(args: ExportOptions) -> int:
    import json

    from expr.runs.onnx import check_exportable, export_onnx
    from expr.runs.run import Run

    run = Run.open(args.run_dir)
    check_exportable(run)  # before the encoders load
    backbones = run_backbones(run.info, args.clip, args.wav2vec2, "cpu")
    backbones.load_all()
    out = export_onnx(run, args.out, backbones)
    manifest = json.loads((out / "onnx.json").read_text())
    models = [manifest["head"], *manifest["visual"].values(), *manifest["audio"].values(),
              *manifest.get("detector", {}).values()]  # fmt: skip
    parity = ", ".join(f"{m['file']} {m['parity']:.1e}" for m in models)
    print(f"wrote {out}: {', '.join(m['file'] for m in models)}, onnx.json and the plain export; largest difference "
          f"to torch: {parity}")  # fmt: skip
    if "detector" not in manifest:
        print("note: MTCNN's weights are not installed (facenet-pytorch): no detector was exported, and expr predict "
              "--backend onnxruntime will use OpenCV's Haar cascade")  # fmt: skip
    return 0


@dataclass(kw_only=True)
class ExportHeadOptions:
    state_dir: str = positional()
    """a resume state, a folder of RUN_DIR/states/ (DeepSpeed ZeRO states included)"""
    out: str
    """the safetensors file to write"""


def main_head(argv: list[str] | None = None) -> int:
    """``expr export-head STATE_DIR --out FILE``: one safetensors file of the head of a resume state."""
    argv = sys.argv[1:] if argv is None else argv
    doc = main_head.__doc__
    args, _ = parse_options(ExportHeadOptions, argv, "expr export-head", "export_head", doc, config_keys=False)
    try:
        path = export_head(args.state_dir, args.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
