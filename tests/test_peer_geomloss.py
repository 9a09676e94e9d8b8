"""GeomLoss's closed forms and invariances (the properties its documentation and examples rely
on), written against hotpath's SamplesLoss: kernel norms of Diracs, Sinkhorn divergence between
Diracs, identical measures, translation and scale behaviour, the blur -> 0 limit (exact OT) and
blur -> inf limit (energy-like), values equal to geomloss where it is installed."""
import math

import numpy as np
import pytest
import torch

import hotpath as hp

D64 = torch.float64


def _dirac(v):
    return torch.tensor([v], dtype=D64)


@pytest.mark.parametrize("blur", [0.1, 0.7, 3.0])
def test_kernel_norms_of_diracs(blur):
    x, y = _dirac([0.1, 0.4, -0.2]), _dirac([0.6, -0.3, 0.5])
    r = (x - y).norm().item()
    # 1/2 k(x,x) + 1/2 k(y,y) - k(x,y)
    assert abs(hp.ot.SamplesLoss("gaussian", blur=blur)(x, y).item() - (1 - math.exp(-r ** 2 / (2 * blur ** 2)))) < 1e-14
    assert abs(hp.ot.SamplesLoss("laplacian", blur=blur)(x, y).item() - (1 - math.exp(-r / blur))) < 1e-14
    assert abs(hp.ot.SamplesLoss("energy", blur=blur)(x, y).item() - r) < 1e-14


def test_energy_distance_closed_form_and_blur_independence():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(13, 2, generator=g, dtype=D64), torch.rand(17, 2, generator=g, dtype=D64)
    d = lambda p, q: (p[:, None] - q[None]).norm(dim=-1)  # noqa: E731
    want = d(x, y).mean() - 0.5 * d(x, x).mean() - 0.5 * d(y, y).mean()
    for blur in (0.01, 1.0, 100.0):
        torch.testing.assert_close(hp.ot.SamplesLoss("energy", blur=blur)(x, y), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("blur", [0.01, 0.5, 5.0])
def test_sinkhorn_divergence_between_diracs(p, blur):
    x, y = _dirac([0.1, 0.2]), _dirac([0.7, -0.1])
    r = (x - y).norm().item()
    want = r ** 2 / 2 if p == 2 else r
    v = hp.ot.SamplesLoss("sinkhorn", p=p, blur=blur)(x, y)
    assert abs(v.item() - want) < 1e-10 * max(1.0, want)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(hp.ot.SamplesLoss("sinkhorn", p=p, blur=blur)(xg, y), [xg])
    want_g = (x - y) if p == 2 else (x - y) / r
    torch.testing.assert_close(gx, want_g, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("loss", ["sinkhorn", "hausdorff", "energy", "gaussian", "laplacian"])
@pytest.mark.parametrize("batched", [False, True])
def test_identical_measures_zero(loss, batched):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(*((3,) if batched else ()), 25, 3, generator=g, dtype=D64)
    v = hp.ot.SamplesLoss(loss, blur=0.05)(x, x.clone())
    assert v.shape == ((3,) if batched else ())
    assert v.abs().max().item() < 1e-10


@pytest.mark.parametrize("reach", [None, 0.5])
def test_translation(reach):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(30, 2, generator=g, dtype=D64)
    y = torch.rand(35, 2, generator=g, dtype=D64)
    t = torch.tensor([3.0, -7.0], dtype=D64)
    # a fixed diameter: the same epsilon schedule for the moved clouds (GeomLoss's default
    # schedule starts at the bounding-box diagonal, which moving one cloud changes)
    L = hp.ot.SamplesLoss("sinkhorn", blur=0.05, reach=reach, diameter=3.0)
    torch.testing.assert_close(L(x + t, y + t), L(x, y), rtol=1e-9, atol=1e-12)
    if reach is None:
        # balanced quadratic OT: moving one measure by s adds <s, mean x - mean y> + |s|^2 / 2 (at the
        # fixed point: the epsilon-scaling iterates start from a non-equivariant initialization)
        s = torch.tensor([0.3, 0.1], dtype=D64)

        def S(p, q):
            return hp.ot.sinkhorn(p, q, blur=0.1, debias=True, max_iter=5000, tol=1e-13).loss

        want = S(x, y) + (s * (x.mean(0) - y.mean(0))).sum() + (s ** 2).sum() / 2
        torch.testing.assert_close(S(x + s, y), want, rtol=1e-9, atol=1e-11)


def test_scaling_of_the_quadratic_cost():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 2, generator=g, dtype=D64)
    y = torch.rand(22, 2, generator=g, dtype=D64)
    lam = 3.0
    torch.testing.assert_close(hp.ot.SamplesLoss(blur=0.05 * lam)(lam * x, lam * y),
                               lam ** 2 * hp.ot.SamplesLoss(blur=0.05)(x, y), rtol=1e-9, atol=1e-12)


def test_blur_to_zero_is_exact_ot():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(4)
    x = torch.rand(15, 2, generator=g, dtype=D64)
    y = torch.rand(15, 2, generator=g, dtype=D64) + 0.5
    C = ((x[:, None] - y[None]) ** 2).sum(-1).numpy() / 2
    w = np.full(15, 1 / 15)
    exact = ot.emd2(w, w, C)
    v = hp.ot.SamplesLoss(blur=1e-3, scaling=0.9)(x, y).item()
    assert abs(v - exact) < 3e-3 * exact
    C1 = np.sqrt(2 * C)
    v1 = hp.ot.SamplesLoss(p=1, blur=1e-4, scaling=0.9)(x, y).item()
    assert abs(v1 - ot.emd2(w, w, C1)) < 2e-3 * ot.emd2(w, w, C1)


def test_blur_to_infinity_is_half_squared_mean_difference():
    # eps -> inf: the debiased divergence tends to the kernel norm of -C, for p = 2
    # |mean x - mean y|^2 / 2
    g = torch.Generator().manual_seed(5)
    x = torch.rand(25, 2, generator=g, dtype=D64)
    y = torch.rand(30, 2, generator=g, dtype=D64) + 0.2
    want = ((x.mean(0) - y.mean(0)) ** 2).sum() / 2
    torch.testing.assert_close(hp.ot.SamplesLoss(blur=1e4)(x, y), want, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(hp.ot.SamplesLoss(blur=1e4)(x.float(), y.float()).double(), want, rtol=1e-4, atol=1e-7)


def test_weights_and_shapes_like_geomloss():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(10, 2, generator=g, dtype=D64)
    y = torch.rand(12, 2, generator=g, dtype=D64)
    a = torch.full((10,), 0.1, dtype=D64)
    b = torch.full((12, 1), 1 / 12, dtype=D64)
    L = hp.ot.SamplesLoss(blur=0.1)
    torch.testing.assert_close(L(a, x, b, y), L(x, y))
    F, G = hp.ot.SamplesLoss(blur=0.1, potentials=True)(a, x, b, y)
    assert F.shape == a.shape and G.shape == b.shape
    with pytest.raises(ValueError):
        L(x)


@pytest.mark.parametrize("loss,p", [("sinkhorn", 1), ("sinkhorn", 2), ("energy", 2), ("gaussian", 2),
                                    ("laplacian", 2)])
def test_values_equal_geomloss(loss, p):
    geomloss = pytest.importorskip("geomloss")
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 40, 3, generator=g, dtype=D64)
    y = torch.rand(2, 45, 3, generator=g, dtype=D64) + 0.2
    ours = hp.ot.SamplesLoss(loss, p=p, blur=0.1)(x, y)
    theirs = geomloss.SamplesLoss(loss, p=p, blur=0.1, backend="tensorized")(x, y)
    # geomloss's tensorized distances are clamped at 1e-4 (p = 1, energy, laplacian)
    exact = loss in ("gaussian",) or (loss == "sinkhorn" and p == 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-9 if exact else 5e-3, atol=1e-12 if exact else 1e-4)


def test_unbalanced_diracs_of_different_mass():
    # reach -> the debiased unbalanced divergence between weighted Diracs at the same point
    # only pays for the mass difference and is >= 0
    x = _dirac([0.0, 0.0])
    for ma, mb in ((1.0, 2.0), (0.5, 0.25)):
        v = hp.ot.SamplesLoss(blur=0.1, reach=0.5)(torch.tensor([ma], dtype=D64), x, torch.tensor([mb], dtype=D64), x)
        assert v.item() > 0
        v0 = hp.ot.SamplesLoss(blur=0.1, reach=0.5)(torch.tensor([ma], dtype=D64), x, torch.tensor([ma], dtype=D64), x)
        assert abs(v0.item()) < 1e-12
