"""Each objective lowers its loss, and the episodic loss matches a brute-force reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tledge.train.losses import CosFaceHead, LinearHead, prototypical_loss, supcon_loss


def clustered(n_classes=4, per=6, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g)
    x = centers.repeat_interleave(per, 0) + 1.5 * torch.randn(n_classes * per, dim, generator=g)
    y = torch.arange(n_classes).repeat_interleave(per)
    return x, y


def test_prototypical_loss_matches_brute_force():
    x, y = clustered(per=5)
    shot, scale = 2, 10.0
    got = prototypical_loss(x, y, shot, scale)
    z = x.view(4, 5, -1)
    total = 0.0
    for c in range(4):
        for q in range(shot, 5):
            logits = [scale * float(F.normalize(z[c, q], dim=0) @ F.normalize(z[k, :shot].mean(0), dim=0))
                      for k in range(4)]
            total += -logits[c] + np.log(np.sum(np.exp(logits)))
    assert float(got) == pytest.approx(total / (4 * 3), rel=1e-5)


def test_supcon_is_lower_for_separated_classes():
    x, y = clustered()
    tight = F.one_hot(y, 16).float() * 5 + 0.01 * x
    assert float(supcon_loss(tight, y)) < float(supcon_loss(x, y))


@pytest.mark.parametrize("objective", ["ce", "cosface", "proto", "supcon"])
def test_each_objective_lowers_its_loss(objective):
    torch.manual_seed(0)
    x, y = clustered(per=6)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    head = {"ce": LinearHead(8, 4), "cosface": CosFaceHead(8, 4)}.get(objective)
    params = list(net.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.Adam(params, lr=1e-2)

    def loss():
        emb = net(x)
        if head is not None:
            return head.loss(emb, y)
        return prototypical_loss(emb, y, shot=3) if objective == "proto" else supcon_loss(emb, y)

    first = loss().item()
    for _ in range(60):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.6 * first


def test_cosface_margin_penalises_the_true_class():
    head = CosFaceHead(8, 3, scale=10, margin=0.5)
    emb, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    plain = F.cross_entropy(head.logits(emb), y)
    assert head.loss(emb, y).item() > plain.item()
