"""`expr predict` on clips made from real photographs (scikit-image's sample images), and the face detector."""

import csv

import numpy as np
import pytest
from mediatree import write_video

from expr.features.faces import TEMPLATE, FaceDetectorError, HaarDetector, face_detector, similarity


def photo(name):
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_the_shipped_detectors_find_the_face_in_a_photograph_and_none_in_face_free_ones(name):
    detector = face_detector(name)
    face = detector.detect(photo("astronaut"))
    assert face is not None
    x, y, w, h = face.box
    # Eileen Collins' face in scikit-image's astronaut.png lies around x 180-270, y 65-160.
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 170 and 60 < w < 160 and abs(face.angle) < 20
    assert detector.detect(photo("coffee")) is None and detector.detect(photo("chelsea")) is None  # a cup, a cat
    crop = face.crop(photo("astronaut"))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8


def test_mtcnn_gives_five_landmarks_in_place_and_aligned_crops_put_them_on_the_template():
    from expr.features.mtcnn import MTCNN

    boxes, scores, points = MTCNN().detect(photo("astronaut"))  # facenet-pytorch's settings: its numbers
    np.testing.assert_allclose(boxes, [[181.05, 62.16, 267.75, 172.05]], atol=0.05)
    np.testing.assert_allclose(points[0, [0, 4]], [[205.01, 101.73], [245.27, 141.86]], atol=0.05)
    face = face_detector("mtcnn").detect(photo("astronaut"))
    (x, y, w, h), marks = face.box, face.landmarks
    assert ((marks >= [x, y]) & (marks <= [x + w, y + h])).all()  # inside the box
    left_eye, right_eye, nose, mouth_left, mouth_right = marks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    matrix = similarity(marks, TEMPLATE)

    def misfit(m):
        return ((np.c_[marks, np.ones(5)] @ m.T - TEMPLATE) ** 2).sum()

    assert np.sqrt(misfit(matrix) / 5) < 5.0  # five points, four degrees of freedom: close, not exact
    for change in (np.diag([1.02, 1.02]), np.array([[1, 0.02], [-0.02, 1]])):  # the least-squares fit
        assert misfit(matrix) < misfit(np.c_[change @ matrix[:, :2], matrix[:, 2]])
    assert misfit(matrix) < misfit(matrix + [[0, 0, 0.5], [0, 0, 0]])


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.radians(17), 0.6, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(similarity(src, src @ rot.T + shift), np.c_[rot, shift], atol=1e-9)


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_an_aligned_crop_undoes_an_in_plane_rotation(name):
    import cv2

    image = photo("astronaut")
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((225, 110), -12, 1.0), (512, 512))
    face = face_detector(name).detect(rotated)
    assert face is not None
    if name == "haar":
        assert 4 < abs(face.angle) < 20  # the eyes give the tilt
        return
    eyes = face.landmarks[1] - face.landmarks[0]
    assert 8 < abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 16  # the landmarks see the tilt
    again = face_detector(name).detect(np.ascontiguousarray(face.crop(rotated, 224)))  # the crop is upright
    eyes = again.landmarks[1] - again.landmarks[0]
    assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < 3


def test_without_mtcnn_weights_auto_falls_back_to_haar_with_a_warning(monkeypatch, caplog):
    import expr.features.mtcnn as mtcnn

    monkeypatch.setattr(mtcnn, "WEIGHTS_PACKAGE", "no_such_package_here")
    with pytest.raises(FaceDetectorError, match="pip install facenet-pytorch==2.5.3"):
        face_detector("mtcnn")
    assert isinstance(face_detector("auto"), HaarDetector)
    assert "falling back to OpenCV's Haar cascade" in caplog.text
    with pytest.raises(FaceDetectorError, match="choose one of auto, mtcnn, haar"):
        face_detector("dlib")


def clip_from_photo(path, name, frames=12, fps=10, audio=True):
    """A short video panning over a photograph (and optionally a tone), written with PyAV."""
    import av

    image = photo(name)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        for i in range(frames):
            frame = np.ascontiguousarray(image[i * 4 : i * 4 + 320, i * 4 : i * 4 + 320])
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in stream.encode():
            c.mux(p)
    if audio:  # mux a tone track by re-writing with the helper's audio path
        tmp = path.with_name("tone_" + path.name)
        write_video(tmp, fps, frames)
        with av.open(str(tmp)) as src_a, av.open(str(path)) as src_v, av.open(str(path) + ".mp4", "w") as out:
            vs = out.add_stream_from_template(src_v.streams.video[0])
            as_ = out.add_stream_from_template(src_a.streams.audio[0])
            for packet in src_v.demux(src_v.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = vs
                    out.mux(packet)
            for packet in src_a.demux(src_a.streams.audio[0]):
                if packet.dts is not None:
                    packet.stream = as_
                    out.mux(packet)
        (path.parent / (path.name + ".mp4")).replace(path)
    return path


@pytest.mark.parametrize("name, audio", [("astronaut", True), ("astronaut", False), ("coffee", True)])
def test_predict_gives_every_frame_a_label_with_missing_streams_masked(small_run, tmp_path, name, audio, caplog):
    from expr.video.predict import predict_video

    video = clip_from_photo(tmp_path / f"{name}.mp4", name, audio=audio)
    result = predict_video(
        video, small_run["run_dir"], tmp_path / "out", clip="random", wav2vec2="random", progress=False
    )
    rows = list(csv.DictReader(open(result["people"][0]["csv"])))
    assert len(rows) == 12 and [int(r["frame"]) for r in rows] == list(range(12))
    assert all(0 <= int(r["label"]) < 8 for r in rows)
    assert all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 1e-3 for r in rows)
    faces = sum(int(r["face"]) for r in rows)
    if name == "astronaut":
        assert faces >= 10  # the face is found in (nearly) every frame
    else:
        assert faces == 0 and any("no face detected" in w for w in result["warnings"])
    assert audio or any("no audio track" in w for w in result["warnings"])
    assert result["people"][0]["png"].read_bytes()[:4] == b"\x89PNG"


def test_a_demo_trained_model_asks_for_backbones(small_run, tmp_path):
    from expr.video.predict import PredictError, predict_video

    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", audio=False)
    with pytest.raises(PredictError, match="--clip and --wav2vec2"):
        predict_video(video, small_run["run_dir"], tmp_path / "out", progress=False)


def test_predict_runs_the_encoders_of_the_feature_sets_the_head_was_trained_on(tmp_path):
    """A head trained on other sets than the paper's (here a timm ViT and a WavLM-shaped model, recorded in the store
    by spec) predicts a raw video with those same encoders, found from the run alone."""
    from mediatree import affwild2_tree

    from expr.cli.prepare import main as prepare
    from expr.config import config_from_argv
    from expr.training.trainer import run
    from expr.video.predict import predict_video

    root = tmp_path / "aw"
    affwild2_tree(root)
    vit = "timm:vit_small_patch14_dinov2@random,img_size=28,depth=1,embed_dim=32,num_heads=2"
    wavlm = "hf:microsoft/wavlm-base-plus@random,num_hidden_layers=1"
    store = tmp_path / "store"
    args = ["affwild2", str(root), "--out", str(store), "--visual", f"vit={vit}", "--audio", f"wavlm={wavlm}"]
    assert prepare([*args, "--no-progress"]) == 0
    train = ["--data.cache", str(store), "--data.window", "10", "--train.epochs", "1", "--train.log_with", "none"]
    train += ["--loss.contrastive_weight", "0", "--train.output_dir", str(tmp_path / "run")]
    cfg, _ = config_from_argv(train)
    run(cfg)
    video = clip_from_photo(tmp_path / "a.mp4", "astronaut")
    result = predict_video(video, tmp_path / "run", tmp_path / "out", progress=False)
    assert len(list(csv.DictReader(open(result["people"][0]["csv"])))) == 12
    features = tmp_path / "out" / "a_features" / "store.json"
    assert '"spec": "' + vit + '"' in features.read_text()


@pytest.mark.slow
def test_predict_takes_an_ensemble_folder_like_a_run(small_run, tmp_path):
    import json

    from expr.video.predict import predict_video

    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", audio=False)
    run = small_run["run_dir"]
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    members = [{"run": run, "weight": 0.5}, {"run": run, "weight": 0.5}]
    info = {"members": members, "smoothing": {"method": "none", "width": 0}}
    (ensemble / "ensemble.json").write_text(json.dumps(info))
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    one = predict_video(video, run, tmp_path / "one", **kw)
    both = predict_video(video, ensemble, tmp_path / "both", **kw)
    assert (tmp_path / "both" / "members" / "01").is_dir()  # each member's own features
    rows = lambda r: list(csv.DictReader(open(r["people"][0]["csv"])))  # noqa: E731
    assert [r["label"] for r in rows(one)] == [r["label"] for r in rows(both)]
    assert all(
        abs(float(a["p_Neutral"]) - float(b["p_Neutral"])) < 2e-4 for a, b in zip(rows(one), rows(both), strict=True)
    )


@pytest.mark.slow
def test_predict_applies_the_runs_calibration(small_run, tmp_path):
    import json
    import shutil

    from expr.video.predict import predict_video

    run = tmp_path / "run"
    shutil.copytree(small_run["run_dir"], run)
    classes = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]
    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", audio=False)
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    plain = predict_video(video, run, tmp_path / "plain", **kw)["people"][0]["labels"]
    target = next(c for c in range(len(classes)) if not (plain == c).all())  # a class the run alone does not give
    offsets = [50.0 if c == target else 0.0 for c in range(len(classes))]
    (run / "calibration.json").write_text(json.dumps({"classes": classes, "offsets": offsets}))
    assert (predict_video(video, run, tmp_path / "cal", **kw)["people"][0]["labels"] == target).all()
    off = predict_video(video, run, tmp_path / "off", overrides={"eval.calibrate": False}, **kw)
    assert (off["people"][0]["labels"] == plain).all()


@pytest.mark.slow
def test_predict_takes_several_videos_and_folders_and_goes_on_past_an_unreadable_one(small_run, tmp_path, capsys):
    from expr.cli.predict import main

    videos = tmp_path / "videos"
    (videos / "day2").mkdir(parents=True)
    clip_from_photo(videos / "a.mp4", "astronaut", frames=8, audio=False)
    (tmp_path / "src").mkdir()  # a clip with audio leaves its helper files beside it
    clip_from_photo(tmp_path / "src" / "b.mp4", "astronaut", frames=8).rename(videos / "day2" / "b.mp4")
    (videos / "day2" / "broken.mp4").write_bytes(b"not a video")
    (videos / "notes.txt").write_text("not a video either, and not one by its name")
    lone = clip_from_photo(tmp_path / "c.mp4", "coffee", frames=8, audio=False)
    common = ["--run", small_run["run_dir"], "--clip", "random", "--wav2vec2", "random", "--device", "cpu",
              "--no-progress"]  # fmt: skip
    assert main([str(videos), str(lone), "--out", str(tmp_path / "out"), *common]) == 1
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == ["a.csv", "b.csv", "c.csv"]
    assert "3 of 4 videos, 24 frames in" in out and "frames/s" in out
    assert "broken.mp4" in err and "notes.txt" not in err
    (videos / "day2" / "broken.mp4").unlink()
    assert main([str(videos), "--out", str(tmp_path / "out2"), *common]) == 0
    clip_from_photo(videos / "day2" / "a.mp4", "astronaut", frames=8, audio=False)
    assert main([str(videos), "--out", str(tmp_path / "out3"), *common]) == 2
    assert "would write the same outputs (a.csv)" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out4"), *common]) == 2
    assert "missing.mp4: no such file or folder" in capsys.readouterr().err


def test_a_stretch_that_cannot_be_decoded_counts_as_frames_without_a_face_with_a_warning(small_run, tmp_path):
    import av

    from expr.video.predict import predict_video

    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", frames=40, audio=False)
    data = bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 800] = np.random.default_rng(0).integers(0, 256, 800, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    result = predict_video(video, small_run["run_dir"], tmp_path / "out", annotate=True, **kw)
    assert any("could not be decoded; their" in w and "count as frames without a face" in w for w in result["warnings"])
    assert not any("variable frame rate" in w for w in result["warnings"])
    rows = list(csv.DictReader(open(result["people"][0]["csv"])))
    assert len(rows) == result["frames"] and [int(r["frame"]) for r in rows] == list(range(len(rows)))
    times = np.array([float(r["time_s"]) for r in rows])
    np.testing.assert_allclose(times, np.arange(len(rows)) / 10, atol=1e-3)  # frame i stays at i / fps (as audio is)
    faces = np.array([r["face"] == "1" for r in rows])
    assert faces[:2].all() and not faces[:10].all()  # the lost frame, early (the face leaves the pan near the end)
    with av.open(str(result["video"])) as out:  # the annotated video: the decodable frames, at their times
        shown = [round(float(f.time), 3) for f in out.decode(video=0)]
    assert 5 < len(shown) < len(rows) and set(shown) <= {round(t, 3) for t in times}


def test_a_variable_frame_rate_gives_each_frame_its_own_time_with_a_warning(small_run, tmp_path):
    from fractions import Fraction

    import av

    from expr.video.predict import predict_video

    times = np.cumsum([0] + [0.04, 0.2] * 10)[:20]  # 25 and 5 frames/s alternating
    path = tmp_path / "vfr.mp4"
    image = photo("astronaut")
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[i : i + 320, i : i + 320]), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for p in stream.encode(frame):
                c.mux(p)
        for p in stream.encode():
            c.mux(p)
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    result = predict_video(path, small_run["run_dir"], tmp_path / "out", annotate=True, **kw)
    assert any("variable frame rate" in w for w in result["warnings"])
    rows = list(csv.DictReader(open(result["people"][0]["csv"])))
    np.testing.assert_allclose([float(r["time_s"]) for r in rows], times, atol=1e-3)
    with av.open(str(result["video"])) as out:  # the annotated video keeps them
        np.testing.assert_allclose([float(f.time) for f in out.decode(video=0)], times, atol=1e-3)


@pytest.mark.slow
def test_predict_writes_every_task_the_run_trained(multi_task_run, tmp_path):
    from expr.data.affwild2 import AU_NAMES
    from expr.video.predict import predict_video

    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", audio=False)
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    (person,) = predict_video(video, multi_task_run["run_dir"], tmp_path / "out", **kw)["people"]
    rows = list(csv.DictReader(open(person["csv"])))
    assert len(rows) == 12 and {"valence", "arousal", *(f"p_{n}" for n in AU_NAMES)} <= set(rows[0])
    va = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    au = np.array([[float(r[f"p_{n}"]) for n in AU_NAMES] for r in rows])
    assert (np.abs(va) <= 1).all() and ((au >= 0) & (au <= 1)).all()
    np.testing.assert_allclose(va, person["va"], atol=1e-4)
    assert person["tasks_png"].read_bytes()[:4] == b"\x89PNG"
