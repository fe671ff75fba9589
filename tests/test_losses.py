import math

import numpy as np
import pytest
import torch

from expr.training.losses import class_weights, text_contrastive, total_loss


def test_contrastive_matches_a_hand_computed_case():
    # Two classes in 2-d; items 0 and 1 share class 0, item 2 is class 1.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scale = torch.tensor(2.0)
    # logits[i, j] = 2 * emb_i . text[labels_j]; CLIP targets: row i and column i belong to item i.
    logits = [[2.0, 2.0, 0.0], [0.0, 0.0, 2.0], [1.2, 1.2, 1.6]]

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    v2t = sum(ce(logits[i], i) for i in range(3)) / 3
    t2v = sum(ce([logits[i][j] for i in range(3)], j) for j in range(3)) / 3
    got = text_contrastive(emb, text, labels, scale)
    assert got.item() == pytest.approx(0.5 * (v2t + t2v), rel=1e-5)


def _soft_multi_positive(emb, text, labels, scale):
    """Every same-label item a positive, target uniform over them (SupCon-style soft targets), both directions."""
    logits = scale * emb @ torch.nn.functional.normalize(text, dim=-1)[labels].t()
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    v2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2v = -(targets * logits.t().log_softmax(1)).sum(1).mean()
    return 0.5 * (v2t + t2v)


@pytest.mark.parametrize("seed", range(3))
def test_same_label_items_share_a_prompt_so_soft_positives_change_nothing(seed):
    # The logits compare each item with its own label's prompt, so same-label columns are identical: spreading the
    # target over them (multi-positive) gives exactly the CLIP arange loss and gradient.
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1).requires_grad_()
    text, labels = torch.randn(8, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
    ours = text_contrastive(emb, text, labels, torch.tensor(10.0))
    (grad,) = torch.autograd.grad(ours, emb)
    soft = _soft_multi_positive(emb, text, labels, torch.tensor(10.0))
    (soft_grad,) = torch.autograd.grad(soft, emb)
    assert ours.item() == pytest.approx(soft.item(), rel=1e-5)
    torch.testing.assert_close(grad, soft_grad)


def test_contrastive_normalises_the_text_embeddings():
    # CLIP text embeddings are not unit length as stored; the loss compares directions only.
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    text, labels = torch.randn(4, 16, generator=g) * 7.0, torch.tensor([0, 1, 1, 2, 3, 0])
    unit = torch.nn.functional.normalize(text, dim=-1)
    scaled = text_contrastive(emb, text, labels, torch.tensor(5.0))
    assert scaled.item() == pytest.approx(text_contrastive(emb, unit, labels, torch.tensor(5.0)).item(), rel=1e-6)


def test_windows_without_a_face_stay_out_of_the_contrastive_term():
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1).requires_grad_()
    text, labels = torch.randn(3, 8, generator=g), torch.tensor([0, 1, 2, 1, 0])
    has_face = torch.tensor([True, False, True, True, False])
    scale = torch.tensor(10.0)
    masked = text_contrastive(emb, text, labels, scale, has_face)
    assert masked.item() == pytest.approx(text_contrastive(emb[has_face], text, labels[has_face], scale).item())
    (grad,) = torch.autograd.grad(masked, emb)
    assert grad[~has_face].abs().sum() == 0
    none = text_contrastive(emb, text, labels, scale, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and torch.isfinite(torch.autograd.grad(none, emb)[0]).all()
    parts = total_loss(
        torch.randn(5, 3), emb, scale, labels, text, None, 0.1, has_face=torch.zeros(5, dtype=torch.bool)
    )
    assert parts["loss_con"].item() == 0.0 and torch.isfinite(parts["loss"])


def test_class_weights_inverse_frequency():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1 + [-1] * 5)
    w = class_weights(labels, 4, "inverse")
    assert w[3] == 0  # absent class
    assert w[0] / w[2] == pytest.approx(1 / 6) and w[1] / w[2] == pytest.approx(1 / 3)
    counts = np.array([6, 3, 1, 0])
    assert (w.numpy() * counts).sum() / counts.sum() == pytest.approx(1.0)  # mean weight per sample is 1


@pytest.mark.parametrize("scheme", ["sqrt_inverse", "effective", "none"])
def test_other_weight_schemes_order_classes(scheme):
    w = class_weights(np.array([0] * 50 + [1] * 5), 2, scheme)
    assert (w[1] > w[0]) if scheme != "none" else (w[0] == w[1] == 1)


def test_total_loss_combines_with_lambda():
    torch.manual_seed(0)
    logits, emb = torch.randn(6, 8), torch.nn.functional.normalize(torch.randn(6, 512), dim=-1)
    labels, text, scale = torch.tensor([0, 1, 1, 4, 4, 4]), torch.randn(8, 512), torch.tensor(10.0)
    w = torch.rand(8) + 0.5
    parts = total_loss(logits, emb, scale, labels, text, w, 0.1)
    assert parts["loss"].item() == pytest.approx((parts["loss_cls"] + 0.1 * parts["loss_con"]).item())
    expected_cls = torch.nn.functional.cross_entropy(logits, labels, weight=w)
    assert parts["loss_cls"].item() == pytest.approx(expected_cls.item())
    assert "loss_con" not in total_loss(logits, emb, scale, labels, text, w, 0.0)


def test_the_prompts_clip_is_named_or_found_and_its_absence_is_an_error_only_when_needed():
    """loss.text_set picks an open_clip set; by default the first among the chosen visual sets, else the store's;
    a store without any CLIP is an error naming the fix when the contrastive loss is on, zeros when it is off."""
    from types import SimpleNamespace

    from expr.config import ConfigError, build_config
    from expr.training.criterion import prompt_embeddings, text_source

    clip = {"modality": "visual", "family": "open_clip", "model": "ViT-B-32", "weights": "random"}
    big = {"modality": "visual", "family": "open_clip", "model": "ViT-L-14", "weights": "laion2b_s32b_b82k"}
    dino = {"modality": "visual", "family": "timm", "model": "vit_large_patch14_dinov2.lvd142m"}

    def store(sets, chosen):
        return SimpleNamespace(path="cache/x", feature_sets=sets, visual_sets=chosen, meta={})

    cfg = build_config({"data.cache": "cache/x"})
    assert text_source(store({"clip": clip, "dino": dino}, ["dino"]), cfg) == ("clip", "ViT-B-32", "random")
    assert text_source(store({"clip": clip, "big": big}, ["big"]), cfg) == ("big", "ViT-L-14", "laion2b_s32b_b82k")
    named = build_config({"data.cache": "cache/x", "loss.text_set": "clip"})
    assert text_source(store({"clip": clip, "big": big}, ["big"]), named)[0] == "clip"
    with pytest.raises(ConfigError, match="no open_clip set 'clip' \\(its open_clip sets: none\\)"):
        text_source(store({"dino": dino}, ["dino"]), named)
    with pytest.raises(ConfigError, match="--loss.contrastive_weight 0"):
        prompt_embeddings(store({"dino": dino}, ["dino"]), cfg)
    off = build_config({"data.cache": "cache/x", "loss.contrastive_weight": 0.0})
    assert prompt_embeddings(store({"dino": dino}, ["dino"]), off).shape == (8, 512)


def test_a_window_with_a_face_in_some_of_its_frames_enters_the_contrastive_term():
    from types import SimpleNamespace

    from expr.config import Config
    from expr.training.criterion import Criterion
    from expr.training.losses import text_contrastive

    g = torch.Generator().manual_seed(2)
    emb = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    text, labels = torch.randn(8, 8, generator=g), torch.tensor([0, 1, 2])
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])  # some, none, all
    out = SimpleNamespace(logits=torch.randn(3, 8, generator=g), visual_embedding=emb, logit_scale=torch.tensor(10.0))
    cfg = Config()
    cfg.loss.contrastive_weight = 1.0
    parts = Criterion(cfg, text, torch.ones(8))(out, {"label": labels, "visual_mask": mask})
    expected = text_contrastive(emb[[0, 2]], text, labels[[0, 2]], torch.tensor(10.0))
    assert parts["loss_con"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_contrastive_temperature_is_the_exponential_of_the_learned_log_scale():
    import math

    from expr.config import ModelConfig
    from expr.models.fusion import FusionHead

    cfg = ModelConfig(tcn_blocks=1, dim=16, heads=2, visual_dim=4, audio_dim=4)
    head = FusionHead(cfg, 8)
    assert head(*_inputs()).logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-3)  # CLIP's initial temperature
    with torch.no_grad():
        head.logit_scale.fill_(math.log(20.0))
    assert head(*_inputs()).logit_scale.item() == pytest.approx(20.0, rel=1e-5)


def _inputs():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 5, 4, generator=g), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 7, 4, generator=g),
            torch.ones(2, 7, dtype=torch.bool))  # fmt: skip


def test_uncertainty_weighting_weighs_a_task_with_noisier_targets_less():
    """Kendall et al.'s learned weights, trained on a small head: with valence-arousal targets that are pure noise
    (drawn anew every step) the learned VA weight ends well below its weight when the targets follow the input, while
    the other tasks' weights stay put; with fixed balancing nothing is learned."""
    from expr.config import build_config
    from expr.models.fusion import FusionHead
    from expr.training.criterion import Criterion

    def learned(noisy: bool, balance: str = "uncertainty") -> dict[str, float]:
        torch.manual_seed(0)
        cfg = build_config({"train.tasks": ["expr", "va", "au"], "loss.task_balance": balance, "model.dim": 16,
                            "model.heads": 2, "model.tcn_blocks": 1, "model.visual_dim": 12, "model.audio_dim": 4,
                            "model.text_dim": 8, "model.mlp_hidden": [16]})  # fmt: skip
        model = FusionHead(cfg.model, 8, cfg.train.tasks, balance == "uncertainty")
        criterion = Criterion(cfg, torch.nn.functional.normalize(torch.randn(8, 8), dim=-1), torch.ones(8),
                              torch.ones(12))  # fmt: skip
        g = torch.Generator().manual_seed(1)
        visual = torch.randn(64, 4, 12, generator=g)
        batch = {"label": visual[:, 0, :8].argmax(1), "visual_mask": torch.ones(64, 4, dtype=torch.bool),
                 "au": (visual[:, 0] > 0).long()}  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            batch["va"] = torch.rand(64, 2, generator=g) * 2 - 1 if noisy else torch.tanh(visual[:, 0, 8:10])
            out = model(visual, torch.ones(64, 4), torch.zeros(64, 2, 4), torch.ones(64, 2))
            losses = criterion(out, batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
        if balance == "fixed":
            assert not any(k.startswith("weight_") for k in losses) and model.task_log_vars is None
            return {}
        return {t: float(losses[f"weight_{t}"]) for t in ("expr", "va", "au")}

    clean, noisy = learned(False), learned(True)
    assert noisy["va"] < 0.6 * clean["va"], (clean, noisy)
    for task in ("expr", "au"):
        assert noisy[task] == pytest.approx(clean[task], rel=0.3), (task, clean, noisy)
    learned(True, "fixed")


def test_uncertainty_weighting_leaves_a_task_without_targets_alone():
    """A batch whose windows have no valence-arousal target adds no VA term: the VA log-variance gets a zero gradient
    (it stays in the graph for DDP) while the others move."""
    from expr.config import build_config
    from expr.models.fusion import FusionHead
    from expr.training.criterion import Criterion

    cfg = build_config({"train.tasks": ["expr", "va", "au"], "loss.task_balance": "uncertainty", "model.dim": 16,
                        "model.heads": 2, "model.tcn_blocks": 1, "model.visual_dim": 12, "model.audio_dim": 4,
                        "model.text_dim": 8, "model.mlp_hidden": [16]})  # fmt: skip
    model = FusionHead(cfg.model, 8, cfg.train.tasks, True)
    criterion = Criterion(cfg, torch.nn.functional.normalize(torch.randn(8, 8), dim=-1), torch.ones(8), torch.ones(12))
    visual = torch.randn(8, 4, 12)
    batch = {"label": torch.arange(8), "visual_mask": torch.ones(8, 4, dtype=torch.bool),
             "va": torch.full((8, 2), float("nan")), "au": torch.randint(0, 2, (8, 12))}  # fmt: skip
    losses = criterion(model(visual, torch.ones(8, 4), torch.zeros(8, 2, 4), torch.ones(8, 2)), batch)
    losses["loss"].backward()
    grad = model.task_log_vars.grad
    assert grad[1] == 0 and grad[0] != 0 and grad[2] != 0 and "weight_va" not in losses
