"""``expr finetune --data.cache STORE --finetune.backbone SPEC --finetune.method lora|last_n|full|frozen [...]``:
stage I of the leaders' recipe. An image encoder of any family (SPEC as ``expr prepare --visual`` takes it) learns
to classify single face crops of the store (``expr prepare ... --media`` keeps them); stage II then trains the
temporal head on its features:

    expr finetune --data.cache STORE --finetune.backbone timm:vit_base_patch14_dinov2.lvd142m \\
        --finetune.method lora --train.output_dir runs/stage1
    expr prepare affwild2 ROOT --out STORE --visual tuned=finetuned:runs/stage1
    expr train --data.cache STORE --data.visual tuned

Same launch (``accelerate launch -m expr finetune ...``: DDP, DeepSpeed, mixed precision), logging, resume
(``--resume RUN_DIR``, exact) and run directory as ``expr train``; ``best/`` holds only what trained (the adapters or
unfrozen blocks, and the classifier: ``model.safetensors``) with ``tuning.json`` (the base encoder's spec and how it
was tuned), and ``metrics.jsonl`` the frame-level validation macro-F1 of every epoch. Defaults: the ``finetune``
preset (5 epochs, classifier lr 1e-3, encoder lr 1e-4); the ``finetune`` section of the options says the rest.
"""

from __future__ import annotations

import sys

from expr.cli._training import launch
from expr.config import options_help
from expr.training.finetune import FrameUnit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: expr finetune --data.cache STORE [--finetune.backbone SPEC] [--finetune.method METHOD] "
              "[--config FILE] [--preset NAME] [--resume RUN_DIR] [--section.key VALUE ...]\n")  # fmt: skip
        print(__doc__)
        print("Options (defaults of the finetune preset):\n")
        print(options_help("finetune"))
        return 0
    code, result = launch(argv, FrameUnit, default_preset="finetune")
    if result is not None:
        run_dir = result["run_dir"]
        print(f"best val/macro_f1 {result['best_macro_f1']:.4f} (frames) at epoch {result['best_epoch']}; run: "
              f"{run_dir}\nnext: expr prepare ... --visual tuned=finetuned:{run_dir}")  # fmt: skip
    return code
