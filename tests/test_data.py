import numpy as np
import pytest
import torch

from expr.data.demo import CLASS_FREQ, ensure_demo_store, generate_videos
from expr.data.store import FrameStore, StoreError, VideoRecord, write_store
from expr.data.windows import EpochSampler, WindowDataset, build_windows, label_position, window_starts


def tiny_store(tmp_path):
    rng = np.random.default_rng(0)
    a = VideoRecord(
        "a",
        "train",
        fps=25.0,
        visual=rng.standard_normal((50, 4)),
        face=np.arange(50) % 7 != 0,
        labels=np.repeat([0, 1, -1, 2, 2], 10),
        audio=rng.standard_normal((100, 3)),
        audio_start=0.0,
    )
    b = VideoRecord(
        "b",
        "validation",
        fps=30.0,
        visual=rng.standard_normal((7, 4)),
        face=np.ones(7, bool),
        labels=np.full(7, 1),
        audio=None,
    )
    path = write_store(tmp_path / "s", [a, b], {"classes": ["x", "y", "z"]})
    return FrameStore(path), a, b


def test_store_roundtrip(tmp_path):
    store, a, b = tiny_store(tmp_path)
    assert store.names == ["a", "b"] and list(store.splits) == ["train", "validation"]
    assert store.visual.dtype == np.float16 and store.visual.shape == (57, 4)
    np.testing.assert_allclose(store.visual[:50], a.visual.astype(np.float16))
    assert store.num_audio.tolist() == [100, 0] and store.audio.shape == (100, 3)
    assert store.labels[:50].tolist() == a.labels.tolist() and store.face[:50].tolist() == a.face.tolist()
    assert not (tmp_path / "s.tmp").exists()


def test_not_a_store_names_the_path(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path)):
        FrameStore(tmp_path)


def test_window_starts_put_a_label_frame_every_stride_frames_from_the_first_frame_to_the_last():
    # center: label frames 0, 30, 60, 90 and the last, 99; each window starts T // 2 before its label frame, so the
    # first and last windows reach past the video (those frames are masked).
    assert window_starts(100, 30, 30).tolist() == [-15, 15, 45, 75, 84]
    assert window_starts(91, 30, 30).tolist() == [-15, 15, 45, 75]  # the last frame, 90, is already a label frame
    assert window_starts(10, 30, 30).tolist() == [-15, -6]  # shorter than a window: frames 0 and 9 still labelled
    assert window_starts(100, 30, 30, "last").tolist() == [-29, 1, 31, 61, 70]
    assert window_starts(100, 30, 15, "majority").tolist() == [0, 15, 30, 45, 60, 70]  # majority: inside the video
    assert window_starts(10, 30, 30, "majority").tolist() == [0]
    for rule in ("center", "last"):
        for n, T, stride in ((100, 30, 30), (7, 10, 3), (61, 60, 1), (200, 10, 7)):
            labels = label_position(window_starts(n, T, stride, rule), T, n, rule)
            assert labels[0] == 0 and labels[-1] == n - 1 and (np.diff(labels) <= stride).all()


def test_window_slots_make_every_frame_the_label_frame_of_exactly_one_slot_position():
    from expr.data.windows import window_slots

    for rule in ("center", "last"):
        for n, T, stride in ((100, 30, 30), (7, 10, 3), (61, 60, 4), (5, 60, 30)):
            first, span = window_slots(n, T, stride, rule)
            starts = np.concatenate([f + np.arange(s) for f, s in zip(first, span, strict=True)])
            assert sorted(label_position(starts, T, n, rule).tolist()) == list(range(n)), (rule, n, T, stride)
    first, span = window_slots(100, 30, 30, "majority")  # full windows only: starts 0..70
    assert first.tolist() == [0, 30, 60] and span.tolist() == [30, 30, 11]


def test_window_labels_and_dropping(tmp_path):
    store, a, b = tiny_store(tmp_path)
    center = build_windows(store, "train", 10, label_rule="center")
    # label frames 0, 10, 20, 30, 40 and 49; frame 20 is unlabelled
    assert center["start"] == [-5, 5, 25, 35, 44] and center["label"] == [0, 1, 2, 2, 2]
    last = build_windows(store, "train", 10, stride=5, label_rule="last", drop_unlabelled=False)
    assert last["start"][:3] == [-9, -4, 1] and last["label"][:6] == [0, 0, 1, 1, -1, -1]  # frames 0, 5, ..., 25


def test_majority_rule(tmp_path):
    store, *_ = tiny_store(tmp_path)
    w = build_windows(store, "train", 20, stride=5, label_rule="majority")
    labels = dict(zip(w["start"], w["label"], strict=True))
    assert labels[5] == 1  # frames 5-24: 0 x5, 1 x10, -1 x5
    assert labels[20] == 2  # frames 20-39: -1 x10, 2 x10 (unlabelled frames do not vote)
    assert labels[0] == 0  # tie 10/10 between classes 0 and 1 -> lowest index


def test_getitems_gathers_masks_and_audio(tmp_path):
    store, a, b = tiny_store(tmp_path)
    train = WindowDataset(store, build_windows(store, "train", 10))  # starts -5, 5, 25, 35, 44
    batch = train.__getitems__([0, 3, 4])
    assert batch["visual"].shape == (3, 10, 4) and batch["visual"].dtype == torch.float16
    np.testing.assert_allclose(batch["visual"][1].float().numpy(), a.visual[35:45].astype(np.float16), rtol=1e-3)
    # Window 0 (frames -5..4) reaches before the video: its first five frames are masked, then frame 0 has no face.
    assert batch["visual_mask"][0].tolist() == [False] * 5 + [i % 7 != 0 for i in range(5)]
    assert batch["frame_labels"][0].tolist() == [-1] * 5 + [0] * 5
    assert batch["visual_mask"][2].tolist() == [i % 7 != 0 for i in range(44, 50)] + [False] * 4  # past the end
    # 10 frames at 25 fps = 0.4 s = 20 audio frames at 50 Hz, starting at 35 / 25 * 50 = 70 for start 35
    assert batch["audio"].shape == (3, 20, 3) and batch["audio_mask"][1].all()
    np.testing.assert_allclose(batch["audio"][1].float().numpy(), a.audio[70:90].astype(np.float16), rtol=1e-3)
    assert batch["audio_mask"][0].tolist() == [False] * 10 + [True] * 10  # no audio before the video's start
    np.testing.assert_allclose(batch["audio"][0, 10:].float().numpy(), a.audio[:10].astype(np.float16), rtol=1e-3)
    assert (batch["audio"][0, :10] == 0).all()
    assert batch["label"].tolist() == [0, 2, 2]
    # A 7-frame video without audio: windows centred on frames 0 and 6, the frames outside it and the audio masked.
    val = WindowDataset(store, build_windows(store, "validation", 10))
    vb = val.__getitems__([0, 1])
    assert vb["visual_mask"][0].tolist() == [False] * 5 + [True] * 5
    assert vb["visual_mask"][1].tolist() == [True] * 6 + [False] * 4
    assert vb["frame_labels"][1].tolist() == [1] * 6 + [-1] * 4
    assert not vb["audio_mask"].any() and vb["audio"].shape[1] >= 1


def test_audio_span_uses_each_videos_fps(tmp_path):
    store, *_ = tiny_store(tmp_path)
    a0, count = store.audio_span(np.array([0, 1]), np.array([25, 30]), 15)
    assert a0.tolist() == [50, 50] and count.tolist() == [30, 25]


def _overlapping_units(start, length, fps, audio_start, rate) -> tuple[int, int]:
    """Brute force with exact fractions: (first, count) of the audio units j whose [audio_start + j / rate,
    audio_start + (j + 1) / rate) overlaps the window's [start / fps, (start + length) / fps) by more than a millionth
    of a unit. Units strictly inside overlap fully, so only those near the two ends are tried."""
    from fractions import Fraction

    t0, t1 = Fraction(start) / fps, Fraction(start + length) / fps
    eps = Fraction(1, 10**6) / rate

    def overlaps(j):
        return min(t1, audio_start + Fraction(j + 1) / rate) - max(t0, audio_start + Fraction(j) / rate) > eps

    near0, near1 = int((t0 - audio_start) * rate), int((t1 - audio_start) * rate)
    first = min(j for j in range(near0 - 2, near0 + 3) if overlaps(j))
    last = max(j for j in range(near1 - 2, near1 + 3) if overlaps(j))
    return first, last - first + 1


def test_audio_span_is_every_audio_frame_the_window_overlaps():
    from fractions import Fraction

    from expr.data.store import audio_overlap

    # The case: frames 1..30 at 30 fps span [1/30, 31/30) s = audio frames 1..51 at 50 Hz.
    assert [int(x) for x in audio_overlap(1, 30, 30.0, 0.0, 50.0)] == [1, 51]
    assert [int(x) for x in audio_overlap(0, 7, 30.0, 0.0, 50.0)] == [0, 12]  # [0, 7/30) s: frames 0..11
    assert [int(x) for x in audio_overlap(1, 7, 30.0, 0.0, 50.0)] == [1, 13]
    rng = np.random.default_rng(0)
    fps_values = [Fraction(24000, 1001), Fraction(25), Fraction(30000, 1001), Fraction(30)]
    for _ in range(400):
        fps = fps_values[rng.integers(4)]
        start, length = int(rng.integers(0, 5000)), int(rng.integers(1, 90))
        audio_start = Fraction(int(rng.integers(-400, 400)), 1000)  # audio up to 0.4 s before or after the video
        for rate in (50, 16000):
            expected = _overlapping_units(start, length, fps, audio_start, rate)
            first, count = audio_overlap(start, length, float(fps), float(audio_start), float(rate))
            assert (int(first), int(count)) == expected, (fps, start, length, audio_start, rate)


def test_the_window_label_is_its_centre_or_last_frame(tmp_path):
    # Every frame labelled with its own index mod 3 in a long video: the label names exactly one frame.
    labels = np.arange(200) % 3
    video = VideoRecord("v", "train", 25.0, np.zeros((200, 2)), np.ones(200, bool), labels, None)
    store = FrameStore(write_store(tmp_path / "s", [video], {"classes": ["a", "b", "c"]}))
    from expr.data.windows import window_labels

    for T in (9, 10, 30, 31):
        start = np.arange(0, 200 - T, 7)
        zeros = np.zeros(len(start), np.int64)
        assert window_labels(store, zeros, start, T, "center").tolist() == ((start + T // 2) % 3).tolist(), T
        assert window_labels(store, zeros, start, T, "last").tolist() == ((start + T - 1) % 3).tolist(), T


def test_epoch_sampler_is_seeded_per_epoch():
    s = EpochSampler(50, seed=42)
    first = list(s)
    assert sorted(first) == list(range(50)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    assert list(EpochSampler(50, seed=42)) == first
    assert list(EpochSampler(5, 0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_demo_is_deterministic_and_realistic():
    a, b = generate_videos(6, seed=3), generate_videos(6, seed=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.visual, y.visual)
        np.testing.assert_array_equal(x.labels, y.labels)
    videos = generate_videos(40, seed=0)
    labels = np.concatenate([v.labels for v in videos])
    counts = np.bincount(labels[labels >= 0], minlength=8) / (labels >= 0).sum()
    assert counts.argmax() == 0 and counts[[2, 3]].max() < counts[[0, 4]].min()  # imbalanced like Aff-Wild2
    assert (labels == -1).any()
    assert any(v.audio is None for v in videos) and any(not v.face.all() for v in videos)
    assert {v.fps for v in videos} == {25.0, 30.0}
    assert {v.split for v in videos} == {"train", "validation"}
    # labels come in runs: far fewer changes than frames
    changes = sum(int((np.diff(v.labels) != 0).sum()) for v in videos)
    assert changes < len(labels) / 30
    assert CLASS_FREQ.sum() == pytest.approx(1.0)


def test_demo_store_is_cached(small_store):
    assert ensure_demo_store(12, seed=0) == small_store
    store = FrameStore(small_store)
    assert store.meta["source"] == "demo" and len(store.names) == 12


def test_window_index_is_saved_next_to_the_store_and_reused(tmp_path):
    from expr.data.windows import load_or_build_windows

    store, *_ = tiny_store(tmp_path)
    first = load_or_build_windows(store, "train", 10)
    saved = tmp_path / "s" / "windows" / "v3-train-w10-s10-center"
    assert (saved / "dataset_info.json").is_file()
    assert first["start"] == [-5, 5, 25, 35, 44]
    again = load_or_build_windows(store, "train", 10)
    assert again["start"] == first["start"] and again.cache_files[0]["filename"].startswith(str(saved))
    assert load_or_build_windows(store, "train", 20, stride=5)["start"] != first["start"]


def test_k_fold_resplit_keeps_subjects_together_and_covers_every_video_once(tmp_path):
    from expr.config import ABAW_CLASSES
    from expr.data.demo import generate_videos
    from expr.data.store import FrameStore, video_name, write_store

    videos = generate_videos(10, seed=3)
    for i, v in enumerate(videos):  # pairs of person tracks sharing one video, as in Aff-Wild2
        v.name = f"clip{i // 2}_{'left' if i % 2 == 0 else 'right'}"
    videos[-1].split = "test"
    path = write_store(tmp_path / "s", videos, {"classes": list(ABAW_CLASSES)})
    seen = []
    for fold in range(3):
        store = FrameStore(path)
        store.use_folds(3, fold)
        val = [store.names[v] for v in store.videos_in("validation")]
        assert val and store.names[store.videos_in("test")[0]] == videos[-1].name  # test videos stay out
        assert all(
            store.names[v] in val
            for v in range(len(store.names))
            if video_name(store.names[v]) in {video_name(n) for n in val} and store.splits[v] != "test"
        )  # a subject never straddles
        seen += val
    assert sorted(seen) == sorted(v.name for v in videos[:-1])  # each pooled video validated exactly once


def test_features_are_memory_mapped_and_columns_longer_than_one_arrow_array_read_the_same(tmp_path, monkeypatch):
    """Stores map their feature columns without copying; a column split over several arrow arrays (Aff-Wild2's
    audio has ~3.4e9 values, over Arrow's 2^31 - 1 per array) gathers exactly like one array."""
    import expr.data.store.columns as store_module
    from expr.config import ABAW_CLASSES
    from expr.data.store import RowChunks

    videos = generate_videos(4, seed=5)
    one = FrameStore(write_store(tmp_path / "one", videos, {"classes": list(ABAW_CLASSES)}))
    assert not one.visual.flags.owndata and not one.visual.flags.writeable  # a view of the memory map
    monkeypatch.setattr(store_module, "MAX_ARROW_VALUES", 768 * 1000 + 5)  # 1000 audio rows per arrow array
    split = FrameStore(write_store(tmp_path / "split", videos, {"classes": list(ABAW_CLASSES)}))
    assert isinstance(split.audio, RowChunks) and len(split.audio.chunks) == -(-len(one.audio) // 1000) > 2
    assert len(split.audio) == len(one.audio) and split.audio.shape == one.audio.shape
    np.testing.assert_array_equal(split.audio[5:2500], one.audio[5:2500])
    ram = FrameStore(split.path, in_memory=True)  # --data.in_memory: private copies, same values
    assert isinstance(ram.audio, np.ndarray) and ram.audio.flags.owndata and ram.visual.flags.writeable
    np.testing.assert_array_equal(ram.audio, one.audio)
    batch = np.arange(len(build_windows(one, "train", 30)))
    a = WindowDataset(one, build_windows(one, "train", 30)).__getitems__(batch)
    b = WindowDataset(split, build_windows(split, "train", 30)).__getitems__(batch)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def write_format1(path, videos, classes):
    """A store in the layout of format 1 (a ``visual`` column in ``frames/``, an ``audio/`` folder)."""
    import json

    import datasets
    import pyarrow as pa

    def fixed(rows, dim):
        flat = np.concatenate([np.asarray(r, np.float16).reshape(-1) for r in rows])
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)

    vis = [v.visual for v in videos]
    aud = [v.audio for v in videos if v.audio is not None]
    n = [len(v.face) for v in videos]
    na = [len(v.audio) if v.audio is not None else 0 for v in videos]
    frames = pa.table({
        "video": pa.array(np.repeat(np.arange(len(videos)), n).astype(np.int32)),
        "visual": fixed(vis, vis[0].shape[1]),
        "face": pa.array(np.concatenate([v.face for v in videos])),
        "label": pa.array(np.concatenate([v.labels for v in videos]).astype(np.int16)),
    })  # fmt: skip
    audio = pa.table({"video": pa.array(np.repeat(np.arange(len(videos)), na).astype(np.int32)),
                      "audio": fixed(aud, aud[0].shape[1])})  # fmt: skip
    datasets.Dataset(frames).save_to_disk(str(path / "frames"))
    datasets.Dataset(audio).save_to_disk(str(path / "audio"))
    datasets.Dataset.from_dict({
        "name": [v.name for v in videos], "split": [v.split for v in videos], "fps": [v.fps for v in videos],
        "num_frames": n, "frame_offset": np.concatenate([[0], np.cumsum(n)[:-1]]).tolist(), "num_audio": na,
        "audio_offset": np.concatenate([[0], np.cumsum(na)[:-1]]).tolist(), "audio_rate": [50.0] * len(videos),
        "audio_start": [v.audio_start for v in videos],
    }).save_to_disk(str(path / "videos"))  # fmt: skip
    header = {"format_version": 1, "visual_dim": int(vis[0].shape[1]), "audio_dim": int(aud[0].shape[1]),
              "classes": classes, "backbones": {"clip": "ViT-B-32", "clip_pretrained": "openai",
                                                "wav2vec2": "facebook/wav2vec2-base"}}  # fmt: skip
    (path / "store.json").write_text(json.dumps(header))
    return path


def test_a_format1_store_reads_as_the_sets_clip_and_wav2vec2(tmp_path):
    """Stores written before feature sets existed still train: their columns are the sets clip and wav2vec2, the
    encoders they record are the sets' specs (so new videos can be added), and they take no new set in place."""
    from expr.data.store import add_sets

    store, a, b = tiny_store(tmp_path)
    old = FrameStore(write_format1(tmp_path / "old", [a, b], ["x", "y", "z"]))
    assert old.visual_sets == ["clip"] and old.audio_set == "wav2vec2"
    np.testing.assert_array_equal(old.visual[:], store.visual[:])
    np.testing.assert_array_equal(old.audio[:], store.audio[:])
    assert old.num_audio.tolist() == store.num_audio.tolist() == [100, 0]
    assert old.feature_sets["clip"]["spec"] == "open_clip:ViT-B-32@openai"
    assert old.feature_sets["wav2vec2"]["spec"] == "hf:facebook/wav2vec2-base"
    batch = WindowDataset(old, build_windows(old, "train", 10)).__getitems__([0, 3])
    same = WindowDataset(store, build_windows(store, "train", 10)).__getitems__([0, 3])
    assert all(torch.equal(batch[k], same[k]) for k in batch)
    with pytest.raises(StoreError, match="format-1 store takes no new feature sets"):
        add_sets(old.path, {"dino": ({"modality": "visual"}, iter([]))})
