import subprocess
import sys

import pytest
import torch

from expr.features.backbones import BackboneError, load_clip, prompts, text_embeddings


def test_prompts():
    assert prompts(["Happiness", "Other"], "A face expressing {emotion}") == [
        "A face expressing happiness",
        "A face expressing other",
    ]


@pytest.mark.slow
def test_text_embeddings_through_open_clip_are_seeded_and_cached(expr_cache):
    classes = ["Neutral", "Anger", "Happiness"]
    emb = text_embeddings(classes, "A face expressing {emotion}", "ViT-B-32", "random")
    assert emb.shape == (3, 512)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    cached = list((expr_cache / "text").glob("*.safetensors"))
    assert cached
    # Same weights in a fresh process (seeded random init), bypassing the cache.
    code = (
        "import torch; from expr.features.backbones import load_clip, encode_text, prompts;"
        "m, _, tok = load_clip('ViT-B-32', 'random');"
        "e = encode_text(m, tok, prompts(['Neutral', 'Anger', 'Happiness'], 'A face expressing {emotion}'));"
        "torch.save(e, 'e.pt')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=expr_cache)
    assert torch.allclose(torch.load(expr_cache / "e.pt"), emb, atol=1e-5)


def test_random_clip_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_clip("ViT-B-32", "random")
    assert torch.equal(torch.rand(3), expected)


def test_missing_weights_offline_give_one_actionable_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as err:
        load_clip("ViT-B-32", "openai")
    message = str(err.value)
    assert "\n" not in message and "--clip PATH" in message and "random" in message


def test_missing_local_checkpoint_names_the_path(tmp_path):
    with pytest.raises(BackboneError, match="nothing.bin"):
        load_clip("ViT-B-32", str(tmp_path / "nothing.bin"))
