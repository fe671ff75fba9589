"""The ``expr`` command: ``expr train [TRAIN OPTIONS]`` (same as ``python expr/train.py``)."""

from __future__ import annotations

import sys

USAGE = """usage: expr COMMAND [OPTIONS]

commands:
  train    train the fusion head (options: --config FILE, --preset NAME, --resume RUN_DIR, --section.key VALUE);
           for several processes: `accelerate launch -m expr train ...` (or `accelerate launch expr/train.py ...`)
  prepare  extract frozen encoder features into a feature store (CLIP + Wav2Vec2 by default; any open_clip, timm
           or Hugging Face encoder with --visual / --audio NAME=FAMILY:MODEL[@WEIGHTS]):
           `expr prepare affwild2 ROOT --out CACHE` or `expr prepare folder ROOT --labels LABELS.csv --out CACHE`
           (`expr prepare affwild2 --help` lists the options)
  finetune --data.cache STORE --finetune.backbone SPEC --finetune.method lora|last_n|full|frozen [...]
           stage I: tune an image encoder as a frame classifier on the store's face crops (prepared with --media);
           then `expr prepare ... --visual NAME=finetuned:RUN_DIR` adds its features as a set for `expr train`
  evaluate RUN_DIR [--cache CACHE] [--split validation]
           frame-level macro-F1, per-class F1, confusion matrix (JSON, Markdown, PNG into RUN_DIR/eval/SPLIT)
  ensemble RUN_DIR RUN_DIR [...] --out DIR [--weights equal|fit] [--calibrate]   or   --study SWEEP_DIR --out DIR
           several runs' (or a k-fold study's best setting's) frame probabilities averaged, scored beside each member,
           the steps tabled (best run, ensemble, + calibration, + smoothing); submit and predict take DIR as a run
  calibrate RUN_OR_ENSEMBLE [--split validation] [--groups 5]
           per-class decision offsets for macro-F1 fitted on a labelled split, reported in-sample and cross-fitted;
           evaluate, submit and predict apply them
  submit   RUN_DIR --example EXAMPLE.csv --out FILE.csv [--cache CACHE] [--format csv|per-video]
           the challenge prediction file for the test videos, validated against the organisers' example
  predict  VIDEO_OR_FOLDER [...] --run RUN_DIR --out DIR [--detector auto|mtcnn|haar]
           per-frame labels and probabilities (CSV) and a timeline plot (PNG) for raw videos
  export   RUN_DIR --out DIR
           the best head as a model folder (config.json, model.safetensors, README.md model card; Hub layout)
  sweep    --study NAME [--seeds 42,43] [--folds 5] [--out DIR] [-- CONFIG OVERRIDES]
           an ablation study (Optuna): window, xattn, tcn_depth, lambda, smoothing, full, or a YAML file
  store    info STORE [--verify]
           a feature store's sets (encoder, width), videos, frames and problems; --verify checks every data file
  export-head STATE_DIR --out FILE
           one safetensors file of the head from a resume state (RUN_DIR/states/stepN), DeepSpeed ZeRO included

`expr train --help` describes the run directory and options."""


COMMANDS = {
    "train": "expr.cli.train",
    "prepare": "expr.cli.prepare",
    "finetune": "expr.cli.finetune",
    "evaluate": "expr.cli.evaluate",
    "ensemble": "expr.cli.ensemble",
    "calibrate": "expr.cli.calibrate",
    "submit": "expr.cli.submit",
    "predict": "expr.cli.predict",
    "export": "expr.cli.export",
    "sweep": "expr.cli.sweep",
    "export-head": "expr.cli.export:main_head",
    "store": "expr.cli.store",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from expr import __version__

        print(f"expr {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:  # each command is a function(argv) -> exit code; imported only when used
        import importlib

        module, _, function = COMMANDS[command].partition(":")
        return getattr(importlib.import_module(module), function or "main")(rest)
    print(f"expr: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
