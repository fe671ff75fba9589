"""``expr predict --stream``: the lines of a file's stream equal the offline command's CSV (the same rules, stage by
stage), the audio encoded in pieces equals the whole track's encoding, what a stream holds stays bounded however long
it runs, Ctrl-C ends it with every frame read written, and the sources it reads."""

import csv
import json

import numpy as np
import pytest

from tests.test_predict import photo

RANDOM = ["--clip", "random", "--wav2vec2", "random"]
CLASSES = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]


def talking_clip(path, faces, fps=25, audio=True):
    """A 160 x 160 clip: a pan over scikit-image's astronaut where ``faces[i]``, over its coffee cup (no face)
    elsewhere; with ``audio``, a varying tone (AAC, interleaved with the frames as a camera's file is)."""
    import av

    face, cup = photo("astronaut"), photo("coffee")
    rate = 16_000
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 160, 160, "yuv420p"
        a = c.add_stream("aac", rate=rate) if audio else None
        if a is not None:
            a.layout = "mono"
        sent = 0
        for i, has_face in enumerate(faces):
            image = face[30 + i % 9 : 350 + i % 9 : 2, 100:420:2] if has_face else cup[i % 9 : 320 + i % 9 : 2, :320:2]
            for p in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                c.mux(p)
            while a is not None and sent < (i + 1) * rate / fps:
                t = (sent + np.arange(1024)) / rate
                wave = (0.3 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t)).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, sent
                for p in a.encode(frame):
                    c.mux(p)
                sent += 1024
        for stream in (v, a) if a is not None else (v,):
            for p in stream.encode():
                c.mux(p)
    return path


def offline_and_stream(run_dir, video, tmp_path, options, encoders=RANDOM):
    """(the offline CSV's rows, the stream's lines) of ``video`` with the same options (the offline command with
    ``--predict.audio_chunk 0.4 --predict.audio_context 0.2``, as --stream sets them, and one detection frame per
    batch, as a stream detects)."""
    from expr.cli.predict import main

    common = [str(video), "--run", str(run_dir), *encoders, *options]
    assert main([*common, "--out", str(tmp_path / "off"), "--no-progress", "--predict.audio_chunk", "0.4",
                 "--predict.audio_context", "0.2", "--batch", "1"]) == 0  # fmt: skip
    assert main([*common, "--stream", "--speed", "0", "--out", str(tmp_path / "lines.jsonl")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "off" / f"{video.stem}.csv")))
    return rows, [json.loads(line) for line in open(tmp_path / "lines.jsonl")]


def assert_same(rows, lines, classes):
    assert [int(r["frame"]) for r in rows] == [line["frame"] for line in lines] == list(range(len(rows)))
    for row, line in zip(rows, lines, strict=True):
        assert row["time_s"] == f"{line['time']:.3f}" and int(row["face"]) == line["face"]
        assert row["box_x"] == ("" if line["box"] is None else f"{line['box'][0]:.1f}")
        assert int(row["label"]) == line["label"] and row["label_name"] == line["label_name"]
        for c in classes:
            assert abs(float(row[f"p_{c}"]) - line["probs"][c]) <= 1.5e-4, (row["frame"], c)
        for key in ("valence", "arousal"):
            if key in row:
                assert abs(float(row[key]) - line[key]) <= 1.5e-4
        for name, value in line.get("au", {}).items():
            assert abs(float(row[f"p_{name}"]) - value) <= 1.5e-4


def test_a_files_stream_equals_the_offline_csv_with_faces_lost_and_found(small_run, tmp_path):
    faces = [True] * 30 + [False] * 12 + [True] * 25 + [False] * 3 + [True] * 10
    video = talking_clip(tmp_path / "talk.mp4", faces)
    options = ["--realtime", "--eval.smoothing", "mean", "--eval.smoothing_width", "7"]
    rows, lines = offline_and_stream(small_run["run_dir"], video, tmp_path, options)
    assert_same(rows, lines, CLASSES)
    found = [line["face"] for line in lines]
    assert found[:25] == [True] * 25 and not any(found[33:40]) and all(found[48:66])  # the gaps are there


@pytest.mark.slow
def test_a_multi_task_stream_equals_the_offline_csv_every_frame_encoded(multi_task_run, tmp_path):
    # no audio and one crop at a time: each window waits for its frames alone, the last of them included
    video = talking_clip(tmp_path / "mt.mp4", [True] * 40 + [False] * 5 + [True] * 20, audio=False)
    options = ["--eval.va_smoothing", "median", "--eval.va_smoothing_width", "5", "--data.eval_stride", "4",
               "--predict.stream_batch", "1"]  # fmt: skip
    rows, lines = offline_and_stream(multi_task_run["run_dir"], video, tmp_path, options)
    assert "valence" in lines[0] and len(lines[0]["au"]) == 12
    assert_same(rows, lines, CLASSES)


# ---- the audio in pieces


def test_audio_in_pieces_is_the_same_however_it_arrives_and_one_piece_is_the_whole_tracks_encoding():
    from expr.features.audio_stream import AudioStream, encode_in_pieces
    from expr.features.encoding import AudioEncoder
    from tests.test_prepare import small_wav2vec2

    model, normalize = small_wav2vec2()
    encoder = AudioEncoder(model, normalize, chunk_seconds=30.0, context_seconds=2.0)
    wave = np.random.default_rng(0).normal(0, 0.3, 320 * 149 + 400).astype(np.float32)
    whole = encode_in_pieces(encoder, wave, 0.5, 0.25)
    assert whole.shape == encoder.encode(wave).shape
    stream, parts, held = AudioStream(encoder, 0.5, 0.25), [], []
    for a, b in zip([0, 700, 9000, 20_000, 41_000], [700, 9000, 20_000, 41_000, len(wave)], strict=True):
        parts.append(stream.push(wave[a:b]))
        held.append(stream.held)
    parts.append(stream.close())
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert max(held) < 16_000 * (0.5 + 2 * 0.25) + 21_000  # a chunk, its contexts and the last piece pushed
    # one piece holding the whole track (its samples end with its last frame): the whole track normalised at once
    np.testing.assert_array_equal(encode_in_pieces(encoder, wave, 10.0, 2.0), encoder.encode(wave))
    assert not np.array_equal(whole, encoder.encode(wave))  # short pieces, each normalised: not the same features


# ---- the predictor itself, on frames it is given


class Crops:
    """An image encoder whose 512-d features are a crop's mean grey level."""

    dim = 512

    def encode(self, crops):
        return np.stack([np.full(self.dim, np.asarray(c).mean() / 255, np.float16) for c in crops])


class Tone:
    """A wav2vec2-shaped audio encoder (320-sample stride, 400-sample frames, 768-d): each frame its samples' energy."""

    stride, receptive, dim, rate, normalize = 320, 400, 768, 50.0, True

    def num_frames(self, n):
        return 0 if n < self.receptive else (n - self.receptive) // self.stride + 1

    def _hidden(self, piece):
        import torch

        n = self.num_frames(len(piece))
        energy = [np.mean(piece[self.stride * j : self.stride * j + self.receptive] ** 2) for j in range(n)]
        return torch.tensor(energy, dtype=torch.float32)[:, None].expand(n, self.dim)


class Stubs:
    visual_sets, audio_sets = {"clip": None}, {"wav2vec2": None}
    crops, tone = Crops(), Tone()

    def visual(self, name):
        return self.crops

    def audio(self, name=None):
        return self.tone


class Gaps:
    """One face per frame (drifting slowly), none on the frames in ``gaps``; the frame number is in the pixels."""

    def __init__(self, gaps):
        self.gaps = gaps

    def detect_batch(self, frames):
        from expr.features.faces import Face

        out = []
        for f in frames:
            i = int(f[0, 0, 0]) + 256 * int(f[0, 0, 1])
            out.append([] if i in self.gaps else [Face(np.array([10 + (i % 5), 10, 30, 30], float))])
        return out


def feed(run_dir, n, gaps=(), fps=25.0, overrides=None, every=None, audio_until=None, before_close=None):
    """The lines of ``n`` synthetic frames (and a tone, up to frame ``audio_until``) through a StreamPredictor, and
    its largest buffers; ``before_close``: a list that gets the lines written before the end of the input."""
    from expr.runs.run import Run
    from expr.video.sources import Audio, Frame
    from expr.video.stream import STREAM, StreamPredictor

    run = Run.open(run_dir, {**STREAM, **(overrides or {})})
    predictor = StreamPredictor(run, Stubs(), Gaps(set(gaps)), fps, True)
    lines, held = [], []
    rng = np.random.default_rng(0)
    lines += predictor.push(Audio(rng.normal(0, 0.1, 160).astype(np.float32), 0.0))
    for i in range(n):
        rgb = np.full((64, 64, 3), 60 + (i * 7) % 150, np.uint8)
        rgb[0, 0, :2] = i % 256, i // 256
        lines += predictor.push(Frame(i, i / fps, rgb, 0.0))
        if audio_until is None or i < audio_until:
            lines += predictor.push(Audio(rng.normal(0, 0.1, 640).astype(np.float32)))
        if every and i % every == 0:
            held.append(predictor.held_sizes())
    if before_close is not None:
        before_close += lines
    return lines + predictor.close(), held


def test_what_a_stream_holds_stays_bounded_however_long_it_runs(small_run):
    lines, held = feed(small_run["run_dir"], 3000, gaps=range(1000, 1040), every=100, overrides={"predict.fps": 8})
    assert [line["frame"] for line in lines] == list(range(3000))
    late = held[5:]  # from frame 500 on
    for key in held[0]:
        assert max(h[key] for h in late) <= max(h[key] for h in held[:10]), key  # no growth after the first frames
    assert max(h["frames"] for h in held) <= 30 + 2 * 3 + 4  # a window, the stride and the encoding step
    assert max(h["samples"] for h in held) <= 16_000 * (0.4 + 2 * 0.2) + 640


def test_audio_that_stops_is_not_waited_for_beyond_two_seconds(small_run):
    early: list[dict] = []
    lines, held = feed(small_run["run_dir"], 600, every=50, audio_until=100, before_close=early)
    assert [line["frame"] for line in lines] == list(range(600))
    assert len(early) >= 600 - 30 // 2 - 3 - 2 * 25 - 2  # all but the last window's frames and two seconds
    assert max(h["frames"] for h in held) <= 30 + 2 * 25 + 8  # bounded while the audio is missing


def test_a_frame_without_a_face_waits_a_window_at_most_for_the_nearest_face(small_run):
    gap = range(100, 200)  # 100 frames without a face, more than twice the 30-frame window
    lines, _ = feed(small_run["run_dir"], 260, gaps=gap)
    probs = [tuple(line["probs"].values()) for line in lines]
    before, after = probs[99], probs[200]
    assert before != after
    assert all(probs[t] == before for t in range(100, 150))  # nearer the face before: as offline
    assert all(probs[t] == after for t in range(170, 200))  # the face after within a window: as offline
    assert all(probs[t] == before for t in range(150, 170))  # offline: the face after; the stream waited 30 frames
    assert not any(line["face"] for line in lines[100:200]) and all(line["face"] for line in lines[:100])


def test_stream_refuses_what_it_cannot_predict_as_it_comes(small_run, tmp_path):
    from expr.cli.predict import main
    from expr.runs.run import Run
    from expr.video.footage import PredictError
    from expr.video.stream import StreamPredictor

    with pytest.raises(PredictError, match="predict.audio_chunk"):
        StreamPredictor(Run.open(small_run["run_dir"]), Stubs(), Gaps(set()), 25.0, True)
    wide = Stubs()
    wide.crops = Crops()
    wide.crops.dim = 768
    with pytest.raises(PredictError, match="the image features are 768-d but the head expects 512-d"):
        StreamPredictor(Run.open(small_run["run_dir"], {"predict.audio_chunk": 0.4}), wide, Gaps(set()), 25.0, True)
    video = talking_clip(tmp_path / "a.mp4", [True] * 5)
    base = [str(video), "--run", str(small_run["run_dir"]), *RANDOM, "--stream"]
    assert main([*base, "--faces", "all"]) == 2
    assert main([str(video), str(video), *base[1:]]) == 2
    assert main([str(tmp_path / "none.mp4"), *base[1:]]) == 2
    assert main([*base[:-1]]) == 2  # without --stream, --out is required


# ---- sources


def events(source):
    from expr.video.sources import Frame

    frames, audio = [], []
    for event in source.events():
        (frames if isinstance(event, Frame) else audio).append(event)
    return frames, audio


def test_a_network_stream_gives_the_frames_and_audio_of_its_file(tmp_path):
    import functools
    import http.server
    import threading

    from expr.data.media import decode_audio, timed_frames
    from expr.video.sources import Source

    video = talking_clip(tmp_path / "served.mp4", [True] * 20)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = Source(f"http://127.0.0.1:{server.server_address[1]}/served.mp4")
        assert source.live and source.fps == 25.0 and source.has_audio
        frames, audio = events(source)
    finally:
        server.shutdown()
    want = list(timed_frames(video))
    assert [f.index for f in frames] == list(range(20))
    assert [round(f.time, 6) for f in frames] == [round(t, 6) for t, _ in want]
    assert all(np.array_equal(f.rgb, rgb) for f, (_, rgb) in zip(frames, want, strict=True))
    wave, start = decode_audio(video)
    np.testing.assert_array_equal(np.concatenate([a.wave for a in audio]), wave)
    assert audio[0].start == pytest.approx(start) and all(a.start is None for a in audio[1:])


def test_a_file_plays_at_its_own_rate_and_a_replay_goes_on_in_time_and_audio(tmp_path):
    import time

    from expr.data.media import decode_audio
    from expr.video.sources import Source

    video = talking_clip(tmp_path / "clip.mp4", [True] * 10)
    start = time.perf_counter()
    frames, _ = events(Source(str(video), speed=1.0))
    assert time.perf_counter() - start >= 9 / 25  # the last frame comes at its time, not before
    for f in frames:  # each frame's latency counts from when it was due
        assert f.ready - frames[0].ready == pytest.approx(f.time, abs=1e-6)
    frames, audio = events(Source(str(video), speed=0, repeat=3))
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose([f.time for f in frames], np.arange(30) / 25, atol=1e-6)
    wave, start = decode_audio(video)
    total = sum(len(a.wave) for a in audio)
    # each pass's audio starts where its frames start: two passes of 10 frames, then the last pass's whole track
    assert total == round((20 / 25 + start - audio[0].start) * 16_000) + len(wave)


def test_a_missing_camera_or_file_is_named():
    from expr.data.media import MediaError
    from expr.video.sources import Source

    with pytest.raises(MediaError, match="/dev/video9: cannot open"):
        Source("/dev/video9")
    with pytest.raises(MediaError, match="nothere.mp4: no such file, camera"):
        Source("nothere.mp4")


@pytest.mark.slow
def test_ctrl_c_ends_a_stream_with_every_frame_read_written(small_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    video = talking_clip(tmp_path / "long.mp4", [True] * 250)  # 10 s at its own rate
    out = tmp_path / "lines.jsonl"
    cmd = [sys.executable, "-m", "expr", "predict", str(video), "--run", str(small_run["run_dir"]), *RANDOM,
           "--stream", "--out", str(out), "--realtime"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in open(out)]
    assert "stopped by Ctrl-C" in err and f"{len(lines)} frames in" in err
    assert [line["frame"] for line in lines] == list(range(len(lines))) and 5 < len(lines) < 250


def test_an_input_that_fails_midway_ends_the_stream_with_the_frames_read_written(small_run, tmp_path, monkeypatch,
                                                                                  capsys):  # fmt: skip
    """A network stream that drops or a truncated file: PyAV raises while demuxing; the frames read are decided and
    written, a warning names the source, and the command succeeds (the input has ended, as a live one does)."""
    import av

    from expr.cli.predict import main
    from expr.video.sources import Source

    video = talking_clip(tmp_path / "drop.mp4", [True] * 60)
    packets = Source._packets

    def dropping(self, demux):
        def failing():
            for n, packet in enumerate(demux):
                if n == 50:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield packet

        return packets(self, failing())

    monkeypatch.setattr(Source, "_packets", dropping)
    out = tmp_path / "lines.jsonl"
    assert main([str(video), "--run", str(small_run["run_dir"]), *RANDOM, "--stream", "--speed", "0", "--out",
                 str(out), "--realtime"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in open(out)]
    assert 10 < len(lines) < 60 and [line["frame"] for line in lines] == list(range(len(lines)))
    assert "drop.mp4: the input ended with an error (" in err and "the input ended with an error, warned" in err


def test_a_second_ctrl_c_is_pythons_own_and_the_handler_is_restored(small_run, tmp_path, monkeypatch):
    import signal

    from expr.video.live import predict_stream
    from expr.video.sources import Source

    video = talking_clip(tmp_path / "t.mp4", [True] * 5, audio=False)

    def events(self):
        signal.raise_signal(signal.SIGINT)  # the first: the stream stops reading at the next frame
        signal.raise_signal(signal.SIGINT)  # the second: KeyboardInterrupt, as without the stream's handler
        yield from ()

    monkeypatch.setattr(Source, "events", events)
    # Python's own handler, as at a terminal: a suite started in the background inherits SIGINT ignored, and the
    # stream rightly restores whatever it found.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            predict_stream(str(video), small_run["run_dir"], tmp_path / "x.jsonl", "random", "random", "cpu")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # Ignored on entry (a background job): the stream's handler still stops it at the first, then ignored again.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def one_ctrl_c(self):
            signal.raise_signal(signal.SIGINT)
            yield from ()

        monkeypatch.setattr(Source, "events", one_ctrl_c)
        result = predict_stream(str(video), small_run["run_dir"], tmp_path / "y.jsonl", "random", "random", "cpu")
        assert result["interrupted"] and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.slow
def test_a_reader_that_stops_reading_ends_the_stream_quietly(small_run, tmp_path):
    """``expr predict CLIP --stream | head -3``: the stream stops when nobody reads, without a traceback."""
    import subprocess
    import sys

    video = talking_clip(tmp_path / "t.mp4", [True] * 100)
    cmd = [sys.executable, "-m", "expr", "predict", str(video), "--run", str(small_run["run_dir"]), *RANDOM,
           "--stream", "--speed", "0", "--realtime"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert all(json.loads(line)["frame"] == i for i, line in enumerate(first))
    assert "Traceback" not in err and "BrokenPipe" not in err and "frames in" in err
