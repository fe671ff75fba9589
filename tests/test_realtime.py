"""Live prediction's speed choices (``predict.fps``, ``predict.detect_every``, ``predict.detect_scale``): which frames
are encoded and detected, what the frames between get, and that ``expr evaluate`` measures the cost on stored
features by the rule ``expr predict`` applies."""

from types import SimpleNamespace

import numpy as np
import pytest

from expr.data.subset import encoded_frames, fill_between
from expr.features.faces import CROP_SIZE, Face


def test_encoded_frames_take_every_fps_over_rate_th_frame_and_the_last():
    assert encoded_frames(10, 30.0, 0).tolist() == list(range(10))
    assert encoded_frames(10, 30.0, 30.0).tolist() == list(range(10))
    assert encoded_frames(20, 30.0, 8.0).tolist() == [0, 4, 8, 11, 15, 19]  # 3.75 frames apart, rounded
    assert encoded_frames(9, 25.0, 12.5).tolist() == [0, 2, 4, 6, 8]
    assert encoded_frames(10, 25.0, 12.5).tolist() == [0, 2, 4, 6, 8, 9]
    assert encoded_frames(1, 30.0, 8.0).tolist() == [0]


def test_frames_between_encoded_ones_are_interpolated_or_take_the_nearer_face():
    x = np.arange(8 * 2, dtype=np.float16).reshape(8, 2) * 0  # only encoded rows are read
    x[0], x[4], x[7] = [0, 8], [4, 0], [99, 99]
    face = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)  # frame 7 (encoded) has no face
    out, has = fill_between(x, face, np.array([0, 4, 7]))
    np.testing.assert_allclose(out[:5], [[0, 8], [1, 6], [2, 4], [3, 2], [4, 0]])  # both ends have a face
    # 4 -> 7: only 4 has a face; frame 5 is nearer 4 (takes its features), frame 6 nearer 7 (no face)
    assert has.tolist() == [True, True, True, True, True, True, False, False]
    np.testing.assert_array_equal(out[5], [4, 0])
    np.testing.assert_array_equal(out[6:], 0)
    assert out.dtype == np.float16
    same, same_face = fill_between(x, face, np.arange(8))
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(same_face, face)


def test_a_tie_takes_the_earlier_encoded_frame():
    x = np.zeros((3, 1), np.float32)
    x[2] = 5
    _, has = fill_between(x, np.array([False, True, True]), np.array([0, 2]))
    assert has.tolist() == [False, False, True]


def test_the_store_encodes_each_video_at_the_rate_from_its_own_frame_rate(small_store):
    from expr.data.store import FrameStore

    full, sub = FrameStore(small_store), FrameStore(small_store)
    sub.encode_at(6.0)
    rates = {float(f): v for v, f in enumerate(full.fps)}
    assert set(rates) == {25.0, 30.0}  # the demo mixes both: each video at its own rate
    for v in rates.values():
        a, n = int(full.frame_offset[v]), int(full.num_frames[v])
        idx = encoded_frames(n, float(full.fps[v]), 6.0)
        want, face = fill_between(np.asarray(full.visual[a : a + n]), full.face[a : a + n], idx)
        np.testing.assert_array_equal(sub.visual[a : a + n], want)
        np.testing.assert_array_equal(sub.face[a : a + n], face)
        np.testing.assert_array_equal(sub.visual[a + idx], full.visual[a + idx])
    assert not np.array_equal(sub.visual[:], full.visual[:])
    assert sub.split_tag != full.split_tag


def test_predict_fps_is_checked():
    from expr.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="predict.fps"):
        build_config({"predict.fps": -1})
    with pytest.raises(ConfigError, match="predict.fps.*online"):
        build_config({"predict.fps": 8, "data.mode": "online"})
    with pytest.raises(ConfigError, match="predict.detect_scale"):
        build_config({"predict.detect_scale": 1.5})


MARKS = np.array([[5, 6], [15, 6], [10, 11], [6, 16], [14, 16]], float)  # two eyes, a nose, two mouth corners


class Boxes:
    """A detector that finds one face per frame at a known place: x = 2 * frame number (read from the pixels)."""

    def __init__(self):
        self.seen = []

    def detect_batch(self, frames):
        out = []
        for f in frames:
            i = int(f[0, 0, 0])
            self.seen.append((i, f.shape[:2]))
            s = f.shape[1] / 64
            marks = (MARKS + [2 * i, 5]) * s
            out.append([Face(np.array([2 * i, 5, 20, 20], float) * s, landmarks=marks)])
        return out


def frames(n):
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 48, 64, 3)).copy()


def faces_of(every, scale, n=8, batch=3):
    from expr.video.detection import FrameFaces

    det = Boxes()
    ff = FrameFaces(det, "largest", batch, every, scale)
    out = []
    for f in frames(n):
        out += ff.push(f)
    return out + ff.close(), det


def test_every_frame_is_detected_by_default_in_order():
    out, det = faces_of(1, 1.0)
    assert [i for i, _ in out] == list(range(8)) and [i for i, _ in det.seen] == list(range(8))
    assert all(f[0].image.shape == (CROP_SIZE, CROP_SIZE, 3) for _, f in out)


def test_detection_every_nth_frame_interpolates_the_faces_between_and_detects_the_last():
    out, det = faces_of(3, 1.0)
    assert [i for i, _ in det.seen] == [0, 3, 6, 7]
    assert [i for i, _ in out] == list(range(8))
    np.testing.assert_allclose([f[0].box[0] for _, f in out], [2 * i for i in range(8)])  # linear motion recovered
    np.testing.assert_allclose(out[4][1][0].landmarks, MARKS + [8, 5])
    assert out[4][1][0].image is not None


def test_a_downscaled_detection_gives_boxes_in_the_full_frame():
    out, det = faces_of(1, 0.5)
    assert {shape for _, shape in det.seen} == {(24, 32)}
    np.testing.assert_allclose([f[0].box[0] for _, f in out], [2 * i for i in range(8)])


def test_faces_that_do_not_overlap_are_not_interpolated():
    from expr.video.detection import between

    a = [Face(np.array([0, 0, 10, 10], float))]
    b = [Face(np.array([50, 50, 10, 10], float))]
    assert between(a, b, 0.5) == []
    assert len(between(a, [Face(np.array([2, 0, 10, 10], float))], 0.5)) == 1


def test_every_track_is_encoded_at_the_rate_in_one_batch_of_crops():
    from pathlib import Path

    from expr.video.footage import Footage, Person, person_records

    class Images:
        dim, calls = 4, []

        def encode(self, crops):  # each crop's features: its first pixel's value, so offsets show
            self.calls.append(len(crops))
            return np.stack([np.full(self.dim, np.asarray(c)[0, 0, 0], np.float16) for c in crops])

    class Encoders:
        visual_sets, audio_sets, images = {"clip": None}, {"wav2vec2": None}, Images()

        def visual(self, name):
            return self.images

        def audio(self, name):
            return SimpleNamespace(rate=50.0)

    def face(value):
        return Face(np.array([0, 0, 8, 8], float), image=np.full((8, 8, 3), value, np.uint8))

    people = [
        Person("a_face1", 1, 0, [face(i) for i in range(30)]),
        Person("a_face2", 2, 5, [face(100 + i) for i in range(20)]),
    ]
    records = person_records(Footage(Path("a.mp4"), 30.0, np.arange(30) / 30, people, None, []), Encoders(), rate=10.0)
    first, second = encoded_frames(30, 30.0, 10.0), encoded_frames(20, 30.0, 10.0)
    assert Images.calls == [len(first) + len(second)]
    assert [len(r.face) for r in records] == [30, 20] and all(r.face.all() for r in records)
    for record, base, idx in ((records[0], 0, first), (records[1], 100, second)):
        np.testing.assert_array_equal(record.visual["clip"][idx, 0], base + idx)  # each track's own crops


def test_expr_evaluate_measures_predict_fps_beside_the_every_frame_report(small_run, capsys):
    import json
    from pathlib import Path

    from expr.cli.evaluate import main

    run = Path(small_run["run_dir"])
    assert main([str(run)]) == 0
    printed_every = capsys.readouterr().out
    assert main([str(run), "--predict.fps", "5"]) == 0
    printed_subset = capsys.readouterr().out
    every = json.loads((run / "eval" / "validation" / "report.json").read_text())
    subset = json.loads((run / "eval" / "validation-fps5" / "report.json").read_text())
    assert every["predict_fps"] == 0 and subset["predict_fps"] == 5
    assert subset["frames"] == every["frames"] and subset["metrics"]["macro_f1"] != every["metrics"]["macro_f1"]
    # each command prints the report it wrote (not the every-frame one beside it)
    for printed, report, folder in ((printed_every, every, "validation"), (printed_subset, subset, "validation-fps5")):
        assert f"| {report['metrics']['macro_f1']:.4f} |" in printed and f"report: {run / 'eval' / folder}/" in printed


def test_training_refuses_predict_fps(tmp_path):
    from expr.config import ConfigError, build_config
    from expr.training.trainer import run

    with pytest.raises(ConfigError, match="predict.fps is for commands that read a finished run"):
        run(build_config({"predict.fps": 8, "train.output_dir": str(tmp_path / "r")}, preset="demo"))


def test_realtime_is_a_preset_that_an_explicit_option_overrides(monkeypatch, tmp_path):
    import expr.cli.predict as cli
    from tests.test_tracks import clip

    seen = {}

    def fake(videos, run, out, **kw):
        seen.update(kw["overrides"])
        return [], []

    monkeypatch.setattr(cli, "predict_videos", fake)
    argv = [str(clip("carphone_pristine")), "--run", "r", "--out", str(tmp_path), "--realtime", "--predict.fps", "4"]
    cli.main(argv)
    assert seen == {"predict.fps": "4", "predict.detect_every": 3, "predict.detect_scale": 0.5,
                    "predict.precision": "auto"}  # parsed later  # fmt: skip
    seen.clear()
    cli.main(argv[:5])
    assert seen == {}


# ---- the encoders' precision


def small_encoders(monkeypatch):
    """Backbones whose image and audio encoders load as small random CLIP and Wav2Vec2 models (fresh ones each load)."""
    import expr.features.backbones as bb
    from expr.features.encoders import AudioEncoder, open_clip_encoder
    from tests.test_prepare import small_clip, small_wav2vec2

    def image(spec, device, batch_size):
        model, preprocess, _ = small_clip()
        return open_clip_encoder(model, preprocess, spec, batch_size)

    monkeypatch.setattr(bb, "load_image_encoder", image)
    monkeypatch.setattr(bb, "load_audio_encoder", lambda *a: AudioEncoder(*small_wav2vec2(), chunk_seconds=0.5))


@pytest.mark.parametrize(
    "precision,native,runs", [("fp32", True, "fp32"), ("bf16", False, "bf16"), ("auto", True, "bf16"),
                              ("auto", False, "fp32")],
)  # fmt: skip
def test_the_encoders_run_in_the_precision_asked_and_auto_is_bf16_only_where_the_cpu_multiplies_it(
    monkeypatch, precision, native, runs
):
    import torch
    from PIL import Image

    import expr.features.backbones as bb
    from expr.features.backbones import Backbones

    small_encoders(monkeypatch)
    monkeypatch.setattr(bb, "native_bf16", lambda: native)
    ref = Backbones(clip="random", wav2vec2="random", device="cpu")
    got = Backbones(clip="random", wav2vec2="random", device="cpu", precision=precision)
    assert got.run_precision() == runs
    dtype = torch.bfloat16 if runs == "bf16" else torch.float32
    for name in ("clip", "wav2vec2"):
        encoder = got.visual(name) if name == "clip" else got.audio(name)
        assert {p.dtype for p in encoder.model.parameters()} == {dtype}, name
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)) for _ in range(3)]
    wave = rng.normal(0, 0.3, 16_000).astype(np.float32)
    for a, b in ((ref.visual().encode(crops), got.visual().encode(crops)),
                 (ref.audio().encode(wave), got.audio().encode(wave))):  # fmt: skip
        a, b = a.astype(np.float32), b.astype(np.float32)
        assert b.dtype == a.dtype and b.shape == a.shape
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        if runs == "fp32":
            np.testing.assert_array_equal(a, b)
        else:
            assert not np.array_equal(a, b) and cos.min() > 0.99


def test_an_unknown_precision_is_refused_by_name():
    from expr.config import ConfigError
    from expr.features.backbones import Backbones

    with pytest.raises(ConfigError, match=r"predict.precision: 'fp16' is not one of fp32, bf16, auto"):
        Backbones(clip="random", wav2vec2="random", device="cpu", precision="fp16")


def test_predict_loads_the_runs_encoders_in_the_precision_its_options_ask(monkeypatch, small_run, caplog):
    import torch

    import expr.features.backbones as bb
    from expr.video.predict import prepare

    small_encoders(monkeypatch)
    monkeypatch.setattr(bb, "native_bf16", lambda: True)
    caplog.set_level("INFO", logger="expr.video.predict")
    for overrides, dtype in (({}, torch.float32), ({"predict.precision": "auto"}, torch.bfloat16)):
        _, backbones, _ = prepare(small_run["run_dir"], overrides, "auto", "torch", "random", "random", "cpu")
        for encoder in backbones._encoders.values():
            assert next(encoder.model.parameters()).dtype == dtype
    assert "the encoders run in bf16 (predict.precision auto)" in caplog.text
