"""Feature extraction (`expr prepare`) on generated media: real decoding (PyAV), small random backbones of the real
classes, the Aff-Wild2 and folder layouts, resume, and prepare -> windows -> train."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mediatree import (
    SMALL_CLIP_TEXT,
    SMALL_CLIP_VISION,
    SMALL_WAV2VEC2,
    affwild2_tree,
    write_annotation,
    write_crops,
    write_video,
)

from expr.data.media import decode_audio, probe
from expr.data.store import FrameStore, StoreError
from expr.extract import PrepareError, extract_item, prepare
from expr.features.backbones import BackboneError, Backbones, load_wav2vec2
from expr.features.encoders import AudioEncoder, open_clip_encoder
from expr.features.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


def small_clip():
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(
            embed_dim=16,
            vision_cfg=open_clip.CLIPVisionCfg(**SMALL_CLIP_VISION),
            text_cfg=open_clip.CLIPTextCfg(**SMALL_CLIP_TEXT),
        )
    return model.eval(), open_clip.image_transform(32, is_train=False), open_clip.get_tokenizer("ViT-B-32")


def small_wav2vec2(**overrides):
    from transformers import Wav2Vec2Config

    cfg = {**SMALL_WAV2VEC2, **overrides}
    return load_wav2vec2("random", config=Wav2Vec2Config(**cfg))


class EnergyEncoder:
    """Stands in for Wav2Vec2 where timing is checked: frame j = mean energy of samples [320 j, 320 j + 400)."""

    dim, rate = 1, 50.0

    def encode(self, wave):
        n = (len(wave) - 400) // 320 + 1
        return np.array([[np.mean(wave[320 * j : 320 * j + 400] ** 2)] for j in range(n)], np.float16)


def small_backbones(audio=None) -> Backbones:
    b = Backbones(clip="random", wav2vec2="random")
    b._clip = small_clip()
    b._encoders["clip"] = open_clip_encoder(b._clip[0], b._clip[1], b.visual_sets["clip"], batch_size=16)
    b._encoders["wav2vec2"] = audio or AudioEncoder(*small_wav2vec2(), chunk_seconds=0.5, context_seconds=0.2)
    return b


def affwild2_items(root, test=True):
    from expr.extract import items_from_affwild2

    return items_from_affwild2(str(root), test_names=str(root / "test_names.txt") if test else None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("affwild2")
    return root, affwild2_tree(root)


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    root, spec = tree
    out = tmp_path_factory.mktemp("cache") / "store"
    items, source, classes = affwild2_items(root)
    summary = prepare(items, out, small_backbones(), classes, source=source, progress=False)
    return out, summary


# ----------------------------------------------------------------------------------------------- media
def test_probe_reads_each_videos_real_rate_and_frame_count(tmp_path):
    info = probe(write_video(tmp_path / "x.avi", 25, 40))
    assert (info.fps, info.num_frames, info.has_audio) == (25.0, 40, True)
    info = probe(write_video(tmp_path / "y.mp4", 30, 21, audio=False))
    assert (info.fps, info.num_frames, info.has_audio) == (30.0, 21, False)


@pytest.mark.parametrize(
    "name, fps, frames, burst, delay",
    [("a.mp4", 30, 45, 20, 0.0), ("b.avi", 25, 40, 12, 0.0), ("c.mp4", 30, 33, 9, 0.2)],
)
def test_decoded_audio_is_mono_16k_and_aligned_to_frame_times(tmp_path, name, fps, frames, burst, delay):
    path = write_video(tmp_path / name, fps, frames, burst_frame=burst, audio_delay=delay)
    wave, start = decode_audio(path)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) / 16_000 + start - frames / fps) < 0.05  # 16 kHz: duration preserved
    onset = start + np.flatnonzero(np.abs(wave) > 0.1)[0] / 16_000
    assert abs(onset - burst / fps) < 0.005


def test_unreadable_video_is_a_media_error_naming_the_file(tmp_path):
    from expr.data.media import MediaError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MediaError, match="bad.mp4"):
        probe(bad)


@pytest.mark.parametrize("cover", [False, True])
def test_an_audio_file_is_called_one_not_a_video_without_audio(tmp_path, cover):
    """A sound file (one with a cover picture too, which containers list as a video stream) is named for what it is."""
    import av

    from expr.data.media import MediaError, iter_frames

    path = tmp_path / "song.mp4"  # mp4 keeps the cover picture's disposition (matroska drops it)
    with av.open(str(path), "w") as container:
        sound = container.add_stream("aac", rate=16_000, layout="mono")
        if cover:
            art = container.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = 32, 32, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            container.mux(art.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")))
            container.mux(art.encode())
        block = av.AudioFrame.from_ndarray(np.zeros((1, 16_000), np.float32), format="fltp", layout="mono")
        block.sample_rate = 16_000
        container.mux(sound.encode(block))
        container.mux(sound.encode())
    said = r"song.mp4: an audio file \(sound" + (" and a cover picture" if cover else "") + r", no video\)"
    with pytest.raises(MediaError, match=said):
        probe(path)
    with pytest.raises(MediaError, match=said):
        next(iter_frames(path))


# ----------------------------------------------------------------------------------------------- encoders
def test_chunked_wav2vec2_stitches_to_the_whole_track_encoding():
    # Per-frame layer norm and no transformer layer: with enough context, chunks give exactly the whole-track
    # features (up to fp16); without context they do not (the positional convolution sees the chunk edge).
    model, norm = small_wav2vec2(num_hidden_layers=0, feat_extract_norm="layer")
    wave = np.random.default_rng(0).standard_normal(16_000 * 3).astype(np.float32)
    whole = AudioEncoder(model, norm, chunk_seconds=100).encode(wave).astype(np.float32)
    assert whole.shape == (149, 32)  # (48000 - 400) // 320 + 1
    chunked = AudioEncoder(model, norm, chunk_seconds=0.5, context_seconds=0.4).encode(wave).astype(np.float32)
    np.testing.assert_allclose(chunked, whole, atol=2e-3)
    no_context = AudioEncoder(model, norm, chunk_seconds=0.5, context_seconds=0.0).encode(wave).astype(np.float32)
    assert np.abs(no_context - whole).max() > 0.05


def test_full_size_random_wav2vec2_is_base_shaped_and_seeded():
    a, _ = load_wav2vec2("random")
    b, _ = load_wav2vec2("random")
    assert a.config.hidden_size == 768 and a.config.num_hidden_layers == 12
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_missing_wav2vec2_weights_offline_give_one_actionable_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as err:
        load_wav2vec2("facebook/wav2vec2-base")
    assert "\n" not in str(err.value) and "--wav2vec2" in str(err.value)
    with pytest.raises(BackboneError, match="not found"):
        load_wav2vec2(str(tmp_path / "no-such-dir"))


# ----------------------------------------------------------------------------------------------- Aff-Wild2
def test_cache_holds_every_video_with_its_real_frame_count_and_rate(prepared, tree):
    out, summary = prepared
    _, spec = tree
    store = FrameStore(out)
    assert sorted(store.names) == sorted(spec)
    for name, s in spec.items():
        v = store.names.index(name)
        assert store.splits[v] == s["split"]
        assert store.num_frames[v] == s["n"], name
        assert store.fps[v] == s["fps"], name
    assert summary["videos"] == {"train": 4, "validation": 2, "test": 1}
    assert store.visual.dtype == np.float16 and store.visual.shape == (sum(s["n"] for s in spec.values()), 16)


def test_face_mask_follows_missing_and_corrupt_crops(prepared):
    store = FrameStore(prepared[0])

    def face(name):
        v = store.names.index(name)
        return store.face[store.frame_offset[v] : store.frame_offset[v] + store.num_frames[v]]

    assert np.flatnonzero(~face("a")).tolist() == [3, 4, 10, 40]  # missing 3, 4, 40; corrupt 10
    assert face("pair_left").all() and face("pair_right").tolist() == [i % 2 == 0 for i in range(36)]
    v = store.names.index("a")
    masked = store.visual[store.frame_offset[v] + np.array([3, 4, 10, 40])]
    assert not masked.any()  # zeros where no face


def test_labels_align_by_frame_index_and_mismatches_are_reported(prepared, tree):
    out, summary = prepared
    _, spec = tree
    store = FrameStore(out)
    for name, s in spec.items():
        v = store.names.index(name)
        got = store.labels[store.frame_offset[v] : store.frame_offset[v] + store.num_frames[v]]
        if s["labels"] is None:
            assert (got == -1).all()
        else:
            want = np.array(s["labels"].read_text().split()[1:], dtype=np.int64)[: s["n"]]
            assert got.tolist() == want.tolist(), name
    assert summary["frame_count_mismatch"] == ["long"]
    assert summary["no_audio"] == ["mute"] and summary["corrupt_crops"] == ["a"]
    report = json.loads((out / "store.json").read_text())["report"]["videos"]
    assert any("36 frames" in p and "33" in p for p in report["long"]["problems"])
    assert any("00011.jpg" in p for p in report["a"]["problems"])


def test_audio_features_cover_the_track_and_pairs_share_their_video(prepared):
    store = FrameStore(prepared[0])
    audio = {
        n: store.audio[store.audio_offset[v] : store.audio_offset[v] + store.num_audio[v]]
        for v, n in enumerate(store.names)
    }
    assert len(audio["mute"]) == 0
    assert abs(len(audio["a"]) - 45 / 30 * 50) <= 2 and abs(len(audio["b25"]) - 40 / 25 * 50) <= 2
    np.testing.assert_array_equal(audio["pair_left"], audio["pair_right"])
    meta = json.loads((prepared[0] / "store.json").read_text())
    assert meta["backbones"]["random_weights"] is True and meta["classes"][0] == "Neutral"
    text = store.text_embeddings(meta["prompt_template"])
    assert text.shape == (8, 16) and torch.allclose(text.norm(dim=-1), torch.ones(8), atol=1e-4)


def test_audio_frames_map_to_frame_times_within_one_wav2vec2_step(tree):
    root, _ = tree
    items, _, _ = affwild2_items(root, test=False)
    bursts = {"a": 20 / 30, "b25": 12 / 25, "long": 9 / 30}
    for item in items:
        if item.name not in bursts:
            continue
        arrays, _ = extract_item(item, small_backbones().visual(), EnergyEncoder())
        energy = arrays["audio.wav2vec2"][:, 0].astype(np.float32)
        j = np.flatnonzero(energy > 0.5 * energy.max())[0]
        centre = float(arrays["audio_start"]) + (320 * j + 200) / 16_000
        assert abs(centre - bursts[item.name]) <= 1 / 50, item.name


def test_interrupted_extraction_resumes_without_redoing_finished_videos(tree, prepared, tmp_path, monkeypatch):
    root, _ = tree
    items, source, classes = affwild2_items(root)
    out = tmp_path / "store"
    assert prepare(items, out, small_backbones(), classes, source=source, progress=False, stop_after=3) == {
        "stopped_after": 3
    }
    assert not (out / "store.json").exists() and len(list((out / ".parts").glob("*.npz"))) == 3
    (out / ".parts" / ".t1.tmp999.npz").write_bytes(b"half a file")  # a kill during a write leaves only a temp file
    import expr.extract.job as prep

    calls = []
    real = prep.extract_item
    monkeypatch.setattr(prep, "extract_item", lambda item, *a, **k: calls.append(item.name) or real(item, *a, **k))
    prepare(items, out, small_backbones(), classes, source=source, progress=False)
    assert len(calls) == len(items) - 3
    resumed, whole = FrameStore(out), FrameStore(prepared[0])
    assert resumed.names == whole.names
    np.testing.assert_array_equal(resumed.visual, whole.visual)
    np.testing.assert_array_equal(resumed.audio, whole.audio)
    np.testing.assert_array_equal(resumed.labels, whole.labels)
    assert not (out / ".parts").exists()
    # Adding videos later (the test list) extracts only those; another backbone choice is refused.
    calls.clear()
    prepare(items[:-1], out, small_backbones(), classes, progress=False)
    assert calls == []
    other = small_backbones()
    other.audio_sets, other.implicit = {"wav2vec2": parse_spec("hf:facebook/wav2vec2-base")}, ("clip",)
    with pytest.raises(PrepareError, match="feature set 'wav2vec2' made by hf:facebook/wav2vec2-base@random"):
        prepare(items, out, other, classes, progress=False)


def test_a_store_has_one_preparation_at_a_time(tree, tmp_path):
    """Two `expr prepare` on one --out would share its parts and staging folder: the second is refused naming the
    first, before it extracts anything; once the first is gone, the store can be prepared."""
    from expr.locks import FolderLock, LockedError

    root, _ = tree
    items, source, classes = affwild2_items(root)
    out = tmp_path / "store"
    first = FolderLock(out, "store", beside=True).acquire()  # as a running expr prepare holds it
    with pytest.raises(LockedError, match=r"this store is being written by pid \d+ on host"):
        prepare(items, out, small_backbones(), classes, source=source, progress=False)
    assert not out.exists()
    first.release()
    prepare(items[:2], out, small_backbones(), classes, source=source, progress=False)
    assert (out / "store.json").is_file()


def test_malformed_annotation_stops_before_any_extraction_naming_file_and_line(tmp_path, capsys):
    from expr.cli.prepare import main

    root = tmp_path / "aw"
    write_annotation(root / "EXPR_Classification_Challenge" / "Train_Set" / "ok.txt", [0, 1, 2])
    bad = root / "EXPR_Classification_Challenge" / "Validation_Set" / "bad.txt"
    write_annotation(bad, [0, 1, 2])
    bad.write_text(bad.read_text().replace("\n1\n", "\nsurprise\n"))
    assert main(["affwild2", str(root), "--out", str(tmp_path / "out"), "--backbones.clip_pretrained", "random"]) == 2
    assert f"{bad}:3:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prepare_and_predict_take_the_configs_backbone_keys(tmp_path, capsys):
    """`--backbones.clip / clip_pretrained / wav2vec2` (training's config keys) mean what --clip MODEL/TAG and
    --wav2vec2 mean, converted in one place both ways; both spellings at once, or a key that does not shape a store,
    is an error naming it."""
    from expr.cli.prepare import main
    from expr.config import ConfigError
    from expr.features.backbones import backbone_options, clip_option

    keys = {"backbones.clip_pretrained": "random", "backbones.wav2vec2": "random"}
    assert backbone_options(keys, None, None, "x") == ("random", "random")
    big = {"backbones.clip": "ViT-L-14", "backbones.clip_pretrained": "laion2b_s32b_b82k"}
    assert backbone_options(big, None, None, "x") == ("ViT-L-14/laion2b_s32b_b82k", None)
    for clip, tag in [("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-B-32", "random"), ("local-dir:/w", "local")]:
        assert Backbones(clip_option(clip, tag)).clip_spec() == (clip, tag)
    with pytest.raises(ConfigError, match="once"):
        backbone_options({"backbones.clip": "ViT-L-14"}, "ViT-B-32/openai", None, "x")
    assert main(["affwild2", str(tmp_path), "--out", str(tmp_path / "o"), "--model.dim", "3"]) == 2
    assert "'model.dim' does not shape a feature store" in capsys.readouterr().err
    assert main(["affwild2", str(tmp_path), "--out", str(tmp_path / "o"), "--backbones.clip_pretraind", "random"]) == 2
    assert "Did you mean backbones.clip_pretrained" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- folder layout
def test_folder_layout_with_frame_folders_videos_and_a_label_csv(tmp_path):
    from types import SimpleNamespace

    from expr.data.folder import items_from_folder

    root = tmp_path / "corpus"
    write_video(root / "clip1.mp4", 30, 30)  # video only: its frames are encoded
    write_crops(root / "clip2", range(20), size=48)  # frames only (no audio)
    write_video(root / "clip3.avi", 25, 25)
    write_crops(root / "clip3", range(0, 25, 5), size=48)  # crops + video: crops are frames, video gives audio
    write_video(root / "unlabelled.mp4", 30, 10)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "video,frame,label,split\nclip1.mp4,0,calm,train\nclip1.mp4,5,angry,train\nclip2,3,2,validation\n"
        "clip3,24,happy,train\n"
    )
    args = SimpleNamespace(
        root=str(root), labels=str(labels), classes="calm,angry,happy", fps=None, frame_base=1, val_fraction=0.2
    )
    items, source, classes = items_from_folder(args)
    by = {it.name: it for it in items}
    assert classes == ["calm", "angry", "happy"] and by["unlabelled"].split == "test"
    assert by["clip1"].labels.tolist()[:6] == [0, -1, -1, -1, -1, 1] and len(by["clip1"].labels) == 30
    assert by["clip2"].split == "validation" and by["clip3"].labels[24] == 2
    out = tmp_path / "store"
    prepare(items, out, small_backbones(), classes, source=source, progress=False)
    store = FrameStore(out)
    v1, v2, v3 = (store.names.index(n) for n in ("clip1", "clip2", "clip3"))
    assert store.num_frames[v1] == 30 and store.face[store.frame_offset[v1] : store.frame_offset[v1] + 30].all()
    assert store.num_audio[v2] == 0 and store.fps[v2] == 30.0  # a frame folder alone: --fps default, no audio
    assert store.fps[v3] == 25.0 and store.num_audio[v3] > 0
    assert store.face[store.frame_offset[v3] : store.frame_offset[v3] + 25].sum() == 5


@pytest.mark.parametrize(
    "text, match",
    [
        ("video,label\nclip1,calm\nclip1,furious\n", "labels.csv:3: label 'furious'"),
        ("video,frame,label\nclip1,x,calm\n", "labels.csv:2: frame 'x'"),
        ("video,label\nclip1\n", "labels.csv:2: 1 fields"),
        ("name,label\n", "no 'video' column"),
        ("video,label\nnowhere,calm\n", "no video or frame folder"),
        ("video,label\nclip1,calm\nclip1,angry\n", "labels.csv:3: video clip1 is labelled 1 here and 0 on line 2"),
        (
            "video,frame,label\nclip1,0,calm\nclip1,1,calm\nclip1,0,angry\n",
            "labels.csv:4: frame 0 of video clip1 is labelled 1 here and 0 on line 2",
        ),
    ],
)
def test_folder_layout_errors_name_the_file_and_line(tmp_path, text, match):
    from types import SimpleNamespace

    from expr.data.affwild2 import AnnotationError, LayoutError
    from expr.data.folder import items_from_folder

    write_crops(tmp_path / "corpus" / "clip1", range(3), size=16)
    (tmp_path / "labels.csv").write_text(text)
    args = SimpleNamespace(
        root=str(tmp_path / "corpus"),
        labels=str(tmp_path / "labels.csv"),
        classes="calm,angry",
        fps=None,
        frame_base=1,
        val_fraction=0.2,
    )
    with pytest.raises((AnnotationError, LayoutError), match=match):
        items_from_folder(args)


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_prepare_then_train_from_the_command_line(tree, tmp_path):
    """The users' path with full-size random backbones: `expr prepare affwild2` then training on the cache."""
    root, _ = tree
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "expr",
        "prepare",
        "affwild2",
        str(root),
        "--out",
        str(out),
        "--clip",
        "random",
        "--wav2vec2",
        "random",
        "--test-names",
        str(root / "test_names.txt"),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOM BACKBONE WEIGHTS" in done.stderr
    assert "1 videos without audio (masked): mute" in done.stdout
    store = FrameStore(out)
    assert store.visual_dim == 512 and store.audio_dim == 768
    sets = store.feature_sets
    assert sets["clip"]["spec"] == "open_clip:ViT-B-32@random" and sets["clip"]["random_weights"] is True
    assert sets["wav2vec2"]["spec"] == "hf:facebook/wav2vec2-base@random" and sets["wav2vec2"]["rate"] == 50.0
    run_dir = tmp_path / "run"
    train = [
        sys.executable,
        str(ROOT / "expr" / "train.py"),
        "--data.cache",
        str(out),
        "--train.epochs",
        "2",
        "--train.batch_size",
        "4",
        "--data.window",
        "10",
        "--data.stride",
        "5",
        "--train.output_dir",
        str(run_dir),
    ]
    done = subprocess.run(train, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val/macro_f1" in m]
    assert len(evals) == 2 and all(np.isfinite(m["val/macro_f1"]) for m in evals)
    assert (out / "windows").is_dir()  # the window index is cached next to the frames
    shutil.rmtree(run_dir)


def test_a_kill_while_the_store_is_moved_into_place_is_finished_by_the_next_run(prepared, tree, tmp_path, monkeypatch):
    import expr.extract.assembly as assembly
    import expr.extract.job as prep

    root, _ = tree
    items, source, classes = affwild2_items(root)
    out = tmp_path / "store"
    shutil.copytree(prepared[0], out)
    # Adding a video: kill (simulated) after the old header is removed and one folder moved.
    real = assembly._swap_in

    def killed(staging, target):
        (target / "store.json").unlink()
        shutil.rmtree(target / "frames")
        (staging / "frames").rename(target / "frames")
        raise KeyboardInterrupt

    extra = affwild2_items(root)[0][0]
    extra.name = "a_again"
    assembly._swap_in = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare([*items, extra], out, small_backbones(), classes, source=source, progress=False)
    finally:
        assembly._swap_in = real
    assert not (out / "store.json").exists()
    calls = []
    real_extract = prep.extract_item
    monkeypatch.setattr(
        prep, "extract_item", lambda item, *a, **k: calls.append(item.name) or real_extract(item, *a, **k)
    )
    prepare([*items, extra], out, small_backbones(), classes, source=source, progress=False)
    assert calls == []  # nothing extracted again: the assembled store was moved into place
    store = FrameStore(out)
    assert sorted(store.names) == sorted([*FrameStore(prepared[0]).names, "a_again"])
    v = store.names.index("a_again")
    np.testing.assert_array_equal(
        store.labels[store.frame_rows([v])], store.labels[store.frame_rows([store.names.index("a")])]
    )


# ------------------------------------------------------------------------------------------- feature sets
TINY_VIT = "timm:vit_small_patch14_dinov2@random,img_size=28,depth=1,embed_dim=32,num_heads=2"
TINY_WAVLM = (
    "hf:microsoft/wavlm-base-plus@random,num_hidden_layers=1,hidden_size=32,num_attention_heads=2,"
    "intermediate_size=64,conv_dim=[16, 16, 16, 16, 16, 16, 16],num_conv_pos_embeddings=16,layer=0-1"
)


def test_a_new_feature_set_is_added_beside_the_others_and_never_overwritten(prepared, tree, tmp_path, monkeypatch):
    """A second run with another encoder adds a set without touching the existing ones or extracting them again;
    training selects sets by name (several visual sets concatenated per frame); a name that exists with another
    provenance is refused; videos added later get every set of the store."""
    import expr.extract.job as prep
    from expr.cli.prepare import main

    root, _ = tree
    items, source, classes = affwild2_items(root)
    out = tmp_path / "store"
    shutil.copytree(prepared[0], out)
    before = {p: p.stat().st_mtime_ns for p in (out / "sets").rglob("*.arrow")}
    calls = []
    real = prep.extract_item
    monkeypatch.setattr(
        prep, "extract_item", lambda item, *a, **k: calls.append((item.name, a[:2])) or real(item, *a, **k)
    )
    more = small_backbones()
    more.visual_sets = {"dino": parse_spec(TINY_VIT, "visual")}
    more.audio_sets = {"wavlm": parse_spec(TINY_WAVLM, "audio")}
    prep.prepare(items, out, more, classes, source=source, progress=False)
    assert len(calls) == len(items) and all(set(v) == {"dino"} and set(a) == {"wavlm"} for _, (v, a) in calls)
    assert before == {p: p.stat().st_mtime_ns for p in before}  # the clip and wav2vec2 sets are untouched
    store = FrameStore(out)
    assert store.visual_sets == ["clip"] and store.audio_set == "wav2vec2"  # the defaults stay the defaults
    sets = store.feature_sets
    assert sets["dino"]["dim"] == 32 and sets["dino"]["spec"] == TINY_VIT and sets["wavlm"]["modality"] == "audio"
    both = FrameStore(out, visual="clip,dino", audio="wavlm")
    assert both.visual_dim == store.visual_dim + 32 and both.visual.shape == (len(store.face), both.visual_dim)
    rows = store.frame_rows([0])
    np.testing.assert_array_equal(both.visual[rows][:, : store.visual_dim], store.visual[rows])
    np.testing.assert_array_equal(both.visual[rows][:, store.visual_dim :], both.set_array("dino")[rows])
    assert both.audio_dim == 32 and (both.num_audio - store.num_audio).tolist() == [0] * len(store.names)
    mute = store.names.index("mute")
    assert both.num_audio[mute] == 0 and both.face[rows].any()
    with pytest.raises(StoreError, match="no visual feature set 'dinov2' \\(it has clip, dino\\)"):
        FrameStore(out, visual="dinov2")
    # Training on two visual sets and the new audio set: the head's widths follow the store, the run records them.
    from expr.config import Config, config_from_argv, load_yaml
    from expr.training.trainer import run

    args = ["--data.cache", str(out), "--data.visual", "clip,dino", "--data.audio", "wavlm", "--data.window", "10"]
    args += ["--train.epochs", "1", "--train.batch_size", "8", "--train.log_with", "none"]
    cfg, _ = config_from_argv([*args, "--train.output_dir", str(tmp_path / "run")])
    assert run(cfg)["completed"]
    saved = Config.from_dict(load_yaml(tmp_path / "run" / "config.yaml"), "config.yaml")
    assert (saved.model.visual_dim, saved.model.audio_dim, saved.model.text_dim) == (both.visual_dim, 32, 16)
    assert (saved.data.visual, saved.data.audio) == ("clip,dino", "wavlm")  # the sets used, not "the defaults"
    again = small_backbones()
    again.visual_sets = {"dino": parse_spec(TINY_VIT + ",pool=mean", "visual")}
    with pytest.raises(PrepareError, match="'dino' made by .*never overwritten"):
        prep.prepare(items, out, again, classes, progress=False)
    # A video added later is extracted with every set of the store, from the specs the store records.
    calls.clear()
    extra = affwild2_items(root)[0][0]
    extra.name = "a_again"
    prep.prepare([*items, extra], out, more, classes, source=source, progress=False)  # sets listed in another order
    assert [(n, set(v), set(a)) for n, (v, a) in calls] == [("a_again", {"clip", "dino"}, {"wav2vec2", "wavlm"})]
    grown = FrameStore(out, visual="clip,dino", audio="wavlm")
    a, b = grown.names.index("a"), grown.names.index("a_again")
    np.testing.assert_allclose(grown.visual[grown.frame_rows([b])], grown.visual[grown.frame_rows([a])], atol=1e-3)
    # Naming only a visual set keeps the store's own audio sets (the default wav2vec2 is not asked for).
    shutil.copytree(prepared[0], tmp_path / "store2")  # its wav2vec2 set has random weights, the default has not
    cli = ["affwild2", str(root), "--test-names", str(root / "test_names.txt"), "--no-progress"]
    assert main([*cli, "--out", str(tmp_path / "store2"), "--visual", f"dino2={TINY_VIT}"]) == 0
    assert set(FrameStore(tmp_path / "store2").feature_sets) == {"clip", "wav2vec2", "dino2"}


def test_new_sets_of_a_store_with_media_come_from_its_own_crops_and_audio(tree, tmp_path, monkeypatch):
    import expr.extract.job as prep

    root, _ = tree
    items, source, classes = affwild2_items(root, test=False)
    out = tmp_path / "store"
    prep.prepare(items, out, small_backbones(), classes, source=source, progress=False, media=True)
    monkeypatch.setattr(prep, "extract_item", lambda *a, **k: pytest.fail("decoded the source again"))
    more = small_backbones()
    more.visual_sets = {"dino": parse_spec(TINY_VIT, "visual")}
    prep.prepare(items, out, more, classes, source=source, progress=False, media=True)
    store = FrameStore(out, visual="dino")
    assert store.visual_dim == 32 and not store.visual[~store.face].any() and store.visual[store.face].any()


def test_feature_set_options_on_the_command_line(tmp_path, capsys):
    from expr.cli.prepare import main

    base = ["affwild2", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--visual", "timm:efficientnet_b0"]) == 2
    assert "expected NAME=SPEC" in capsys.readouterr().err
    assert main([*base, "--clip", "random", "--visual", "clip=timm:resnet18@random"]) == 2
    assert "--clip is the set 'clip'; --visual names it too" in capsys.readouterr().err
    assert main([*base, "--audio", "w=timm:resnet18"]) == 2
    assert "audio encoders come from Hugging Face" in capsys.readouterr().err
    assert main([*base, "--visual", "a=timm:resnet18,pool=max"]) == 2
    assert "pool=max is not one of" in capsys.readouterr().err
    assert main([*base, "--visual", "a=timm:resnet18@random", "--audio", "a=hf:x@random"]) == 2
    assert "feature set names are shared by images and audio: a" in capsys.readouterr().err
    assert main([*base, "--visual", "..=timm:resnet18@random"]) == 2
    assert "starts with a letter or digit" in capsys.readouterr().err


def test_a_command_prints_its_messages_once_and_leaves_the_logger_as_it_found_it(tmp_path, capsys):
    """Each call adds a console for its own messages and takes it away after, so a second call in the same process
    does not print each message twice, or write to the console of a call that ended."""
    from expr.cli.prepare import main
    from expr.extract.common import logger

    before = (list(logger.handlers), logger.level, logger.propagate)
    argv = ["folder", str(tmp_path / "missing"), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o")]
    for _ in range(2):
        assert main([*argv, "--clip", "random"]) == 2
        assert (list(logger.handlers), logger.level, logger.propagate) == before
    logger.warning("one message")
    assert "one message" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------ VA and AU labels
def test_va_and_au_annotations_are_stored_beside_the_expressions_with_their_own_splits(tmp_path):
    """Aff-Wild2's three annotation folders read together: a track annotated for some tasks only, each task with its
    own split (an EXPR test video may be a VA training video), labels aligned by frame index like the expressions,
    unannotated frames kept as NaN / -1, and a malformed VA line stopped before any extraction."""
    from expr.data.affwild2 import AU_NAMES, AnnotationError

    root = tmp_path / "aw"
    spec = affwild2_tree(root)
    va_dir, au_dir = root / "VA_Estimation_Challenge", root / "AU_Detection_Challenge"
    rng = np.random.default_rng(0)
    va_a = np.round(rng.uniform(-1, 1, (45, 2)), 3)
    va_a[5:8] = -5
    va_t1 = np.round(rng.uniform(-1, 1, (24, 2)), 3)
    au_pair = rng.integers(0, 2, (36, 12))
    au_pair[0] = -1

    def write_rows(path, header, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "\n" + "\n".join(",".join(f"{v:g}" for v in r) for r in rows) + "\n")

    write_rows(va_dir / "Train_Set" / "a.txt", "valence,arousal", va_a)
    write_rows(va_dir / "Train_Set" / "t1.txt", "valence,arousal", va_t1)  # the EXPR test video, VA train
    write_rows(va_dir / "Validation_Set" / "long.txt", "valence,arousal", va_a[:36])  # 3 lines past its video
    write_rows(au_dir / "Validation_Set" / "pair_left.txt", ",".join(AU_NAMES), au_pair)  # EXPR train, AU validation
    items, source, classes = affwild2_items(root)
    assert source["task_dirs"] == {"va": "VA_Estimation_Challenge", "au": "AU_Detection_Challenge"}
    out = tmp_path / "store"
    prepare(items[:-1], out, small_backbones(), classes, source=source, progress=False)
    prepare(items, out, small_backbones(), classes, source=source, progress=False)  # rewrites the first ones
    store = FrameStore(out)
    assert store.tasks == ["expr", "au", "va"]

    def rows(name):
        return store.frame_rows([store.names.index(name)])

    va, au = store.task_labels["va"], store.task_labels["au"]
    np.testing.assert_allclose(va[rows("a")][:5], va_a[:5], atol=1e-6)
    assert np.isnan(va[rows("a")][5:8]).all() and np.isnan(va[rows("b25")]).all()
    assert len(rows("long")) == spec["long"]["n"] == 33  # extra annotation lines dropped, as for EXPR
    np.testing.assert_allclose(va[rows("long")][[0, 32]], va_a[[0, 32]], atol=1e-6)  # frame i is line i + 2
    np.testing.assert_array_equal(au[rows("pair_left")], au_pair)
    assert (au[rows("pair_right")] == -1).all() and (au[rows("a")] == -1).all()
    split = {t: dict(zip(store.names, s, strict=True)) for t, s in store.task_splits.items()}
    assert split["va"]["t1"] == "train" and split["va"]["long"] == "validation" and split["va"]["b25"] == ""
    expr_split = dict(zip(store.names, store.splits, strict=True))
    assert split["au"]["pair_left"] == "validation" and expr_split["pair_left"] == "train"
    assert expr_split["t1"] == "test"
    from expr.data.store_info import describe

    text = describe(store)
    assert "va labels: videos train 2, validation 1; frames 96" in text and "au labels: videos train 0" in text

    (va_dir / "Train_Set" / "a.txt").write_text("valence,arousal\n0.1,0.2\n0.3,7\n")
    with pytest.raises(AnnotationError, match=r"a.txt:3: value 7 is outside"):
        affwild2_items(root)
