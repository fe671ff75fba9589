"""Encoders of every family by spec (``FAMILY:MODEL[@WEIGHTS][,key=value]``): small random models of the real classes,
each family's own output convention, views, audio layers, and the errors a user sees."""

import numpy as np
import pytest
import torch
from PIL import Image

from expr.features.encoders import EncoderError, load_audio_encoder, load_image_encoder
from expr.features.spec import EncoderSpec, SpecError, parse_named, parse_spec

TINY_VIT = "timm:vit_small_patch14_dinov2@random,img_size=28,depth=1,embed_dim=32,num_heads=2"
TINY_W2V = (
    "hf:facebook/wav2vec2-base@random,num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64,"
    "conv_dim=[16, 16, 16, 16, 16, 16, 16],num_conv_pos_embeddings=16"
)


def faces(n=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(n)]


@pytest.mark.parametrize(
    "text",
    [
        "open_clip:ViT-B-32@openai",
        "timm:efficientnet_b0@random",
        "hf:facebook/dinov2-base,pool=mean,flip=1,scales=1.0+0.85",
        "hf:microsoft/wavlm-base-plus@/models/wavlm,layer=6-9",
        "timm:vit_small_patch14_dinov2.lvd142m,img_size=112",
    ],
)
def test_spec_round_trip(text):
    assert str(parse_spec(text)) == text
    assert parse_spec(str(parse_spec(text))) == parse_spec(text)


def test_spec_options_mean_what_they_say():
    spec = parse_spec("timm:vit_base@random,flip=1,scales=1.0+0.8,img_size=112,pool=cls", "visual")
    assert spec.random and spec.pool == "cls" and spec.model_kwargs() == {"img_size": 112}
    assert spec.views == ((False, 1.0), (True, 1.0), (False, 0.8), (True, 0.8))
    assert parse_spec("hf:x,layer=3", "audio").layer == (3, 3) and parse_spec("hf:x,layer=2-5").layer == (2, 5)
    assert parse_spec("hf:x", "audio").layer is None and parse_spec("hf:x").views == ((False, 1.0),)
    wavlm = EncoderSpec("hf", "microsoft/wavlm-base-plus")
    assert parse_named("wavlm=hf:microsoft/wavlm-base-plus", "audio") == ("wavlm", wavlm)


@pytest.mark.parametrize(
    "text, modality, message",
    [
        ("ViT-B-32/openai", "visual", "expected FAMILY:MODEL"),
        ("torchvision:resnet50", "visual", "FAMILY one of open_clip, timm, hf"),
        ("timm:resnet50@", "visual", "nothing after '@'"),
        ("timm:resnet50,pool=max", "visual", "pool=max is not one of"),
        ("hf:x,layer=5-2", "audio", "A <= B"),
        ("hf:x,scales=1+big", "visual", "scales are numbers"),
        ("timm:efficientnet_b0", "audio", "audio encoders come from Hugging Face"),
        ("hf:facebook/wav2vec2-base,flip=1", "audio", "'flip' is not for audio"),
        ("hf:facebook/dinov2-base,layer=3", "visual", "'layer' is not for visual"),
        ("hf:x,pool=cls,pool=mean", "visual", "given twice"),
    ],
)
def test_bad_specs_name_the_spec_and_the_fix(text, modality, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_spec(text, modality)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_named_spec_errors():
    with pytest.raises(SpecError, match="expected NAME=SPEC"):
        parse_named("timm:efficientnet_b0", "visual")
    with pytest.raises(SpecError, match="letters, digits"):
        parse_named("my set=timm:efficientnet_b0", "visual")


def test_timm_outputs_follow_timm_and_views_average():
    """pooled = timm's own head pooling (the class token for DINOv2 ViTs), cls = token 0, mean = the patch tokens;
    the same seed gives the same weights; flip averages the mirrored view in."""
    images = faces()
    pooled = load_image_encoder(parse_spec(TINY_VIT))
    again = load_image_encoder(parse_spec(TINY_VIT))
    np.testing.assert_array_equal(pooled.encode(images), again.encode(images))
    model = pooled.model
    batch = pooled.to_batch(images)
    assert batch.shape == (3, 3, 28, 28)  # timm's transform at the model's (overridden) input size
    with torch.no_grad():
        tokens = model.forward_features(batch)
    mean = load_image_encoder(parse_spec(TINY_VIT + ",pool=mean")).encode(images)
    cls = load_image_encoder(parse_spec(TINY_VIT + ",pool=cls")).encode(images)
    np.testing.assert_allclose(cls, tokens[:, 0].numpy(), atol=2e-3)
    np.testing.assert_allclose(mean, tokens[:, model.num_prefix_tokens :].mean(1).numpy(), atol=2e-3)
    np.testing.assert_allclose(pooled.encode(images), model(batch).numpy(), atol=2e-3)
    flip = load_image_encoder(parse_spec(TINY_VIT + ",flip=1")).encode(images)
    mirrored = pooled.encode([img.transpose(Image.FLIP_LEFT_RIGHT) for img in images])
    np.testing.assert_allclose(flip, (pooled.encode(images).astype(np.float32) + mirrored) / 2, atol=2e-3)


def test_cnn_from_timm_and_its_mean_pool():
    enc = load_image_encoder(parse_spec("timm:resnet18@random,pool=mean"))
    feats = enc.encode(faces(2))
    assert feats.shape == (2, 512) and feats.dtype == np.float16 and np.isfinite(feats).all()
    with pytest.raises(SpecError, match="pool=cls needs a transformer"):
        load_image_encoder(parse_spec("timm:resnet18@random,pool=cls"))


def test_hf_vision_from_a_local_folder_matches_the_model(tmp_path):
    """A ``save_pretrained`` folder (weights + config) loads with its weights: pooled is ``pooler_output``."""
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14
    )
    torch.manual_seed(3)
    model = transformers.Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "dino")
    images = faces()
    enc = load_image_encoder(parse_spec(f"hf:{tmp_path / 'dino'}"))
    with torch.no_grad():
        out = model(pixel_values=enc.to_batch(images))
    np.testing.assert_allclose(enc.encode(images), out.pooler_output.numpy(), atol=2e-3)
    mean = load_image_encoder(parse_spec(f"hf:{tmp_path / 'dino'},pool=mean")).encode(images)
    np.testing.assert_allclose(mean, out.last_hidden_state[:, 1:].mean(1).numpy(), atol=2e-3)


def test_open_clip_spec_gives_todays_clip_features():
    from expr.features.backbones import load_clip
    from expr.features.encoders import open_clip_encoder

    images = faces(2)
    model, preprocess, _ = load_clip("ViT-B-32", "random")
    today = open_clip_encoder(model, preprocess).encode(images)
    np.testing.assert_array_equal(load_image_encoder(parse_spec("open_clip:ViT-B-32@random")).encode(images), today)


def test_audio_layers_and_chunking():
    """layer=A-B is the mean of hidden states A..B; chunked encoding of a long track gives the frames of encoding it
    whole (50 per second)."""
    wave = np.random.default_rng(0).standard_normal(16_000 * 2).astype(np.float32)
    whole = load_audio_encoder(parse_spec(TINY_W2V + ",layer=1-2"), chunk_seconds=60)
    chunked = load_audio_encoder(parse_spec(TINY_W2V + ",layer=1-2"), chunk_seconds=0.5, context_seconds=0.5)
    # The samples the 99 frames see (the first conv layer's group norm spans the whole input it is given).
    x = torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7))[None, : 98 * 320 + 400]
    with torch.no_grad():
        states = whole.model(x, output_hidden_states=True).hidden_states
    expected = (states[1][0] + states[2][0]).numpy() / 2
    feats = whole.encode(wave)
    assert feats.shape == (99, 32) and whole.rate == 50.0
    np.testing.assert_allclose(feats, expected, atol=2e-3)
    parts = chunked.encode(wave).astype(np.float32)  # 0.5 s pieces with 0.5 s of context each side
    assert parts.shape == feats.shape and np.corrcoef(parts.ravel(), feats.ravel())[0, 1] > 0.99
    last = load_audio_encoder(parse_spec(TINY_W2V)).encode(wave)
    np.testing.assert_allclose(last, whole.model(x).last_hidden_state[0].detach().numpy(), atol=2e-3)
    with pytest.raises(SpecError, match="layer 7 does not exist"):
        load_audio_encoder(parse_spec(TINY_W2V + ",layer=7")).encode(wave)


@pytest.mark.parametrize("family", ["hubert", "wavlm", "whisper"])
def test_other_speech_encoders_give_50_frames_per_second(family):
    small = {
        "hubert": "hf:facebook/hubert-base-ls960@random,num_hidden_layers=1",
        "wavlm": "hf:microsoft/wavlm-base-plus@random,num_hidden_layers=1",
        "whisper": "hf:openai/whisper-base@random,encoder_layers=1,d_model=32,encoder_attention_heads=2,"
        "encoder_ffn_dim=64",
    }[family]
    enc = load_audio_encoder(parse_spec(small, "audio"), chunk_seconds=1.0, context_seconds=0.5)
    feats = enc.encode(np.random.default_rng(1).standard_normal(16_000 * 2).astype(np.float32))
    assert enc.rate == 50.0 and abs(len(feats) - 100) <= 1 and np.isfinite(feats).all()


def test_unknown_models_and_missing_weights_are_one_line():
    with pytest.raises(EncoderError, match="timm has no model 'efficientnet_b99'") as err:
        load_image_encoder(parse_spec("timm:efficientnet_b99@random"))
    assert "\n" not in str(err.value)
    with pytest.raises(EncoderError, match="weights not found: /nowhere/model.safetensors"):
        load_image_encoder(parse_spec("timm:resnet18@/nowhere/model.safetensors"))
    with pytest.raises(EncoderError, match="folder not found"):
        load_audio_encoder(parse_spec("hf:/nowhere/wavlm"))
    with pytest.raises(EncoderError, match="open_clip:ViT-B-99@random': RuntimeError") as err:
        load_image_encoder(parse_spec("open_clip:ViT-B-99@random"))
    assert "\n" not in str(err.value)
    with pytest.raises(EncoderError, match="random weights need the model's architecture"):
        load_audio_encoder(parse_spec("hf:someone/mystery-model@random"))


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_a_model_folder_with_its_own_code_is_refused_and_its_code_never_runs(tmp_path, modality):
    """A `hf:` folder whose config.json names its own modelling code (auto_map): transformers would ask on the
    terminal whether to run it; expr refuses in one line, and the folder's code never runs."""
    import json

    marker = tmp_path / "ran"
    folder = tmp_path / "model"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "xcustom", "auto_map": auto_map}))
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
    (folder / "configuration_x.py").write_text(code + "class XConfig(PretrainedConfig):\n    model_type = 'xcustom'\n")
    (folder / "modeling_x.py").write_text(code)
    load = load_image_encoder if modality == "visual" else load_audio_encoder
    args = ("cpu", 4) if modality == "visual" else ("cpu",)
    refused = r"never runs code that comes with a model folder \(trust_remote_code=False\)"
    with pytest.raises(EncoderError, match=refused):
        load(parse_spec(f"hf:{folder}", modality), *args)
    with pytest.raises(EncoderError, match="trust_remote_code=False"):  # the same for @random (config only)
        load(parse_spec(f"hf:{folder}@random", modality), *args)
    assert not marker.exists()
