import math

import numpy as np
import pytest
import torch

from expr.losses import class_weights, multi_positive_contrastive, total_loss


def test_contrastive_matches_a_hand_computed_case():
    # Two classes in 2-d; items 0 and 1 share class 0, item 2 is class 1.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scale = torch.tensor(2.0)
    # logits[i, j] = 2 * emb_i . text[labels_j]
    logits = [[2.0, 2.0, 0.0], [0.0, 0.0, 2.0], [1.2, 1.2, 1.6]]
    pos = [[0, 1], [0, 1], [2]]

    def ce(row, positives):
        lse = math.log(sum(math.exp(v) for v in row))
        return sum(-(row[j] - lse) for j in positives) / len(positives)

    v2t = sum(ce(logits[i], pos[i]) for i in range(3)) / 3
    cols = [[logits[i][j] for i in range(3)] for j in range(3)]
    t2v = sum(ce(cols[j], pos[j]) for j in range(3)) / 3
    expected = 0.5 * (v2t + t2v)
    got = multi_positive_contrastive(emb, text, labels, scale)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_same_label_pairs_are_positives():
    # Every item perfectly aligned with its class text: with multi-positive targets, the loss is the entropy floor
    # log(#positives), not the large value an arange target would give by pushing same-label pairs apart.
    text = torch.eye(4)
    labels = torch.tensor([0, 0, 1, 2])
    emb = text[labels]
    loss = multi_positive_contrastive(emb, text, labels, torch.tensor(100.0))
    floor = (2 * math.log(2) + 0 + 0) / 4  # rows of items 0 and 1 each have 2 equal positives
    assert loss.item() == pytest.approx(floor, abs=1e-4)


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
