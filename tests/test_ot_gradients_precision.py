"""Sinkhorn family: gradients that are the derivative of the returned value (autodiff /
envelope), double backward, float32 with a large blur / reach / eps, near-coincident clouds,
errors that name the argument, POT / GeomLoss drop-in call forms."""
import math
import warnings

import numpy as np
import pytest
import torch

import hotpath as hp

D64 = torch.float64


def _fd(fun, t, direction, h=1e-6):
    return (fun(t + h * direction) - fun(t - h * direction)) / (2 * h)


def _problem(n=8, m=8, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=dtype) + 0.2
    b = torch.rand(m, generator=g, dtype=dtype) + 0.2
    M = torch.rand(n, m, generator=g, dtype=dtype)
    return a / a.sum(), b / b.sum(), M


# ---------------------------------------------------------------- (2) gradient of the returned value
def test_sinkhorn2_gradient_is_the_derivative_of_its_value():
    """Before: the gradient was the plan P (envelope), 0.0099 where the value's derivative is -0.0020."""
    a, b, M = _problem()
    reg = 0.1
    Mg = M.clone().requires_grad_()
    (g,) = torch.autograd.grad(hp.ot.sinkhorn2(a, b, Mg, reg, stopThr=1e-13, numItermax=5000), [Mg])
    # finite differences of hotpath's own value
    for (i, j) in [(0, 0), (3, 5), (7, 1)]:
        E = torch.zeros_like(M)
        E[i, j] = 1
        fd = _fd(lambda t: hp.ot.sinkhorn2(a, b, t, reg, stopThr=1e-13, numItermax=5000), M, E)
        assert abs(g[i, j].item() - fd.item()) < 1e-7
    # the plan (envelope gradient) is far from it
    P = hp.ot.sinkhorn_plan(a, b, M, reg, stopThr=1e-13, numItermax=5000)
    assert (g - P).abs().max() > 1e-3


def test_sinkhorn2_gradient_matches_pot_autograd():
    ot = pytest.importorskip("ot")
    a, b, M = _problem(seed=3)
    ag, bg, Mg = (t.clone().requires_grad_() for t in (a, b, M))
    v = ot.sinkhorn2(ag, bg, Mg, 0.1, method="sinkhorn_log", numItermax=5000, stopThr=1e-13)
    ga0, gb0, gM0 = torch.autograd.grad(v, [ag, bg, Mg])
    ah, bh, Mh = (t.clone().requires_grad_() for t in (a, b, M))
    w = hp.ot.sinkhorn2(ah, bh, Mh, 0.1, numItermax=5000, stopThr=1e-13)
    ga, gb, gM = torch.autograd.grad(w, [ah, bh, Mh])
    torch.testing.assert_close(w, v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gM, gM0, rtol=1e-8, atol=1e-10)
    # balanced marginals: the weight gradients are defined up to a constant
    torch.testing.assert_close(ga - ga.mean(), ga0 - ga0.mean(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gb - gb.mean(), gb0 - gb0.mean(), rtol=1e-7, atol=1e-9)


def test_sinkhorn2_envelope_option_is_the_plan():
    a, b, M = _problem(seed=4)
    Mg = M.clone().requires_grad_()
    (g,) = torch.autograd.grad(hp.ot.sinkhorn2(a, b, Mg, 0.2, grad="envelope", stopThr=1e-12), [Mg])
    P = hp.ot.sinkhorn_plan(a, b, M, 0.2, stopThr=1e-12)
    torch.testing.assert_close(g, P, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="grad"):
        hp.ot.sinkhorn2(a, b, M, 0.2, grad="unrolled")


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_sinkhorn2_autodiff_batched_zero_weights_odd_sizes(dtype):
    g = torch.Generator().manual_seed(5)
    B, n, m = 3, 5, 9
    M = torch.rand(B, n, m, generator=g, dtype=D64)
    a = torch.rand(B, n, generator=g, dtype=D64)
    b = torch.rand(B, m, generator=g, dtype=D64)
    a[1, 2] = 0
    b[2, :4] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)

    def L(t):
        return hp.ot.sinkhorn2(a.to(dtype), b.to(dtype), t, 0.3, numItermax=3000, stopThr=1e-12).sum()

    Mg = M.to(dtype).clone().requires_grad_()
    (gM,) = torch.autograd.grad(L(Mg), [Mg])
    assert torch.isfinite(gM).all()
    assert (gM[1, 2] == 0).all() and (gM[2, :, :4] == 0).all()  # zero weights: no transport, no gradient
    if dtype == D64:
        d = torch.randn_like(M)
        torch.testing.assert_close((gM * d).sum(), _fd(L, M, d), rtol=1e-6, atol=1e-9)
    else:
        Mg64 = M.clone().requires_grad_()
        (g64,) = torch.autograd.grad(hp.ot.sinkhorn2(a, b, Mg64, 0.3, numItermax=3000, stopThr=1e-12).sum(), [Mg64])
        torch.testing.assert_close(gM.double(), g64, rtol=1e-3, atol=1e-5)


def test_sinkhorn_plan_gradient_vs_finite_differences():
    a, b, M = _problem(5, 7, seed=6)
    W = torch.randn(5, 7, dtype=D64)

    def L(t):
        return (hp.ot.sinkhorn_plan(a, b, t, 0.15, stopThr=1e-13, numItermax=5000) * W).sum()

    Mg = M.clone().requires_grad_()
    (g,) = torch.autograd.grad(L(Mg), [Mg])
    d = torch.randn_like(M)
    torch.testing.assert_close((g * d).sum(), _fd(L, M, d), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reach", [None, 0.7])
def test_sinkhorn_dense_envelope_is_exact_and_equals_autodiff(reach):
    a, b, M = _problem(6, 9, seed=7)
    grads = []
    for grad in ("envelope", "autodiff"):
        ts = [t.clone().requires_grad_() for t in (M, a, b)]
        r = hp.ot.sinkhorn_dense(ts[0], ts[1], ts[2], eps=0.1, reach=reach, max_iter=5000, tol=1e-14, grad=grad)
        grads.append(torch.autograd.grad(r.loss, ts))
    gM, ga, gb = grads[0]
    torch.testing.assert_close(gM, grads[1][0], rtol=1e-7, atol=1e-10)
    if reach is None:  # up to a constant (balanced)
        torch.testing.assert_close(ga - ga.mean(), grads[1][1] - grads[1][1].mean(), rtol=1e-6, atol=1e-9)
    else:
        torch.testing.assert_close(ga, grads[1][1], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(gb, grads[1][2], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- (3) double backward
def _hvp_vs_fd(L, M, tol):
    Mg = M.clone().requires_grad_()
    (g,) = torch.autograd.grad(L(Mg), [Mg], create_graph=True)
    assert g.requires_grad, "the gradient came back detached"
    d = torch.randn_like(M)
    (hv,) = torch.autograd.grad((g * d).sum(), [Mg])

    def grad_at(t):
        tg = t.clone().requires_grad_()
        return torch.autograd.grad(L(tg), [tg])[0]

    fd = (grad_at(M + 1e-6 * d) - grad_at(M - 1e-6 * d)) / 2e-6
    torch.testing.assert_close(hv, fd, rtol=tol, atol=tol)


def test_sinkhorn2_double_backward_exact():
    a, b, M = _problem(6, 7, seed=8)
    _hvp_vs_fd(lambda t: hp.ot.sinkhorn2(a, b, t, 0.2, numItermax=5000, stopThr=1e-13), M, 1e-6)


@pytest.mark.parametrize("reach", [None, 0.5])
def test_sinkhorn_dense_double_backward_exact(reach):
    a, b, M = _problem(5, 6, seed=9)
    _hvp_vs_fd(lambda t: hp.ot.sinkhorn_dense(t, a, b, eps=0.2, reach=reach, max_iter=5000, tol=1e-14).loss, M, 1e-6)


def test_sinkhorn2_envelope_double_backward_is_the_derivative_of_the_plan():
    a, b, M = _problem(5, 6, seed=10)
    Mg = M.clone().requires_grad_()
    (g,) = torch.autograd.grad(hp.ot.sinkhorn2(a, b, Mg, 0.2, grad="envelope", stopThr=1e-13, numItermax=5000),
                               [Mg], create_graph=True)
    W = torch.randn_like(M)
    (h,) = torch.autograd.grad((g * W).sum(), [Mg])
    fd = _fd(lambda t: (hp.ot.sinkhorn_plan(a, b, t, 0.2, stopThr=1e-13, numItermax=5000) * W).sum(), M,
             torch.eye(5, 6, dtype=D64))
    torch.testing.assert_close((h * torch.eye(5, 6, dtype=D64)).sum(), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("small", [True, False])
def test_samples_loss_double_backward_matches_geomloss(small, monkeypatch):
    """GeomLoss differentiates through its last extrapolation step; so does hotpath's create_graph
    backward. Balanced, no debias: d(grad_x)/dx is the same function in both."""
    geomloss = pytest.importorskip("geomloss")
    if not small:
        import sys
        monkeypatch.setattr(sys.modules["hotpath.ot.sinkhorn"], "SMALL", 0)
    g = torch.Generator().manual_seed(11)
    x = torch.rand(2, 12, 2, generator=g, dtype=D64)
    y = torch.rand(2, 15, 2, generator=g, dtype=D64) + 0.2
    d = torch.randn(2, 12, 2, generator=g, dtype=D64)
    out = []
    for fn in (hp.ot.SamplesLoss(blur=0.1, debias=False),
               geomloss.SamplesLoss("sinkhorn", blur=0.1, debias=False, backend="tensorized")):
        xg = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(xg, y).sum(), [xg], create_graph=True)
        assert gx.requires_grad
        (hv,) = torch.autograd.grad((gx * d).sum(), [xg])
        out.append(hv)
    torch.testing.assert_close(out[0], out[1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(), dict(reach=0.5), dict(p=1)], ids=["balanced", "unbalanced", "p1"])
def test_sinkhorn_create_graph_gives_a_graph_for_every_input(kw):
    x = torch.rand(7, 2, dtype=D64, requires_grad=True)
    y = torch.rand(9, 2, dtype=D64, requires_grad=True)
    a = torch.full((7,), 1 / 7, dtype=D64, requires_grad=True)
    b = torch.full((9,), 1 / 9, dtype=D64, requires_grad=True)
    loss = hp.ot.sinkhorn(x, y, a, b, debias=True, blur=0.2, **kw).loss
    grads = torch.autograd.grad(loss, [x, y, a, b], create_graph=True)
    first = torch.autograd.grad(hp.ot.sinkhorn(x, y, a, b, debias=True, blur=0.2, **kw).loss, [x, y, a, b])
    for g_, f_ in zip(grads, first):
        assert g_.requires_grad
        torch.testing.assert_close(g_.detach(), f_, rtol=1e-10, atol=1e-13)  # same first derivative
    penalty = sum((g_ ** 2).sum() for g_ in grads)
    hx, hy = torch.autograd.grad(penalty, [x, y])
    assert torch.isfinite(hx).all() and hx.abs().sum() > 0 and hy.abs().sum() > 0


@pytest.mark.parametrize("loss", ["energy", "gaussian", "laplacian", "hausdorff"])
def test_kernel_and_hausdorff_double_backward(loss):
    x = torch.rand(6, 2, dtype=D64, requires_grad=True)
    y = torch.rand(8, 2, dtype=D64)
    (g,) = torch.autograd.grad(hp.ot.SamplesLoss(loss, blur=0.3)(x, y), [x], create_graph=True)
    assert g.requires_grad
    torch.autograd.gradcheck(lambda t: hp.ot.SamplesLoss(loss, blur=0.3)(t, y), (x,))
    torch.autograd.gradgradcheck(lambda t: hp.ot.SamplesLoss(loss, blur=0.3)(t, y), (x,))


# ---------------------------------------------------------------- (6) float32 with large blur / reach / eps
def test_float32_large_blur_as_good_as_geomloss():
    """Before: blur = 1000 gave 1.28 in float32 where float64 gives 0.172."""
    geomloss = pytest.importorskip("geomloss")
    g = torch.Generator().manual_seed(12)
    x = torch.rand(300, 3, generator=g, dtype=D64)
    y = torch.rand(300, 3, generator=g, dtype=D64) + 0.3
    want = hp.ot.SamplesLoss(blur=1000.0)(x, y).item()
    ours = hp.ot.SamplesLoss(blur=1000.0)(x.float(), y.float()).item()
    theirs = geomloss.SamplesLoss("sinkhorn", blur=1000.0, backend="tensorized")(x.float(), y.float()).item()
    assert abs(ours - want) <= max(abs(theirs - want), 1e-5 * abs(want))
    assert abs(ours - want) <= 1e-4 * abs(want)


def test_float32_large_reach_not_zero():
    """Before: reach = 1e4 returned 0.0 in float32 (1 - exp(-f/rho) rounded to 0)."""
    g = torch.Generator().manual_seed(13)
    x = torch.rand(40, 2, generator=g, dtype=D64)
    y = torch.rand(50, 2, generator=g, dtype=D64) + 0.2
    for debias in (False, True):
        want = hp.ot.sinkhorn(x, y, reach=1e4, debias=debias).loss.item()
        got = hp.ot.sinkhorn(x.float(), y.float(), reach=1e4, debias=debias).loss.item()
        assert want > 0 and abs(got - want) <= 1e-4 * abs(want)
        bal = hp.ot.sinkhorn(x, y, debias=debias).loss.item()
        assert abs(want - bal) <= 1e-3 * abs(bal)  # reach -> inf is balanced OT


def test_sinkhorn_dense_float32_huge_eps():
    """Before: eps = 1e8 returned -64.0 in float32 (the dual sum of potentials ~ eps log n cancelled)."""
    a, b, M = _problem(10, 12, seed=14)
    want = hp.ot.sinkhorn_dense(M, a, b, eps=1e8).loss.item()
    got = hp.ot.sinkhorn_dense(M.float(), a.float(), b.float(), eps=1e8)
    assert got.loss.dtype == torch.float32
    assert abs(got.loss.item() - want) <= 1e-5 * abs(want)
    # eps -> inf: the plan is a b^T and the value <a b^T, M> plus eps KL terms -> the independent coupling
    assert abs(want - (a[:, None] * b[None] * M).sum().item()) < 1e-3


@pytest.mark.parametrize("kw,scale", [(dict(max_iter=300), 30.0), (dict(), 30.0), (dict(), 3000.0)],
                         ids=["fixed_eps-30", "eps_scaling-30", "eps_scaling-3000"])
def test_marginal_error_float32_large_costs(kw, scale):
    """marginal_error is the marginal error of the plan the returned potentials define,
    sum_i |(P 1)_i - a_i|, evaluated without cancellation. With costs ~1e7 x eps (scale 3000,
    eps 0.21) the float32 difference f - T(g) of two numbers ~1e6 was rounding, amplified by exp."""
    g = torch.Generator().manual_seed(15)
    x = torch.rand(60, 2, generator=g) * scale
    y = torch.rand(70, 2, generator=g) * scale + scale / 6
    r = hp.ot.sinkhorn(x, y, blur=0.46, **kw)
    assert r.marginal_error.dtype == torch.float32
    X, Y = x.double(), y.double()
    C = ((X[:, None] - Y[None]) ** 2).sum(-1) / 2
    P = torch.exp((r.f.double()[:, None] + r.g.double()[None] - C) / r.eps) / (60 * 70)
    want = (P.sum(1) - 1 / 60).abs().sum()
    torch.testing.assert_close(r.marginal_error[0].double(), want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- (7) near-coincident float32 clouds
@pytest.mark.parametrize("scale", [1e-21, 1e-30, 0.0])
def test_near_coincident_float32_clouds_finite(scale):
    g = torch.Generator().manual_seed(16)
    x = torch.rand(10, 2, generator=g) * scale
    y = torch.rand(12, 2, generator=g) * scale
    for debias in (True, False):
        v = hp.ot.SamplesLoss(debias=debias)(x, y)
        assert torch.isfinite(v) and abs(v.item()) < 1e-6
        r = hp.ot.sinkhorn(x, y, debias=debias)
        assert torch.isfinite(r.loss) and torch.isfinite(r.f).all()


# ---------------------------------------------------------------- (11) errors that name the argument
def test_p_integral_float_accepted_else_named():
    x, y = torch.rand(5, 2, dtype=D64), torch.rand(6, 2, dtype=D64)
    assert hp.ot.sinkhorn(x, y, p=2.0).loss.item() == hp.ot.sinkhorn(x, y, p=2).loss.item()
    assert hp.ot.SamplesLoss(p=1.0)(x, y).item() == hp.ot.SamplesLoss(p=1)(x, y).item()
    for bad in (2.5, 3, "2", True):
        with pytest.raises(ValueError, match="p must"):
            hp.ot.sinkhorn(x, y, p=bad)


def test_infinite_coordinate_and_empty_features_named():
    x, y = torch.rand(5, 2), torch.rand(6, 2)
    xi = x.clone()
    xi[1, 0] = math.inf
    with pytest.raises(ValueError, match="x must have finite"):
        hp.ot.sinkhorn(xi, y)
    with pytest.raises(ValueError, match="y must have finite"):
        hp.ot.SamplesLoss()(y, -xi)
    with pytest.raises(ValueError, match="at least one feature"):
        hp.ot.sinkhorn(torch.rand(5, 0), torch.rand(6, 0))


def test_sinkhorn_dense_accepts_lists_like_pot():
    a, b, M = _problem(3, 4, seed=17)
    want = hp.ot.sinkhorn_dense(M, a, b, eps=0.1).loss
    got = hp.ot.sinkhorn_dense(M, a.tolist(), b.tolist(), eps=0.1).loss
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="a must"):
        hp.ot.sinkhorn_dense(M, ["x", 1, 2], eps=0.1)
    with pytest.raises(ValueError, match="a must have shape"):
        hp.ot.sinkhorn_dense(M, [0.5, 0.5], eps=0.1)


def test_pot_method_named():
    a, b, M = _problem(3, 4)
    with pytest.raises(ValueError, match="method"):
        hp.ot.sinkhorn2(a, b, M, 0.1, method="new_method")
    with pytest.raises(ValueError, match="method"):
        hp.ot.sinkhorn_plan(a, b, M, 0.1, method="foo")


# ---------------------------------------------------------------- POT drop-in
def test_pot_numpy_in_numpy_out_and_multiple_histograms():
    ot = pytest.importorskip("ot")
    rng = np.random.RandomState(0)
    a = ot.unif(7)
    b = rng.rand(9, 3)
    b /= b.sum(0, keepdims=True)
    M = rng.rand(7, 9)
    v = hp.ot.sinkhorn2(a, b[:, 0], M, 0.1)
    assert isinstance(v, np.floating) and abs(v - ot.sinkhorn2(a, b[:, 0], M, 0.1)) < 1e-12
    vs = hp.ot.sinkhorn2(a, b, M, 0.1)
    assert isinstance(vs, np.ndarray) and vs.shape == (3,)
    np.testing.assert_allclose(vs, ot.sinkhorn2(a, b, M, 0.1), rtol=1e-8)
    np.testing.assert_allclose(hp.ot.sinkhorn_plan(a, b, M, 0.1), ot.sinkhorn(a, b, M, 0.1), rtol=1e-8)
    P = hp.ot.sinkhorn_plan(a, b[:, 1], M, 0.1)
    assert isinstance(P, np.ndarray) and P.dtype == np.float64
    np.testing.assert_allclose(P, ot.sinkhorn(a, b[:, 1], M, 0.1), atol=1e-14)
    r = hp.ot.sinkhorn_dense(M, a, b[:, 0], eps=0.1)
    assert isinstance(r.loss, np.floating) and isinstance(r.f, np.ndarray)


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"])
def test_pot_log_dict(method):
    ot = pytest.importorskip("ot")
    rng = np.random.RandomState(1)
    a, b, M = ot.unif(6), ot.unif(5), rng.rand(6, 5)
    v, log = hp.ot.sinkhorn2(a, b, M, 0.2, method=method, log=True)
    v0, log0 = ot.sinkhorn2(a, b, M, 0.2, method=method, log=True)
    assert abs(v - v0) < 1e-12
    if method != "sinkhorn_stabilized":  # POT's stabilized log holds alpha / beta instead
        assert set(log) == set(log0)
        assert log["niter"] == log0["niter"]
    # the scalings are defined up to (c u, v / c); the plan they define is POT's
    K = np.exp(-M / 0.2)
    np.testing.assert_allclose(log["u"][:, None] * K * log["v"][None], ot.sinkhorn(a, b, M, 0.2, method=method),
                               rtol=1e-8, atol=1e-14)
    if "log_u" in log:
        np.testing.assert_allclose(log["log_u"], np.log(log["u"]), rtol=1e-12)
    assert log["err"][-1] < 1e-9


def test_pot_convergence_warning():
    ot = pytest.importorskip("ot")
    a = ot.datasets.make_1D_gauss(30, m=10, s=5)
    b = ot.datasets.make_1D_gauss(30, m=20, s=5)
    M = ot.utils.dist0(30)
    with pytest.warns(UserWarning, match="did not converge"):
        hp.ot.sinkhorn_plan(a, b, M, 1.0, stopThr=0, numItermax=1)
    with pytest.warns(UserWarning, match="did not converge"):
        hp.ot.sinkhorn2(a, b, M, 1.0, stopThr=0, numItermax=1, warn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hp.ot.sinkhorn2(a, b, M, 1.0, stopThr=0, numItermax=1)  # POT's sinkhorn2 default: warn=False


def test_pot_warmstart():
    ot = pytest.importorskip("ot")
    rng = np.random.RandomState(2)
    a, b, M = ot.unif(6), ot.unif(7), rng.rand(6, 7)
    _, log = ot.sinkhorn(a, b, M, 0.05, method="sinkhorn_log", log=True)
    ws = (log["log_u"], log["log_v"])
    v1 = hp.ot.sinkhorn2(a, b, M, 0.05, warmstart=ws, numItermax=3)
    v0 = ot.sinkhorn2(a, b, M, 0.05, method="sinkhorn_log", warmstart=ws, numItermax=3)
    assert abs(v1 - v0) < 1e-12


# ---------------------------------------------------------------- GeomLoss drop-in
@pytest.mark.parametrize("loss", ["energy", "gaussian", "laplacian"])
@pytest.mark.parametrize("batched", [False, True])
def test_kernel_losses_match_geomloss(loss, batched):
    geomloss = pytest.importorskip("geomloss")
    g = torch.Generator().manual_seed(18)
    shp = (2,) if batched else ()
    x = torch.rand(*shp, 23, 3, generator=g, dtype=D64)
    y = torch.rand(*shp, 31, 3, generator=g, dtype=D64) + 0.1
    a = torch.rand(*shp, 23, generator=g, dtype=D64)
    b = torch.rand(*shp, 31, generator=g, dtype=D64)
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    ours = hp.ot.SamplesLoss(loss, blur=0.3)(a, x, b, y)
    theirs = geomloss.SamplesLoss(loss, blur=0.3, backend="tensorized")(a, x, b, y)
    # GeomLoss's tensorized distances are clamped at 1e-4: a k(x, x) offset of 1e-4 * sum a^2
    atol = 1e-12 if loss == "gaussian" else 1e-4 * ((a ** 2).sum(-1) + (b ** 2).sum(-1)).max().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=atol)
    F, G = hp.ot.SamplesLoss(loss, blur=0.3, potentials=True)(a, x, b, y)
    F0, G0 = geomloss.SamplesLoss(loss, blur=0.3, potentials=True, backend="tensorized")(a, x, b, y)
    assert F.shape == a.shape and G.shape == b.shape
    torch.testing.assert_close(F, F0.reshape(F.shape), rtol=1e-9, atol=3e-4)


def test_hausdorff_properties():
    g = torch.Generator().manual_seed(19)
    x = torch.rand(30, 2, generator=g, dtype=D64)
    y = torch.rand(40, 2, generator=g, dtype=D64) + 0.3
    H = hp.ot.SamplesLoss("hausdorff", blur=0.05)
    assert abs(H(x, x).item()) < 1e-12
    assert H(x, y).item() > 0
    torch.testing.assert_close(H(x, y), H(y, x))
    # blur -> 0: the symmetric ICP loss 1/2 (mean_i min_j C_ij + mean_j min_i C_ij), C = |x-y|^2/2
    C = ((x[:, None] - y[None]) ** 2).sum(-1) / 2
    icp = 0.5 * (C.min(1)[0].mean() + C.min(0)[0].mean())
    torch.testing.assert_close(hp.ot.SamplesLoss("hausdorff", blur=1e-4)(x, y), icp, rtol=1e-3, atol=1e-6)


def test_geomloss_arguments_accepted():
    geomloss = pytest.importorskip("geomloss")
    x, y = torch.rand(20, 3, dtype=D64), torch.rand(25, 3, dtype=D64)
    want = geomloss.SamplesLoss("sinkhorn", blur=0.05, backend="tensorized")(x, y)
    for backend in ("tensorized", "online", "multiscale", "auto"):
        got = hp.ot.SamplesLoss("sinkhorn", blur=0.05, backend=backend, truncate=3, verbose=False,
                                cluster_scale=None)(x, y)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # positional order of GeomLoss's signature
    hp.ot.SamplesLoss("sinkhorn", 2, 0.05, None, None, 0.5, 5, None, None, None, True, False, False, "tensorized")
    for cost in ("SqDist(X,Y) / IntCst(2)", lambda X, Y: ((X[:, :, None] - Y[:, None]) ** 2).sum(-1) / 2):
        torch.testing.assert_close(hp.ot.SamplesLoss(blur=0.05, cost=cost)(x, y), want, rtol=1e-9, atol=1e-12)
    want1 = geomloss.SamplesLoss("sinkhorn", p=1, blur=0.05, backend="tensorized")(x, y)
    torch.testing.assert_close(hp.ot.SamplesLoss(p=1, blur=0.05, cost="Norm2(X-Y)")(x, y), want1, rtol=5e-3, atol=0)
    sq = lambda X, Y: ((X[:, :, None] - Y[:, None]) ** 2).sum(-1)  # noqa: E731
    torch.testing.assert_close(hp.ot.SamplesLoss(blur=0.05, cost="SqDist(X,Y)")(x, y),
                               geomloss.SamplesLoss(blur=0.05, cost=sq, backend="tensorized")(x, y),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="cost"):
        hp.ot.SamplesLoss(cost="Exp(X|Y)")
    with pytest.raises(ValueError, match="backend"):
        hp.ot.SamplesLoss(backend="keops")
    with pytest.raises(ValueError, match="loss must be one of"):
        hp.ot.SamplesLoss("wasserstein")


def test_custom_cost_gradient_matches_geomloss():
    geomloss = pytest.importorskip("geomloss")
    x = torch.rand(2, 15, 2, dtype=D64)
    y = torch.rand(2, 18, 2, dtype=D64)
    cost = lambda X, Y: ((X[:, :, None] - Y[:, None]).abs()).sum(-1)  # noqa: E731  (L1)
    out = []
    for fn in (hp.ot.SamplesLoss(blur=0.1, cost=cost), geomloss.SamplesLoss(blur=0.1, cost=cost, backend="tensorized")):
        xg = x.clone().requires_grad_()
        v = fn(xg, y)
        out.append((v, torch.autograd.grad(v.sum(), [xg])[0]))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-7, atol=1e-10)
