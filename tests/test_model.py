import pytest
import torch

from expr.config import ModelConfig
from expr.models.fusion import TCN, FusionHead, masked_mean, receptive_field


def make_batch(b=3, t=12, ta=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(b, t, 512, generator=g)
    audio = torch.randn(b, ta, 768, generator=g)
    vmask = torch.ones(b, t, dtype=torch.bool)
    amask = torch.ones(b, ta, dtype=torch.bool)
    vmask[0, 3:6] = False  # a face missing for 3 frames
    vmask[1, 9:] = False  # padding at the end
    amask[2, 15:] = False
    return visual, vmask, audio, amask


def head(**kw):
    torch.manual_seed(0)
    return FusionHead(ModelConfig(**kw), num_classes=8).eval()


@pytest.mark.parametrize("fusion", ["bidirectional", "v2a", "a2v", "none"])
@pytest.mark.parametrize("blocks", [0, 2, 6])
def test_shapes(fusion, blocks):
    out = head(fusion=fusion, tcn_blocks=blocks)(*make_batch())
    assert out.logits.shape == (3, 8)
    assert out.visual_embedding.shape == (3, 512)
    assert torch.allclose(out.visual_embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(out.logits).all()


def test_fusion_modules_follow_the_axis():
    assert head(fusion="v2a").a2v is None and head(fusion="v2a").v2a is not None
    assert head(fusion="a2v").v2a is None and head(fusion="none").a2v is None
    assert len(head(tcn_blocks=0).tcn.blocks) == 0 and len(head().tcn.blocks) == 6


@pytest.mark.parametrize("fusion", ["bidirectional", "v2a", "a2v", "none"])
def test_masked_positions_do_not_change_the_output(fusion):
    model = head(fusion=fusion)
    visual, vmask, audio, amask = make_batch()
    ref = model(visual, vmask, audio, amask)
    visual2, audio2 = visual.clone(), audio.clone()
    visual2[~vmask] = 1e3 * torch.randn_like(visual2[~vmask])
    audio2[~amask] = -1e3
    out = model(visual2, vmask, audio2, amask)
    assert torch.allclose(ref.logits, out.logits, atol=1e-4)
    assert torch.allclose(ref.visual_embedding, out.visual_embedding, atol=1e-5)


@pytest.mark.parametrize("fusion", ["bidirectional", "v2a", "a2v", "none"])
def test_padding_a_window_with_masked_frames_leaves_the_logits_unchanged(fusion):
    # The same window, once as is and once with masked frames appended (as a short video's window is padded) and
    # masked audio frames appended: the padding must be neither attended to nor pooled.
    model = head(fusion=fusion, tcn_blocks=2)
    with torch.no_grad():  # as after training: attention biases are no longer zero (an attended zero key would show)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    visual, vmask, audio, amask = make_batch()
    pad_v, pad_a = torch.randn(3, 7, 512), torch.randn(3, 5, 768)
    padded = (
        torch.cat([visual, pad_v], 1),
        torch.cat([vmask, torch.zeros(3, 7, dtype=torch.bool)], 1),
        torch.cat([audio, pad_a], 1),
        torch.cat([amask, torch.zeros(3, 5, dtype=torch.bool)], 1),
    )
    with torch.no_grad():
        a, b = model(visual, vmask, audio, amask), model(*padded)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.visual_embedding, a.visual_embedding, atol=1e-5, rtol=1e-5)


def test_valid_positions_do_change_the_output():
    model = head()
    visual, vmask, audio, amask = make_batch()
    ref = model(visual, vmask, audio, amask).logits
    audio2 = audio.clone()
    audio2[0, 0] += 5.0
    assert not torch.allclose(ref[0], model(visual, vmask, audio2, amask).logits[0])


@pytest.mark.parametrize("fusion", ["bidirectional", "v2a", "a2v", "none"])
def test_window_without_audio_or_face_is_finite(fusion):
    model = head(fusion=fusion)
    visual, vmask, audio, amask = make_batch()
    amask[1] = False  # no audio at all
    vmask[2] = False  # no face at all
    out = model(visual, vmask, audio, amask)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.visual_embedding).all()
    # The no-audio window's output ignores the audio values entirely.
    audio[1] = 123.0
    assert torch.allclose(out.logits, model(visual, vmask, audio, amask).logits, atol=1e-4)
    # Gradients stay finite too.
    model.train()
    out = model(visual, vmask, audio, amask)
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tcn_is_causal():
    torch.manual_seed(0)
    tcn = TCN(16, blocks=4, kernel=3, dropout=0.0, use_weight_norm=True).eval()
    x = torch.randn(2, 40, 16)
    y = tcn(x)
    x2 = x.clone()
    x2[:, 25:] += torch.randn_like(x2[:, 25:])  # change the future
    y2 = tcn(x2)
    assert torch.allclose(y[:, :25], y2[:, :25], atol=1e-6)
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_tcn_receptive_field():
    cfg = ModelConfig(tcn_blocks=3, tcn_kernel=3, dim=8, visual_dim=8, heads=1)
    rf = receptive_field(cfg)
    assert rf == 1 + 2 * 2 * 7
    torch.manual_seed(0)
    tcn = TCN(8, 3, 3, 0.0, False).eval()
    x = torch.randn(1, 60, 8)
    x2 = x.clone()
    x2[:, 59 - rf] += 10.0  # just outside the receptive field of the last output
    assert torch.allclose(tcn(x)[:, -1], tcn(x2)[:, -1])
    x3 = x.clone()
    x3[:, 59 - rf + 1] += 10.0  # just inside
    assert not torch.allclose(tcn(x)[:, -1], tcn(x3)[:, -1])


def test_masked_mean():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, m).flatten().tolist() == [2.0, 0.0]


def test_mlp_has_three_linear_layers_and_dims():
    model = head()
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and linears[0].in_features == 1024 and linears[-1].out_features == 8
    adapter = model.audio_adapter
    assert isinstance(adapter[0], torch.nn.Linear) and adapter[0].in_features == 768 and adapter[0].out_features == 512
    assert [type(m).__name__ for m in adapter] == ["Linear", "LayerNorm", "ReLU", "Dropout"]
    assert model.v2a.attn.num_heads == 8


def test_single_modality_ignores_the_other_stream():
    visual, vmask, audio, amask = make_batch()
    v_only, a_only = head(modalities="visual"), head(modalities="audio")
    ref_v, ref_a = v_only(visual, vmask, audio, amask).logits, a_only(visual, vmask, audio, amask).logits
    assert torch.allclose(ref_v, v_only(visual, vmask, audio * 7 + 1, amask).logits, atol=1e-5)
    assert torch.allclose(ref_a, a_only(visual * 7 + 1, vmask, audio, amask).logits, atol=1e-5)
    assert not torch.allclose(ref_v, v_only(visual * 7 + 1, vmask, audio, amask).logits)


@pytest.mark.parametrize("train", [False, True])
def test_cross_attention_computes_what_multihead_attention_does(train):
    """CrossAttention's spelled-out attention (its ONNX export, where the key length stays dynamic) computes what
    nn.MultiheadAttention does: same outputs, and in training the same dropout draws."""
    from expr.models.fusion import CrossAttention

    torch.manual_seed(0)
    m = CrossAttention(64, 8, 0.2).train(train)
    q, kv = torch.randn(3, 7, 64), torch.randn(3, 11, 64)
    mask = torch.rand(3, 11) > 0.4
    mask[2] = False
    empty = ~mask.any(1)
    padding = torch.cat([~mask[:, :1] & ~empty[:, None], ~mask[:, 1:]], 1)
    torch.manual_seed(1)
    want, _ = m.attn(q, kv, kv, key_padding_mask=padding, need_weights=False)
    want = m.norm(q + want.masked_fill(empty[:, None, None], 0.0))
    torch.manual_seed(1)
    m.spelled_out = True  # as while exporting to ONNX
    torch.testing.assert_close(m(q, kv, mask), want, atol=1e-6, rtol=0)
