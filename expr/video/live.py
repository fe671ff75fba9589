"""``expr predict SOURCE --run RUN --stream``: a file, camera or network stream (:mod:`expr.video.sources`) through
:class:`~expr.video.stream.StreamPredictor`, one JSON line per frame to standard output or a file, written and
flushed as each frame is decided. Ctrl-C stops the reading; the frames already read are decided and written, so the
output ends complete."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from expr.config import resolve_device
from expr.video.predict import prepare
from expr.video.sources import Source
from expr.video.stream import STREAM, StreamPredictor


def predict_stream(source: str, run, out: str | Path | None = None, clip=None, wav2vec2=None, device: str = "auto",
                   overrides=None, detector="auto", backend: str = "torch", speed: float = 1.0,
                   repeat: int = 1) -> dict:  # fmt: skip
    """Predict ``source`` as it comes (a file played at ``speed`` times its frame rate, 0: as fast as it decodes,
    ``repeat`` times): lines to ``out`` (a file) or standard output. Returns {frames, seconds, latency (a
    :class:`~expr.video.stream.Latency`), interrupted (Ctrl-C, or a reader of standard output gone), failed (the input
    ended with an error), warnings, held (the largest buffers held)}."""
    device = resolve_device(device)
    run, backbones, detector = prepare(run, {**STREAM, **(overrides or {})}, detector, backend, clip, wav2vec2, device)
    src = Source(source, speed, repeat)
    predictor = StreamPredictor(run, backbones, detector, src.fps, src.has_audio, device)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    sink = open(out, "w") if out is not None else sys.stdout
    stop = []

    def interrupt(*_):
        stop.append(True)
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C: Python's own (it stops the deciding too)

    previous = signal.signal(signal.SIGINT, interrupt)
    held: dict[str, int] = {}
    start = time.perf_counter()
    try:
        for event in src.events():
            write(sink, predictor.push(event))
            held = {k: max(v, held.get(k, 0)) for k, v in predictor.held_sizes().items()}
            if stop:
                break
        write(sink, predictor.close())
    except BrokenPipeError:  # the reader of standard output is gone (``| head``): nobody to write for
        stop.append(True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
    finally:
        signal.signal(signal.SIGINT, previous)
        if out is not None:
            sink.close()
    return {"frames": predictor.emitted, "seconds": time.perf_counter() - start, "latency": predictor.latency,
            "interrupted": bool(stop), "failed": src.failed, "warnings": src.warnings, "held": held}  # fmt: skip


def write(sink, lines: list[dict]) -> None:
    for line in lines:
        sink.write(json.dumps(line) + "\n")
    if lines:
        sink.flush()
