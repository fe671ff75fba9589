"""Generated media for the extraction tests: short videos (PyAV) with a tone burst at a known time, face crops,
and Aff-Wild2 / folder layouts around them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from expr.config import ABAW_CLASSES

HEADER = ",".join(ABAW_CLASSES)
SR = 44_100


def write_video(
    path: Path,
    fps: int,
    frames: int,
    audio: bool = True,
    burst_frame: int | None = None,
    audio_delay: float = 0.0,
    codec: str | None = None,
) -> Path:
    """A small video; with ``audio``, a stereo track that is silent except a 440 Hz burst from the time of frame
    ``burst_frame`` (default: the middle), starting ``audio_delay`` seconds after the first frame."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or ("mpeg4" if path.suffix == ".avi" else "libx264")
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        pcm = path.suffix == ".avi"  # AVI cannot signal AAC's encoder delay (23 ms); PCM has none
        a = c.add_stream("pcm_s16le" if pcm else "aac", rate=SR) if audio else None
        if a is not None:
            a.layout = "stereo"
        for i in range(frames):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, :, 0] = (i * 7) % 255
            img[10:30, 20:40] = 200
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            burst = (frames // 2 if burst_frame is None else burst_frame) / fps - audio_delay
            n = int((frames / fps - audio_delay) * SR)
            t = np.arange(n) / SR
            wave = np.where(t >= burst, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
            data = np.stack([wave, wave])
            offset = int(round(audio_delay * SR))
            for s in range(0, n, 1024):
                block = np.ascontiguousarray(data[:, s : s + 1024])
                if pcm:
                    block = (block.T.reshape(1, -1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(block, format="s16" if pcm else "fltp", layout="stereo")
                frame.sample_rate, frame.pts = SR, offset + s
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_crops(folder: Path, frames, corrupt=(), size: int = 112) -> Path:
    """JPEG crops ``00001.jpg`` ... for the 0-based ``frames``; ``corrupt`` ones hold garbage bytes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in frames:
        path = folder / f"{i + 1:05d}.jpg"
        if i in corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
        else:
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(path, quality=80)
    return folder


def write_annotation(path: Path, labels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "\n".join(str(int(x)) for x in labels) + "\n")
    return path


def affwild2_tree(root: Path) -> dict:
    """A tiny Aff-Wild2 EXPR tree; returns what the tests check against."""
    ann = root / "EXPR_Recognition_Challenge"
    crops = root / "cropped_aligned"
    rng = np.random.default_rng(0)

    def labels(n):
        lab = rng.integers(0, 8, n)
        lab[n // 3 : n // 3 + 4] = -1
        return lab

    spec = {}
    # train: a 30 fps mp4 with missing crops and one corrupt JPEG
    write_video(root / "videos" / "a.mp4", 30, 45, burst_frame=20)
    write_crops(crops / "a", [i for i in range(45) if i not in (3, 4, 40)], corrupt={10})
    spec["a"] = dict(split="train", labels=write_annotation(ann / "Train_Set" / "a.txt", labels(45)), fps=30, n=45)
    # train: a 25 fps avi
    write_video(root / "videos" / "b25.avi", 25, 40, burst_frame=12)
    write_crops(root / "cropped_aligned_new_50_vids" / "b25", range(40))
    spec["b25"] = dict(split="train", labels=write_annotation(ann / "Train_Set" / "b25.txt", labels(40)), fps=25, n=40)
    # train: two people sharing one video
    write_video(root / "videos" / "pair.mp4", 30, 36)
    for side in ("_left", "_right"):
        write_crops(crops / f"pair{side}", range(0, 36, 1 if side == "_left" else 2))
        spec[f"pair{side}"] = dict(
            split="train", labels=write_annotation(ann / "Train_Set" / f"pair{side}.txt", labels(36)), fps=30, n=36
        )
    # validation: no audio track; and an annotation 3 lines longer than its video
    write_video(root / "videos" / "mute.mp4", 30, 30, audio=False)
    write_crops(crops / "mute", range(30))
    spec["mute"] = dict(
        split="validation", labels=write_annotation(ann / "Validation_Set" / "mute.txt", labels(30)), fps=30, n=30
    )
    write_video(root / "videos" / "long.mp4", 30, 33, burst_frame=9, audio_delay=0.2)
    write_crops(crops / "long", range(33))
    spec["long"] = dict(
        split="validation", labels=write_annotation(ann / "Validation_Set" / "long.txt", labels(36)), fps=30, n=33
    )
    # test: a video and crops, no annotation
    write_video(root / "videos" / "t1.mp4", 30, 24)
    write_crops(crops / "t1", range(24))
    (root / "test_names.txt").write_text("t1.mp4\n")
    spec["t1"] = dict(split="test", labels=None, fps=30, n=24)
    return spec


# Small models of the real classes (open_clip CLIP, transformers Wav2Vec2Model) that run in milliseconds.
SMALL_CLIP_VISION = dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
SMALL_CLIP_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
SMALL_WAV2VEC2 = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def small_backbone_dirs(root: Path, clip_layers: int = 1) -> tuple[str, str]:
    """A small CLIP as an open_clip ``local-dir:`` folder and a small Wav2Vec2 as a ``save_pretrained`` folder: the
    real loading code of both libraries, on models of the real classes that run in milliseconds. Returns the
    ``--clip`` and ``--wav2vec2`` arguments."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    vision, text = {**SMALL_CLIP_VISION, "layers": clip_layers}, SMALL_CLIP_TEXT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = open_clip.CLIP(16, open_clip.CLIPVisionCfg(**vision), open_clip.CLIPTextCfg(**text))
        w2v = Wav2Vec2Model(Wav2Vec2Config(**SMALL_WAV2VEC2))
    clip_dir, w2v_dir = root / "clip", root / "wav2vec2"
    clip_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_dir / "open_clip_model.safetensors"))
    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}, "preprocess_cfg": {}}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    w2v.save_pretrained(str(w2v_dir))
    return f"local-dir:{clip_dir}", str(w2v_dir)
