"""Tests of hp.ot Sinkhorn solvers: vs the float64 dense reference, GeomLoss and POT; analytic
gradients vs finite differences; batching, padding, empty problems; kernels on every backend."""
import math
import sys
import warnings

import pytest
import torch

import hotpath as hp
from hotpath._ops import ot as ops
from hotpath.reference import ot as ref
from conftest import backend_param, assert_close

SK = sys.modules["hotpath.ot.sinkhorn"]
D64 = torch.float64


@pytest.fixture(params=["fused", "streamed"])
def path(request, monkeypatch):
    if request.param == "streamed":
        monkeypatch.setattr(SK, "SMALL", 0)
    return request.param


def clouds(B=2, n=23, m=31, d=3, dtype=D64):
    x = torch.rand(B, n, d, dtype=dtype)
    y = torch.rand(B, m, d, dtype=dtype) * 0.8 + 0.3
    return x, y


# ---------------------------------------------------------------- kernels on every backend
@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 59), (1, 33, 17)])
def test_softmin_dense_kernels(backend, dtype, shape):
    B, n, m = shape
    C = torch.rand(B, n, m, dtype=D64) * 2
    hr, hc = torch.randn(B, m, dtype=D64), torch.randn(B, n, dtype=D64)
    hr[0, 0] = -math.inf
    for h, dim in ((hr, 2), (hc, 1)):
        want = ref.softmin_dense(C, h, 0.1, dim)
        got = ops.ot_softmin_dense.with_backend(backend, C.to(dtype), h.to(dtype), 0.1, dim)
        assert_close(got, want, dtype, scale=10)


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 5, 19, 3), (1, 17, 3, 5)])
def test_softmin_points_kernels(backend, p, shape):
    B, n, m, d = shape
    x, y = torch.rand(B, n, d, dtype=D64), torch.rand(B, m, d, dtype=D64)
    y[0, 0] = x[0, 0]  # a zero distance (p=1 gradient convention: 0 there)
    h = torch.randn(B, m, dtype=D64)
    f0, U0 = ref.softmin_points(x, y, h, 0.2, p, True)
    f, U = ops.ot_softmin_points.with_backend(backend, x, y, h, 0.2, p, True)
    assert_close(f, f0, D64)
    assert_close(U, U0, D64)


def test_softmin_all_masked_is_inf_not_nan():
    C = torch.rand(1, 3, 4, dtype=D64)
    h = torch.full((1, 4), -math.inf, dtype=D64)
    f = ops.ot_softmin_dense.with_backend("cpu", C, h, 0.1, 2)
    assert torch.isinf(f).all() and (f > 0).all()
    f = ops.ot_softmin_dense.with_backend("cpu", C, torch.full((1, 3), -math.inf, dtype=D64), 0.1, 1)
    assert torch.isinf(f).all()


def test_opcheck():
    C = torch.rand(2, 4, 5)
    torch.library.opcheck(ops.ot_softmin_dense.overload, (C, torch.randn(2, 5), 0.1, 2))
    torch.library.opcheck(ops.ot_softmin_points.overload, (torch.rand(2, 4, 3), torch.rand(2, 5, 3), torch.randn(2, 5), 0.1, 1,
                                                  True))
    for with_plan in (True, False):
        torch.library.opcheck(ops.ot_dense_plan.overload, (C, torch.randn(2, 4), torch.randn(2, 5), torch.randn(2, 4),
                                                  torch.randn(2, 5), 0.3, with_plan))
    torch.library.opcheck(ops.ot_sinkhorn_alternating.overload, (C, torch.randn(2, 4), torch.randn(2, 5), 0.1, -1.0, -1.0, 20,
                                                        1e-6, 10, torch.zeros(2, 4)))
    el = torch.tensor([1.0, 0.5, 0.1], dtype=D64)
    torch.library.opcheck(ops.ot_sinkhorn_symmetric.overload, (C, torch.rand(2, 4, 4), torch.rand(2, 5, 5), torch.randn(2, 4),
                                                      torch.randn(2, 5), el, 0.5, -1.0, True, 0.0, 1))


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("rho", [-1.0, 0.2])
@pytest.mark.parametrize("shape,eps", [((1, 1, 1), 0.1), ((3, 37, 70), 0.004), ((2, 53, 29), 0.05)])
def test_alternating_loop_kernel_domain(dtype, rho, shape, eps):
    # the C++ loop iterates in a stabilized kernel domain (K rebuilt when potentials drift past
    # tau * eps): small eps, wide costs, zero weights and skewed marginals on purpose
    B, n, m = shape
    g = torch.Generator().manual_seed(n)
    C = torch.rand(B, n, m, generator=g, dtype=D64) * 3
    a_log = torch.log(torch.rand(B, n, generator=g, dtype=D64) ** 4)
    b_log = torch.log(torch.rand(B, m, generator=g, dtype=D64))
    if n > 5:
        a_log[0, :5] = -math.inf
        a_log[1, :20] = -math.inf  # a whole leading block of zero-weight rows
        b_log[-1, m // 2:] = -math.inf
        a_log[-1, 7] = -60.0  # a row ~e^-60 lighter than the rest
    f0 = torch.where(torch.isfinite(a_log), -eps * a_log, 0.0)
    want = ops.ot_sinkhorn_alternating.with_backend("reference", C, a_log, b_log, eps, rho, rho, 60, 0.0, 7, f0)
    got = ops.ot_sinkhorn_alternating(*(t.to(dtype) for t in (C, a_log, b_log)), eps, rho, rho, 60, 0.0, 7,
                                      f0.to(dtype))
    assert torch.equal(got[2], want[2])
    for x, w in zip((got[0], got[1]), (want[0], want[1])):
        assert torch.isfinite(x).all()
        assert_close(x, w, dtype, scale=1e3 * eps if dtype == torch.float32 else 1)  # potentials scale with 1/eps
    assert_close(got[3], want[3], dtype, scale=10)
    primal, P = ops.ot_dense_plan(C.to(dtype), a_log.to(dtype), b_log.to(dtype), want[0].to(dtype),
                                  want[1].to(dtype), eps, True)
    primal0, P0 = ref.dense_plan(C, a_log, b_log, want[0], want[1], eps)
    assert_close(P, P0, dtype, scale=10)
    assert_close(primal, primal0, dtype, scale=10)


def test_alternating_loop_converges_and_stops():
    C = torch.rand(1, 40, 50, dtype=D64)
    z = torch.zeros(1, 40, dtype=D64)
    a_log, b_log = torch.log(torch.full((1, 40), 1 / 40, dtype=D64)), torch.log(torch.full((1, 50), 1 / 50, dtype=D64))
    f, g, n_iter, err = ops.ot_sinkhorn_alternating.with_backend("cpu", C, a_log, b_log, 0.1, -1.0, -1.0, 1000, 1e-12, 10, z)
    ref_out = ops.ot_sinkhorn_alternating.with_backend("reference", C, a_log, b_log, 0.1, -1.0, -1.0, 1000, 1e-12, 10, z)
    assert int(n_iter) < 1000 and float(err) < 1e-12 and torch.equal(n_iter, ref_out[2])
    Cn = C.clone()
    Cn[0, 3, 4] = math.nan
    f, g, n_iter, err = ops.ot_sinkhorn_alternating.with_backend("cpu", Cn, a_log, b_log, 0.1, -1.0, -1.0, 1000, 1e-12, 10, z)
    assert int(n_iter) == 1 and math.isnan(float(err))  # NaN stops at the first check, never hangs


@pytest.mark.parametrize("p", [1, 2])
def test_cost_matrix_op(p):
    x, y = clouds(2, 7, 19, dtype=torch.float32)
    torch.library.opcheck(ops.ot_cost_matrix.overload, (x, y, p))
    assert_close(ops.ot_cost_matrix(x, y, p), ref.cost_matrix(x.double(), y.double(), p), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("rho", [-1.0, 0.3])
def test_symmetric_loop_fixed_eps_kernel_domain(dtype, rho):
    # many iterations at one eps: the fused loop runs in the kernel domain with absorption
    # (rebuilds when potentials drift by > tau * eps); small eps and zero weights on purpose
    x, y = clouds(3, 37, 70)
    Cxy, Cxx, Cyy = ref.cost_matrix(x, y, 2), ref.cost_matrix(x, x, 2), ref.cost_matrix(y, y, 2)
    a_log = torch.log(torch.rand(3, 37, dtype=D64))
    b_log = torch.log(torch.rand(3, 70, dtype=D64))
    a_log[0, :5] = -math.inf
    b_log[2, 60:] = -math.inf
    el = torch.tensor([1.0] + [0.002] * 60, dtype=D64)
    want = ops.ot_sinkhorn_symmetric.with_backend("reference", Cxy, Cxx, Cyy, a_log, b_log, el, rho, rho, True, 0.0, 1)
    args = [t.to(dtype) for t in (Cxy, Cxx, Cyy, a_log, b_log)]
    got = ops.ot_sinkhorn_symmetric.with_backend("cpu", *args, el, rho, rho, True, 0.0, 1)
    for g, w in zip(got[:4], want[:4]):
        assert torch.isfinite(g).all()
        assert_close(g, w, dtype, scale=4 if dtype == torch.float32 else 1)


@pytest.mark.parametrize("rho", [-1.0, 0.3])
@pytest.mark.parametrize("debias", [True, False])
def test_symmetric_loop_cpu_vs_reference(rho, debias):
    x, y = clouds(3, 9, 13)
    Cxy, Cxx, Cyy = ref.cost_matrix(x, y, 2), ref.cost_matrix(x, x, 2), ref.cost_matrix(y, y, 2)
    a_log = torch.log(torch.rand(3, 9, dtype=D64))
    b_log = torch.log(torch.rand(3, 13, dtype=D64))
    b_log[1, 2] = -math.inf
    el = torch.tensor([2.0, 1.0, 0.5, 0.1, 0.05], dtype=D64)
    got = ops.ot_sinkhorn_symmetric.with_backend("cpu", Cxy, Cxx, Cyy, a_log, b_log, el, rho, rho, debias, 0.0, 1)
    want = ops.ot_sinkhorn_symmetric.with_backend("reference", Cxy, Cxx, Cyy, a_log, b_log, el, rho, rho, debias, 0.0, 1)
    for g, w in zip(got, want):
        assert_close(g.double(), w.double(), D64)


# ---------------------------------------------------------------- values vs GeomLoss
@pytest.mark.parametrize("reach", [None, 0.5])
@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("p", [1, 2])
def test_samples_loss_matches_geomloss(reach, debias, p, path):
    geomloss = pytest.importorskip("geomloss")
    x, y = clouds(2, 40, 50)
    a = torch.rand(2, 40, dtype=D64)
    b = torch.rand(2, 50, dtype=D64)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    ours = hp.ot.SamplesLoss("sinkhorn", p=p, blur=0.05, reach=reach, debias=debias)(a, x, b, y)
    theirs = geomloss.SamplesLoss("sinkhorn", p=p, blur=0.05, reach=reach, debias=debias,
                                  backend="tensorized")(a, x, b, y)
    # geomloss tensorized clamps |x-y| at 1e-4 for p=1 (diagonal of C_xx): a small, known offset
    rtol = 1e-9 if p == 2 else 5e-3
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=1e-12)


def test_samples_loss_float32_and_unbatched_and_potentials():
    geomloss = pytest.importorskip("geomloss")
    x, y = torch.rand(100, 3), torch.rand(120, 3) + 0.1
    ours = hp.ot.SamplesLoss(blur=0.05)(x, y)
    theirs = geomloss.SamplesLoss("sinkhorn", blur=0.05, backend="tensorized")(x, y)
    assert ours.shape == () and ours.dtype == torch.float32
    assert abs(ours.item() - theirs.item()) <= 1e-4 * abs(theirs.item())
    F, G = hp.ot.SamplesLoss(blur=0.05, potentials=True)(x.double(), y.double())
    F2, G2 = geomloss.SamplesLoss("sinkhorn", blur=0.05, potentials=True, backend="tensorized")(x.double(), y.double())
    assert F.shape == (100,) and G.shape == (120,)  # shaped like the weights (GeomLoss adds a batch dim)
    assert_close(F, F2.reshape(F.shape), D64, scale=1e3)
    assert_close(G, G2.reshape(G.shape), D64, scale=1e3)


def test_balanced_gradients_match_geomloss():
    geomloss = pytest.importorskip("geomloss")
    x, y = clouds(2, 30, 35)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx, gy = torch.autograd.grad(geomloss.SamplesLoss("sinkhorn", blur=0.05, backend="tensorized")(xg, yg).sum(), [xg, yg])
    hx, hy = torch.autograd.grad(hp.ot.SamplesLoss(blur=0.05)(xg, yg).sum(), [xg, yg])
    assert_close(hx, gx, D64, scale=100)
    assert_close(hy, gy, D64, scale=100)


# ---------------------------------------------------------------- gradients vs finite differences
def _fd(fun, t, direction, h=1e-6):
    return (fun(t + h * direction) - fun(t - h * direction)) / (2 * h)


CASES = [dict(), dict(reach=0.5), dict(reach_x=0.6), dict(reach_y=0.4, reach_x=0.7)]


@pytest.mark.parametrize("kw", CASES, ids=["balanced", "unbalanced", "semi_x", "semi_xy"])
@pytest.mark.parametrize("debias", [False, True])
@pytest.mark.parametrize("p", [2, 1])
def test_gradients_vs_finite_differences(kw, debias, p):
    _fd_case(kw, debias, p)


@pytest.mark.parametrize("kw", CASES[:2], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("p", [2])
def test_gradients_vs_finite_differences_streamed(kw, p, monkeypatch):
    monkeypatch.setattr(SK, "SMALL", 0)
    _fd_case(kw, True, p)


def _fd_case(kw, debias, p):
    torch.manual_seed(1)
    x, y = clouds(1, 7, 9, 2)
    a = torch.rand(1, 7, dtype=D64) + 0.2
    b = torch.rand(1, 9, dtype=D64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    # eps = 0.01 (blur 0.1, p=2), converged: the envelope theorem is exact at the fixed point
    opts = dict(blur=0.1 if p == 2 else 0.05, p=p, debias=debias, max_iter=2000, tol=1e-13, **kw)

    def L(x_, y_, a_, b_):
        return hp.ot.sinkhorn(x_, y_, a_, b_, **opts).loss.sum()

    xg, yg, ag, bg = (t.clone().requires_grad_() for t in (x, y, a, b))
    gx, gy, ga, gb = torch.autograd.grad(L(xg, yg, ag, bg), [xg, yg, ag, bg])
    dxr, dyr = torch.randn_like(x), torch.randn_like(y)
    torch.testing.assert_close((gx * dxr).sum(), _fd(lambda t: L(t, y, a, b), x, dxr), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close((gy * dyr).sum(), _fd(lambda t: L(x, t, a, b), y, dyr), rtol=1e-5, atol=1e-8)
    balanced = not kw
    da, db = torch.randn_like(a), torch.randn_like(b)
    if balanced or kw.get("reach_y") is None and "reach" not in kw:
        # balanced marginals: only mass-preserving directions are meaningful
        da, db = da - da.mean(), db - db.mean()
    if balanced or "reach" in kw:
        torch.testing.assert_close((ga * da).sum(), _fd(lambda t: L(x, y, t, b), a, da), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close((gb * db).sum(), _fd(lambda t: L(x, y, a, t), b, db), rtol=1e-5, atol=1e-8)


def test_unbalanced_gradient_factor_rho_plus_eps():
    """eps = 0.01, rho = 0.25: GeomLoss's gradient is off by (rho + eps/2)/(rho + eps) ~ 2%; ours is exact."""
    torch.manual_seed(2)
    x, y = clouds(1, 10, 12, 2)
    opts = dict(blur=0.1, reach=0.5, max_iter=3000, tol=1e-13, debias=True)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(hp.ot.sinkhorn(xg, y, **opts).loss.sum(), [xg])
    d = torch.randn_like(x)
    fd = _fd(lambda t: hp.ot.sinkhorn(t, y, **opts).loss.sum(), x, d)
    assert abs((gx * d).sum().item() - fd.item()) <= 1e-6 * abs(fd.item()) + 1e-10


def test_dense_gradients_vs_finite_differences():
    C = torch.rand(1, 6, 8, dtype=D64)
    a = torch.rand(1, 6, dtype=D64) + 0.1
    b = torch.rand(1, 8, dtype=D64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    for reach in (None, 0.7):
        def L(C_, a_, b_):
            return hp.ot.sinkhorn_dense(C_, a_, b_, eps=0.05, reach=reach, max_iter=5000, tol=1e-14).loss.sum()
        Cg, ag, bg = (t.clone().requires_grad_() for t in (C, a, b))
        gC, ga, gb = torch.autograd.grad(L(Cg, ag, bg), [Cg, ag, bg])
        dC = torch.randn_like(C)
        torch.testing.assert_close((gC * dC).sum(), _fd(lambda t: L(t, a, b), C, dC), rtol=1e-5, atol=1e-9)
        da, db = torch.randn_like(a), torch.randn_like(b)
        if reach is None:
            da, db = da - da.mean(), db - db.mean()
        torch.testing.assert_close((ga * da).sum(), _fd(lambda t: L(C, t, b), a, da), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close((gb * db).sum(), _fd(lambda t: L(C, a, t), b, db), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- structure
def test_fused_equals_streamed(monkeypatch):
    x, y = clouds(3, 20, 25)
    for kw in (dict(), dict(reach=0.3, debias=True), dict(p=1, debias=True)):
        r1 = hp.ot.sinkhorn(x, y, **kw)
        monkeypatch.setattr(SK, "SMALL", 0)
        r2 = hp.ot.sinkhorn(x, y, **kw)
        monkeypatch.setattr(SK, "SMALL", 256)
        assert_close(r1.loss, r2.loss, D64)
        assert_close(r1.f, r2.f, D64)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backends_agree(backend, path):
    x, y = clouds(2, 15, 18)
    want = hp.ot.sinkhorn(x, y, debias=True, backend="reference").loss
    assert_close(hp.ot.sinkhorn(x, y, debias=True, backend=backend).loss, want, D64)
    got = hp.ot.sinkhorn(x.float(), y.float(), debias=True, backend=backend).loss
    assert_close(got, want, torch.float32, scale=10)


# a backend parameter: in GPU mode the body makes CUDA tensors (compiled Triton rejects CPU ones
# outside the interpreter)
@pytest.mark.parametrize("backend", backend_param(["triton"]))
def test_triton_backend_small(backend):
    pytest.importorskip("triton")
    x, y = clouds(1, 6, 7, 2)
    want = hp.ot.sinkhorn(x, y, p=1, backend="reference", max_iter=5)
    old = SK.SMALL
    SK.SMALL = 0
    try:
        got = hp.ot.sinkhorn(x, y, p=1, backend=backend, max_iter=5)
    finally:
        SK.SMALL = old
    assert_close(got.loss, want.loss, D64)


def test_batched_equals_per_problem_and_padding(path):
    x, y = clouds(3, 12, 14)
    a = torch.rand(3, 12, dtype=D64) + 0.1
    b = torch.rand(3, 14, dtype=D64) + 0.1
    a[1, 8:] = 0
    b[2, 5:] = 0
    x[1, 8:] = 100.0  # padded points far away: must not matter (nor for the diameter)
    batched = hp.ot.sinkhorn(x, y, a, b, debias=True, diameter=2.0)
    for i, (na, nb) in enumerate([(12, 14), (8, 14), (12, 5)]):
        single = hp.ot.sinkhorn(x[i, :na], y[i, :nb], a[i, :na], b[i, :nb], debias=True, diameter=2.0)
        assert_close(batched.loss[i], single.loss, D64)
        assert_close(batched.f[i, :na], single.f, D64)
    auto = hp.ot.sinkhorn(x[1:2], y[1:2], a[1:2], b[1:2])
    ref_ = hp.ot.sinkhorn(x[1, :8], y[1], a[1, :8], b[1])
    assert_close(auto.loss[0], ref_.loss, D64)


def test_empty_problem_zero_loss_and_grads(path):
    x, y = clouds(2, 10, 11)
    a = torch.rand(2, 10, dtype=D64)
    b = torch.rand(2, 11, dtype=D64)
    a[0] = 0
    xg, yg, ag = x.clone().requires_grad_(), y.clone().requires_grad_(), a.clone().requires_grad_()
    r = hp.ot.sinkhorn(xg, yg, ag, b, debias=True)
    gx, gy, ga = torch.autograd.grad(r.loss.sum(), [xg, yg, ag])
    assert r.loss[0] == 0 and (gx[0] == 0).all() and (gy[0] == 0).all() and (ga[0] == 0).all()
    assert torch.isfinite(r.loss).all() and torch.isfinite(gx).all()
    other = hp.ot.sinkhorn(x[1:], y[1:], a[1:], b[1:], debias=True, diameter=None)
    assert torch.isfinite(other.loss).all()


def test_dirac_closed_form_and_identical_clouds():
    x = torch.tensor([[0.1, 0.2]], dtype=D64)
    y = torch.tensor([[0.7, -0.1]], dtype=D64)
    r = hp.ot.sinkhorn(x, y, debias=True, blur=0.01)
    assert_close(r.loss, ((x - y) ** 2).sum() / 2, D64)
    r1 = hp.ot.sinkhorn(x, y, debias=True, blur=0.01, p=1)
    assert_close(r1.loss, (x - y).norm(), D64)
    z = torch.rand(20, 3, dtype=D64)
    s = hp.ot.sinkhorn(z, z, debias=True)
    assert abs(s.loss.item()) < 1e-10
    pts = torch.zeros(5, 2, dtype=D64)  # zero diameter
    assert torch.isfinite(hp.ot.sinkhorn(pts, pts.clone(), debias=True).loss).all()


def test_gaussian_w2_closed_form():
    torch.manual_seed(3)
    n = 2000
    x = torch.randn(n, 2, dtype=D64)
    y = torch.randn(n, 2, dtype=D64) * 0.5 + torch.tensor([1.0, -0.5], dtype=D64)
    s = hp.ot.sinkhorn(x, y, debias=True, blur=0.01).loss
    # empirical W2^2 / 2 between the two samples equals the Gaussian one up to sampling error
    w2 = ((x.mean(0) - y.mean(0)) ** 2).sum()
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    w2 = w2 + torch.trace(cx + cy - 2 * torch.linalg.cholesky(cx) @ torch.linalg.cholesky(cy).T * 0
                          - 2 * _sqrtm(_sqrtm(cx) @ cy @ _sqrtm(cx)))
    assert abs(s.item() - w2.item() / 2) < 0.03 * w2.item() / 2


def _sqrtm(A):
    e, v = torch.linalg.eigh(A)
    return v @ torch.diag(e.clamp_min(0).sqrt()) @ v.T


def test_tiny_blur_no_nan():
    x, y = torch.rand(50, 2), torch.rand(60, 2)
    xg = x.clone().requires_grad_()
    r = hp.ot.sinkhorn(xg, y, blur=1e-3, debias=True)
    (g,) = torch.autograd.grad(r.loss, [xg])
    assert torch.isfinite(r.loss) and torch.isfinite(g).all()


def test_fixed_eps_tol_stops_early_and_marginals():
    x, y = clouds(1, 30, 30)
    r = hp.ot.sinkhorn(x, y, blur=0.3, max_iter=500, tol=1e-12)
    assert r.n_iter.item() < 500
    assert r.marginal_error.item() < 1e-8


# ---------------------------------------------------------------- POT / dense
def test_sinkhorn2_matches_pot():
    ot = pytest.importorskip("ot")
    a = torch.rand(40, dtype=D64)
    b = torch.rand(55, dtype=D64)
    a, b = a / a.sum(), b / b.sum()
    M = torch.rand(40, 55, dtype=D64)
    for reg in (0.05, 0.5):
        want = ot.sinkhorn2(a, b, M, reg, method="sinkhorn_log", numItermax=200)
        assert_close(hp.ot.sinkhorn2(a, b, M, reg, numItermax=200), want, D64)
        assert_close(hp.ot.sinkhorn2(a, b, M, reg, numItermax=200, backend="reference"), want, D64)
    want = ot.sinkhorn2(torch.tensor([]), torch.tensor([]), M.float(), 0.1, method="sinkhorn_log")
    assert_close(hp.ot.sinkhorn2([], [], M.float(), 0.1), want, torch.float32)


def test_sinkhorn_dense_batched_and_unbalanced_reference():
    C = torch.rand(3, 9, 11, dtype=D64)
    a = torch.rand(3, 9, dtype=D64)
    b = torch.rand(3, 11, dtype=D64)
    for reach in (None, 0.4):
        r = hp.ot.sinkhorn_dense(C, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True), eps=0.1, reach=reach)
        rr = hp.ot.sinkhorn_dense(C, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True), eps=0.1, reach=reach,
                                  backend="reference")
        assert_close(r.loss, rr.loss, D64)
        assert_close(r.f, rr.f, D64)
        assert (r.n_iter == rr.n_iter).all()


def test_plan_utilities():
    x, y = clouds(2, 12, 15)
    r = hp.ot.sinkhorn(x, y, blur=0.2)
    P = hp.ot.transport_plan(r, x, y)
    V_ = torch.rand(2, 15, 4, dtype=D64)
    assert_close(hp.ot.apply_plan(r, x, y, V_), P @ V_, D64)
    assert_close(hp.ot.barycentric_map(r, x, y), (P @ y) / P.sum(2, keepdim=True), D64)
    r1 = hp.ot.sinkhorn(x, y, blur=0.2, p=1)
    assert_close(hp.ot.apply_plan(r1, x, y, V_), hp.ot.transport_plan(r1, x, y) @ V_, D64)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    (dict(blur=0.0), "blur"), (dict(blur=float("nan")), "blur"), (dict(reach=-1.0), "reach"),
    (dict(reach_x=float("inf")), "reach_x"), (dict(p=3), "p must"), (dict(scaling=1.5), "scaling"),
    (dict(max_iter=0), "max_iter"), (dict(tol=-1.0), "tol"),
])
def test_bad_parameters(kw, match):
    x, y = torch.rand(5, 2), torch.rand(6, 2)
    with pytest.raises(ValueError, match=match):
        hp.ot.sinkhorn(x, y, **kw)


def test_bad_inputs():
    x, y = torch.rand(5, 2), torch.rand(6, 2)
    with pytest.raises(ValueError, match="a must be non-negative"):
        hp.ot.sinkhorn(x, y, -torch.ones(5))
    with pytest.raises(ValueError, match="b must have shape"):
        hp.ot.sinkhorn(x, y, None, torch.ones(4))
    with pytest.raises(ValueError, match="feature dimension"):
        hp.ot.sinkhorn(x, torch.rand(6, 3))
    with pytest.raises(TypeError, match="x must be"):
        hp.ot.sinkhorn(x.long(), y)
    with pytest.raises(ValueError, match="batch size"):
        hp.ot.sinkhorn(torch.rand(2, 5, 2), torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match="eps"):
        hp.ot.sinkhorn_dense(torch.rand(3, 4), eps=0.0)
    with pytest.raises(ValueError, match="a must not sum to 0"):
        hp.ot.sinkhorn_dense(torch.rand(3, 4), torch.zeros(3), eps=0.1)
    with pytest.raises(ValueError, match="reg"):
        hp.ot.sinkhorn2(torch.ones(3) / 3, torch.ones(4) / 4, torch.rand(3, 4), -1.0)
    with pytest.raises(ValueError, match="loss"):
        hp.ot.SamplesLoss("wasserstein")
    with pytest.raises(ValueError, match="two .* or four"):
        hp.ot.SamplesLoss()(x)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            hp.ot.sinkhorn(x, y.cuda())


def test_nan_propagates_without_hanging():
    x, y = torch.rand(5, 2), torch.rand(6, 2)
    x[0, 0] = float("nan")
    r = hp.ot.sinkhorn(x, y, max_iter=50, tol=1e-6)
    assert torch.isnan(r.loss)


def test_resolution_warning_when_eps_is_below_the_costs_rounding():
    x = torch.randn(3, 3, dtype=torch.float64)
    y = torch.randn(2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hp.ot.ResolutionWarning)
        hp.ot.sinkhorn(x, y, blur=0.05, p=1, max_iter=30)          # resolved: silent
        hp.ot.sinkhorn_dense(torch.rand(4, 5), eps=0.01)
    x[0, 0] = -1e30
    with pytest.warns(hp.ot.ResolutionWarning, match="below the resolution"):
        hp.ot.sinkhorn(x, y, blur=0.05, p=1, max_iter=30)
    C = torch.rand(4, 5)
    C[0, 0] = 1e9                      # a 'forbidden pair' marker carries no mass: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", hp.ot.ResolutionWarning)
        hp.ot.sinkhorn_dense(C, eps=0.01)
    with pytest.warns(hp.ot.ResolutionWarning):
        hp.ot.sinkhorn_dense(torch.full((1, 1), 1e9), eps=0.01)   # the only pair: it carries the plan
