"""NT-Xent and the CLIP2Point loss against explicit-loop references.
"""

from __future__ import annotations

import math

import pytest
import torch

from c2p.losses import CLIP2PointLoss, NTXentLoss


def reference_ntxent(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """SimCLR NT-Xent written out: 2N anchors, positive = partner, 2N-1 candidates."""
    a = [x / x.norm() for x in a.double()]
    b = [x / x.norm() for x in b.double()]
    z, n = a + b, len(a)
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -(float(z[i] @ z[pos]) / t - math.log(denom))
    return total / (2 * n)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.07), (5, 8, 0.07), (7, 4, 0.5)])
def test_ntxent_equals_reference(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 3.0  # scale: normalised inside
    assert NTXentLoss(t)(a, b).item() == pytest.approx(reference_ntxent(a, b, t), rel=1e-5, abs=1e-5)


def test_ntxent_perfect_pairs_lower_than_random():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    loss = NTXentLoss()
    assert loss(a, a + 0.01 * torch.randn(16, 32, generator=g)) < loss(a, torch.randn(16, 32, generator=g))


def test_ntxent_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 3\)"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


def test_clip2point_loss_formula_and_gradients():
    g = torch.Generator().manual_seed(1)
    d1, d2, img = (torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(3))
    crit = CLIP2PointLoss(0.07, intra=True)
    with torch.no_grad():
        crit.w.fill_(1.5)
    out = crit(d1, d2, img)
    cross = reference_ntxent(((d1 + d2) / 2).detach(), img.detach(), 0.07)
    intra = reference_ntxent(d1.detach(), d2.detach(), 0.07)
    assert out["loss_cross"].item() == pytest.approx(cross, rel=1e-5)
    assert out["loss_intra"].item() == pytest.approx(intra, rel=1e-5)
    assert out["loss"].item() == pytest.approx(cross + intra / 1.5**2 + math.log(2.5), rel=1e-5)
    assert out["w"].item() == pytest.approx(1.5)
    out["loss"].backward()
    assert d1.grad.abs().sum() > 0 and d2.grad.abs().sum() > 0
    assert img.grad is None  # the image tower is frozen: no gradient into its features
    # dL/dw = -2 L_intra / w^3 + 1 / (w + 1)
    assert crit.w.grad.item() == pytest.approx(-2 * intra / 1.5**3 + 1 / 2.5, rel=1e-4)


def test_clip2point_loss_without_intra_is_cross_only():
    g = torch.Generator().manual_seed(2)
    d1, d2, img = (torch.randn(5, 8, generator=g, requires_grad=True) for _ in range(3))
    crit = CLIP2PointLoss(0.07, intra=False)
    out = crit(d1, d2, img)
    assert out["loss"].item() == pytest.approx(out["loss_cross"].item())
    assert out["loss_intra"].item() == pytest.approx(reference_ntxent(d1.detach(), d2.detach(), 0.07), rel=1e-5)
    out["loss"].backward()
    assert not crit.w.requires_grad and crit.w.grad is None
    assert d1.grad.abs().sum() > 0


