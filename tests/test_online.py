"""Online mode: frozen CLIP and Wav2Vec2 inside the training step, on the face crops and audio that
`expr prepare --media` keeps. Small models of the real classes, loaded by the real code (open_clip local-dir,
transformers save_pretrained folders), on a generated Aff-Wild2 tree."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mediatree import affwild2_tree, small_backbone_dirs

from expr.config import Config
from expr.data.online import OnlineWindowDataset, collate_online
from expr.data.store import FrameStore, StoreError
from expr.data.windows import WindowDataset, load_or_build_windows
from expr.extract import PrepareError, items_from_affwild2, prepare
from expr.features.backbones import Backbones
from expr.models.online import store_encoders

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"visual_dim": 16, "audio_dim": 32, "text_dim": 16}


def _items(root):
    return items_from_affwild2(str(root))


@pytest.fixture(scope="module")
def media_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("online")
    clip, w2v = small_backbone_dirs(base / "weights")
    root = base / "affwild2"
    affwild2_tree(root)
    items, source, classes = _items(root)
    out = base / "store"
    backbones = Backbones(clip, w2v, batch_size=16, chunk_seconds=0.5, context_seconds=0.2)
    prepare(items, out, backbones, classes, source=source, progress=False, media=True)
    return out, root, backbones


def _cfg(store_path, out, **train):
    cfg = Config()
    cfg.data.cache, cfg.data.mode, cfg.data.window, cfg.data.stride = str(store_path), "online", 10, 5
    cfg.data.num_workers = 0
    for k, v in DIMS.items():
        setattr(cfg.model, k, v)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.log_with, cfg.train.output_dir = 1, 4, "none", str(out)
    cfg.train.lr = 1e-3
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_media_keeps_every_crop_file_and_the_audio_track(media_store):
    from expr.data.online import MediaStore

    out, root, _ = media_store
    store = FrameStore(out)
    media = MediaStore(out / "media")
    v = store.names.index("a")
    rows = store.frame_rows(np.array([v]))
    crop = root / "cropped_aligned" / "a" / "00001.jpg"
    assert bytes(media.jpeg(int(rows[0]))) == crop.read_bytes()  # the file's own bytes, not a re-encode
    assert all(len(media.jpeg(int(r))) == 0 for r in rows[~store.face[rows]])  # no face, nothing kept
    assert len(media.wave(v)) == pytest.approx(store.num_frames[v] / store.fps[v] * 16_000, rel=0.05)
    assert len(media.wave(store.names.index("mute"))) == 0


def test_online_features_equal_the_cached_ones(media_store):
    """Same windows, same masks and labels; CLIP on the decoded crops gives the cached visual features."""
    out, _, _ = media_store
    store = FrameStore(out)
    encoders, image_transform = store_encoders(store, "cpu")
    windows = load_or_build_windows(store, "validation", 10, 3, keep_unlabelled=True)
    cached = WindowDataset(store, windows)
    online = OnlineWindowDataset(store, windows, image_transform, augment=False)
    idx = list(range(len(cached)))
    a = cached.__getitems__(idx)
    b = collate_online(online.__getitems__(idx))
    for key in ("visual_mask", "label", "frame_labels", "index"):
        assert torch.equal(a[key], b[key]), key
    visual, audio, audio_mask = encoders(b["pixels"], b["visual_mask"], b["wave"], b["wave_mask"])
    assert visual.dtype == torch.float16 and visual.shape == a["visual"].shape
    torch.testing.assert_close(visual.float(), a["visual"].float(), atol=2e-3, rtol=2e-3)
    assert visual[~b["visual_mask"]].abs().sum() == 0
    mute = torch.from_numpy(cached.video == store.names.index("mute"))
    assert mute.any() and not audio_mask[mute].any() and audio[mute].abs().sum() == 0
    inside = torch.from_numpy((cached.start >= 0) & (cached.start + 10 <= store.num_frames[cached.video]))
    assert audio_mask[~mute & inside].float().mean() > 0.9  # windows reaching past the video mask that part


def test_a_windows_audio_features_do_not_depend_on_the_rest_of_the_batch(media_store):
    """Wav2Vec2-Base's group norm spans time: a 25 fps window batched with longer 30 fps ones (zero-padded to
    their length) must get the features it gets alone."""
    out, _, _ = media_store
    store = FrameStore(out)
    encoders, image_transform = store_encoders(store, "cpu")
    windows = load_or_build_windows(store, "train", 10, 5)
    online = OnlineWindowDataset(store, windows, image_transform, augment=False)
    has_audio = store.num_audio[online.video] > 0
    fps = store.fps[online.video]
    picks = [int(np.flatnonzero(has_audio & (fps == f))[k]) for f in sorted(set(fps[has_audio])) for k in (1, 2)]
    assert len({len(online.item(i)["wave"]) for i in picks}) >= 2, "needs windows of different audio lengths"
    items = [online.item(i) for i in picks]
    batch = collate_online(items)
    together, together_mask = encoders.encode_audio(batch["wave"], batch["wave_mask"], batch["wave_length"])
    for j, item in enumerate(items):
        one = collate_online([item])
        alone, alone_mask = encoders.encode_audio(one["wave"], one["wave_mask"], one["wave_length"])
        ta = alone.shape[1]
        assert torch.equal(together_mask[j, :ta], alone_mask[0]) and not together_mask[j, ta:].any()
        # Equal up to the fp16 rounding of the output (one ulp, from fp32 sums taken in another order); the padding
        # bias this guards against is of the size of the features themselves (0.47 of 0.81 measured).
        torch.testing.assert_close(together[j, :ta].float(), alone[0].float(), atol=1e-3, rtol=1e-3)


def test_online_audio_is_each_windows_own_span_encoded_alone(media_store):
    """The paper's per-window audio encoding: Wav2Vec2 on the window's samples only, standardised per window."""
    from expr.features.backbones import load_wav2vec2

    out, _, backbones = media_store
    store = FrameStore(out)
    encoders, image_transform = store_encoders(store, "cpu")
    windows = load_or_build_windows(store, "train", 10, 5)
    online = OnlineWindowDataset(store, windows, image_transform)
    i = int(np.flatnonzero(online.video == store.names.index("b25"))[1])  # a 25 fps video, window inside the track
    item = online.item(i)
    assert item["wave_mask"].all()
    fps = store.fps[online.video[i]]
    assert len(item["wave"]) == int(np.ceil(10 / fps * 16_000))
    track = online.media.wave(int(online.video[i])).astype(np.float32)
    s0 = int(np.floor((online.start[i] / fps - store.audio_start[online.video[i]]) * 16_000))
    span = track[s0 : s0 + len(item["wave"])]
    model, _ = load_wav2vec2(backbones.wav2vec2)
    x = torch.from_numpy((span - span.mean()) / np.sqrt(span.var() + 1e-7))[None]
    expected = model(x).last_hidden_state[0]
    batch = collate_online([item])
    _, audio, audio_mask = encoders(batch["pixels"], batch["visual_mask"], batch["wave"], batch["wave_mask"])
    assert audio.shape[1] == expected.shape[0] and audio_mask.all()
    torch.testing.assert_close(audio[0].float(), expected, atol=3e-3, rtol=3e-3)


def test_training_windows_are_augmented_alike_across_their_frames(media_store):
    out, _, _ = media_store
    store = FrameStore(out)
    _, image_transform = store_encoders(store, "cpu")
    windows = load_or_build_windows(store, "train", 10, 5)
    plain = OnlineWindowDataset(store, windows, image_transform, augment=False)
    aug = OnlineWindowDataset(store, windows, image_transform, augment=True)
    i = int(np.flatnonzero(plain.video == store.names.index("b25"))[0])
    base = plain.item(i)
    assert torch.equal(base["pixels"], plain.item(i)["pixels"])  # evaluation windows are deterministic
    first, second = aug.item(i, epoch=0), aug.item(i, epoch=1)
    # The draw depends on (seed, epoch, window) only: not on the global RNG, a worker's state or the process.
    torch.manual_seed(123)
    assert torch.equal(aug[len(aug) * 0 + i]["pixels"], first["pixels"])
    assert torch.equal(aug[len(aug) * 1 + i]["pixels"], second["pixels"])
    mask = base["visual_mask"]
    assert not torch.equal(first["pixels"][mask], second["pixels"][mask])
    assert not torch.equal(first["pixels"][mask], base["pixels"][mask])
    assert first["pixels"][~mask].sum() == 0  # frames without a face stay empty and masked
    # One draw per window: the same picture in two frames of a window stays the same picture after augmentation.
    picture = base["pixels"][mask][0]
    stack = aug._aug(torch.stack([picture, picture, base["pixels"][mask][1]]))
    assert torch.equal(stack[0], stack[1]) and not torch.equal(stack[0], picture)


def test_online_training_trains_the_head_only_and_evaluate_reproduces_its_metric(media_store, tmp_path):
    from expr.runs.evaluate import evaluate_run
    from expr.training.trainer import Trainer

    out, _, _ = media_store
    trainer = Trainer(_cfg(out, tmp_path / "run", epochs=2))
    head = {id(p) for p in trainer.accelerator.unwrap_model(trainer.model).parameters()}
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    frozen = list(trainer.encoders.parameters())
    assert optimized <= head and not optimized & {id(p) for p in frozen}
    assert frozen and not any(p.requires_grad for p in frozen)
    before = {k: v.clone() for k, v in trainer.encoders.state_dict().items()}
    head_before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    after = trainer.encoders.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(head_before, trainer.model.parameters(), strict=True))
    assert result["completed"] and np.isfinite(result["best_macro_f1"])
    report = evaluate_run(result["run_dir"], device="cpu")
    assert report["metrics"]["macro_f1"] == pytest.approx(result["best_macro_f1"], abs=1e-6)


@pytest.mark.slow
def test_online_resume_mid_epoch_equals_an_uninterrupted_run(media_store, tmp_path):
    """Augmented training stopped after 3 steps (mid-epoch) and resumed ends with the uninterrupted run's metrics and
    head. The reference loads in the main process, the interrupted run in a worker: the draws depend on neither."""
    from safetensors.torch import load_file

    from expr.config import config_from_argv
    from expr.training.trainer import run

    def history(result):
        return [{k: v for k, v in r.items() if k != "time/epoch_s"} for r in result["history"]]

    out, _, _ = media_store
    ref = run(_cfg(out, tmp_path / "ref", epochs=2))
    cfg = _cfg(out, tmp_path / "b", epochs=2, stop_after_steps=3)
    cfg.data.num_workers = 1
    first = run(cfg)
    assert not first["completed"] and first["history"] == []
    cfg, resume = config_from_argv(["--resume", str(tmp_path / "b")])
    assert cfg.data.num_workers == 1 and cfg.data.augment
    second = run(cfg, resume_dir=resume)
    assert second["completed"] and history(second) == history(ref)
    a = load_file(tmp_path / "ref" / "best" / "model.safetensors")
    b = load_file(tmp_path / "b" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


LAUNCHERS = {
    "ddp": ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
    "zero2": ["--config_file", "accelerate_configs/deepspeed_zero2.yaml", "--num_processes", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_online_training_on_two_processes_keeps_ranks_identical(media_store, tmp_path, launcher):
    """DDP and DeepSpeed ZeRO-2 on 2 CPU processes through accelerate launch, with DataLoader workers decoding crops;
    the frozen encoders stay outside the engine."""
    out, _, _ = media_store
    run_dir = tmp_path / launcher
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *LAUNCHERS[launcher], "--mixed_precision", "no",
        "--dynamo_backend", "no", str(ROOT / "expr" / "train.py"), "--data.cache", str(out), "--data.mode", "online",
        "--data.window", "10", "--data.stride", "5", "--data.num_workers", "1", "--train.epochs", "2",
        "--train.batch_size", "2", "--train.log_with", "none", "--train.output_dir", str(run_dir),
        *[a for k, v in DIMS.items() for a in (f"--model.{k}", str(v))],
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["num_processes"] == 2 and len(set(final["param_checksum_per_rank"])) == 1
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_online_mode_needs_a_store_prepared_with_media(media_store, tmp_path):
    from expr.training.trainer import Trainer

    _, root, backbones = media_store
    items, source, classes = _items(root)
    plain = tmp_path / "plain"
    some = [next(it for it in items if it.split == split) for split in ("train", "validation")]
    prepare(some, plain, backbones, classes, source=source, progress=False)
    with pytest.raises(StoreError, match="--media"):
        Trainer(_cfg(plain, tmp_path / "run"))
    with pytest.raises(PrepareError, match="without --media"):  # a store is all media or none
        prepare(items, plain, backbones, classes, source=source, progress=False, media=True)


def test_predict_runs_an_online_trained_head_online(media_store, tmp_path):
    """`expr predict` on a raw video keeps the crops and audio and runs the run's frozen encoders per window."""
    import csv

    from test_predict import clip_from_photo

    from expr.training.trainer import run
    from expr.video.predict import predict_video

    out, _, _ = media_store
    result = run(_cfg(out, tmp_path / "run"))
    video = clip_from_photo(tmp_path / "astronaut.mp4", "astronaut", audio=True)
    pred = predict_video(video, result["run_dir"], tmp_path / "pred", progress=False)
    rows = list(csv.DictReader(open(pred["people"][0]["csv"])))
    assert len(rows) == 12 and sum(int(r["face"]) for r in rows) >= 10
    assert all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 1e-3 for r in rows)
    features = FrameStore(tmp_path / "pred" / "astronaut_features")
    assert features.meta["media"] and (features.path / "media" / "frames").is_dir()


def test_flipped_test_time_views_are_averaged_alike_in_validation_and_evaluate(media_store, tmp_path):
    """eval.flip: every window also seen on its mirrored crops, the two probabilities averaged, by training's
    validation and by evaluate (one number), and not the same numbers as without the views."""
    from expr.runs.evaluate import evaluate_run
    from expr.scoring.outputs import mirrored
    from expr.training.trainer import Trainer

    out, _, _ = media_store
    cfg = _cfg(out, tmp_path / "run")
    cfg.eval.flip = True
    result = Trainer(cfg).fit()
    flipped = evaluate_run(result["run_dir"], device="cpu", out_dir=tmp_path / "flip")
    assert flipped["flip"] and flipped["metrics"]["macro_f1"] == pytest.approx(result["best_macro_f1"], abs=1e-6)
    plain = evaluate_run(result["run_dir"], device="cpu", out_dir=tmp_path / "plain", overrides={"eval.flip": False})
    assert not plain["flip"]
    a, b = np.load(tmp_path / "flip" / "frame_probs.npz"), np.load(tmp_path / "plain" / "frame_probs.npz")
    assert np.array_equal(a["rows"], b["rows"]) and not np.allclose(a["probs"], b["probs"], atol=1e-6)
    mirror_only = 2 * a["probs"] - b["probs"]  # frame placement is linear in the window probabilities
    np.testing.assert_allclose(mirror_only.sum(1), 1.0, atol=1e-5)
    assert mirror_only.min() > -1e-5
    pixels = torch.arange(2 * 3 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 3, 4, 4)
    assert torch.equal(mirrored({"pixels": pixels})["pixels"][..., 0], pixels[..., -1])
