"""POT's own test cases for entropic OT (test/test_bregman.py, test/unbalanced/test_sinkhorn.py),
written anew against hotpath: ot.sinkhorn -> hp.ot.sinkhorn_plan, ot.sinkhorn2 -> hp.ot.sinkhorn2,
numpy in / numpy out as in POT. Cases for APIs hotpath does not have (barycenters, greenkhorn,
epsilon-scaling, screenkhorn, convolutional) are listed with the reason in docs/ot.md."""
import warnings
from itertools import product

import numpy as np
import pytest
import torch

import hotpath as hp

ot = pytest.importorskip("ot")

METHODS = ["sinkhorn", "sinkhorn_stabilized", "sinkhorn_log"]


def _gauss_pair(n=100):
    a1 = ot.datasets.make_1D_gauss(n, m=30, s=10)
    a2 = ot.datasets.make_1D_gauss(n, m=40, s=10)
    return a1, a2, ot.utils.dist0(n)


@pytest.mark.parametrize("verbose, warn", product([True, False], [True, False]))
def test_sinkhorn(verbose, warn, capsys):
    rng = np.random.RandomState(0)
    x = rng.randn(100, 2)
    u = ot.utils.unif(100)
    M = ot.dist(x, x)
    G = hp.ot.sinkhorn_plan(u, u, M, 1, stopThr=1e-10, verbose=verbose, warn=warn)
    assert isinstance(G, np.ndarray)
    np.testing.assert_allclose(u, G.sum(1), atol=1e-5)
    np.testing.assert_allclose(u, G.sum(0), atol=1e-5)
    with pytest.warns(UserWarning):
        hp.ot.sinkhorn_plan(u, u, M, 1, stopThr=0, numItermax=1)


@pytest.mark.parametrize("method", METHODS)
def test_convergence_warning(method):
    a1, a2, M = _gauss_pair()
    with pytest.warns(UserWarning):
        hp.ot.sinkhorn_plan(a1, a2, M, 1.0, method=method, stopThr=0, numItermax=1)
    # POT >= 0.9's sinkhorn2 defaults to warn=False; with warn=True it warns
    with pytest.warns(UserWarning):
        hp.ot.sinkhorn2(a1, a2, M, 1, method=method, stopThr=0, numItermax=1, warn=True)


def test_not_implemented_method():
    rng = np.random.RandomState(42)
    a1, a2 = rng.rand(2, 100)
    M = ot.utils.dist0(100)
    with pytest.raises(ValueError):
        hp.ot.sinkhorn_plan(a1, a2, M, 0.01, method="new_method")
    with pytest.raises(ValueError):
        hp.ot.sinkhorn2(a1, a2, M, 0.01, method="new_method")


def test_sinkhorn_stabilization():
    # reg = 1e-5 on costs up to 1e4: the log-domain loop must not overflow; the entropic value
    # is then the exact OT value (POT compares its log and stabilized solvers to each other)
    a1, a2, M = _gauss_pair()
    loss1 = hp.ot.sinkhorn2(a1, a2, M, 1e-5, method="sinkhorn_log")
    loss2 = hp.ot.sinkhorn2(a1, a2, M, 1e-5, method="sinkhorn_stabilized")
    np.testing.assert_allclose(loss1, loss2, atol=1e-6)
    assert np.isfinite(loss1)


@pytest.mark.parametrize("method, verbose, warn", product(METHODS, [True, False], [True, False]))
def test_sinkhorn_multi_b(method, verbose, warn, capsys):
    rng = np.random.RandomState(0)
    x = rng.randn(10, 2)
    u = ot.utils.unif(10)
    b = rng.rand(10, 3)
    b = b / np.sum(b, 0, keepdims=True)
    M = ot.dist(x, x)
    loss0, log = hp.ot.sinkhorn_plan(u, b, M, 0.1, method=method, stopThr=1e-10, log=True)
    loss = [hp.ot.sinkhorn2(u, b[:, k], M, 0.1, method=method, stopThr=1e-10, verbose=verbose, warn=warn)
            for k in range(3)]
    np.testing.assert_allclose(loss0, loss, atol=1e-4)
    assert log["log_u"].shape == (10, 3) and log["v"].shape == (10, 3)


def test_sinkhorn_backends():
    rng = np.random.RandomState(0)
    x, y = rng.randn(100, 2), rng.randn(100, 2)
    a = ot.utils.unif(100)
    M = ot.dist(x, y)
    G = hp.ot.sinkhorn_plan(a, a, M, 1)
    Gb = hp.ot.sinkhorn_plan(torch.from_numpy(a), torch.from_numpy(a), torch.from_numpy(M), 1)
    assert isinstance(Gb, torch.Tensor) and Gb.dtype == torch.float64
    np.testing.assert_allclose(G, Gb.numpy())
    Lb = hp.ot.sinkhorn2(torch.from_numpy(a), torch.from_numpy(a), torch.from_numpy(M), 1)
    np.testing.assert_allclose(hp.ot.sinkhorn2(a, a, M, 1), Lb.numpy())


def test_sinkhorn2_gradients():
    rng = np.random.RandomState(0)
    x, y = rng.randn(100, 2), rng.randn(100, 2)
    a = ot.utils.unif(100)
    M = ot.dist(x, y)
    a1 = torch.tensor(a, requires_grad=True)
    b1 = torch.tensor(a, requires_grad=True)
    M1 = torch.tensor(M, requires_grad=True)
    val = hp.ot.sinkhorn2(a1, b1, M1, 1)
    val.backward()
    assert a1.shape == a1.grad.shape
    assert b1.shape == b1.grad.shape
    assert M1.shape == M1.grad.shape
    # and the same gradient as POT's autograd (exact derivative of the value)
    a2, b2, M2 = (torch.tensor(t, requires_grad=True) for t in (a, a, M))
    ot.sinkhorn2(a2, b2, M2, 1).backward()
    np.testing.assert_allclose(M1.grad.numpy(), M2.grad.numpy(), rtol=1e-5, atol=1e-10)


def test_sinkhorn_empty(capsys):
    rng = np.random.RandomState(0)
    x = rng.randn(100, 2)
    u = ot.utils.unif(100)
    M = ot.dist(x, x)
    for method in METHODS:
        G, log = hp.ot.sinkhorn_plan([], [], M, 1, stopThr=1e-10, method=method, verbose=True, log=True)
        np.testing.assert_allclose(u, G.sum(1), atol=1e-5)
        np.testing.assert_allclose(u, G.sum(0), atol=1e-5)


def test_sinkhorn_variants():
    rng = np.random.RandomState(0)
    x = rng.randn(100, 2)
    u = ot.utils.unif(100)
    M = ot.dist(x, x)
    ub, Mb = torch.from_numpy(u), torch.from_numpy(M)
    G = hp.ot.sinkhorn_plan(u, u, M, 1, method="sinkhorn", stopThr=1e-10)
    Gl = hp.ot.sinkhorn_plan(ub, ub, Mb, 1, method="sinkhorn_log", stopThr=1e-10).numpy()
    G0 = hp.ot.sinkhorn_plan(ub, ub, Mb, 1, method="sinkhorn", stopThr=1e-10).numpy()
    Gs = hp.ot.sinkhorn_plan(ub, ub, Mb, 1, method="sinkhorn_stabilized", stopThr=1e-10).numpy()
    np.testing.assert_allclose(G, G0, atol=1e-5)
    np.testing.assert_allclose(G, Gl, atol=1e-5)
    np.testing.assert_allclose(G0, Gs, atol=1e-5)
    # and POT's own plan
    np.testing.assert_allclose(G, ot.sinkhorn(u, u, M, 1, stopThr=1e-10), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_variants_dtype_device(method, dtype):
    x = np.random.RandomState(3).randn(100, 2)
    u = ot.utils.unif(100)
    M = ot.dist(x, x)
    ub, Mb = torch.tensor(u, dtype=dtype), torch.tensor(M, dtype=dtype)
    Gb = hp.ot.sinkhorn_plan(ub, ub, Mb, 1, method=method, stopThr=1e-10)
    lossb = hp.ot.sinkhorn2(ub, ub, Mb, 1, method=method, stopThr=1e-10)
    assert Gb.dtype == dtype and Gb.device == Mb.device
    assert lossb.dtype == dtype and lossb.device == Mb.device


def test_sinkhorn_variants_multi_b():
    rng = np.random.RandomState(0)
    x = rng.randn(50, 2)
    u = ot.utils.unif(50)
    b = rng.rand(50, 3)
    b = b / np.sum(b, 0, keepdims=True)
    M = ot.dist(x, x)
    ub, bb, Mb = (torch.from_numpy(t) for t in (u, b, M))
    G = hp.ot.sinkhorn_plan(u, b, M, 1, method="sinkhorn", stopThr=1e-10)
    Gl = hp.ot.sinkhorn_plan(ub, bb, Mb, 1, method="sinkhorn_log", stopThr=1e-10).numpy()
    Gs = hp.ot.sinkhorn_plan(ub, bb, Mb, 1, method="sinkhorn_stabilized", stopThr=1e-10).numpy()
    np.testing.assert_allclose(G, Gl, atol=1e-5)
    np.testing.assert_allclose(G, Gs, atol=1e-5)
    L = hp.ot.sinkhorn2(u, b, M, 1, method="sinkhorn", stopThr=1e-10)
    np.testing.assert_allclose(L, ot.sinkhorn2(u, b, M, 1, method="sinkhorn", stopThr=1e-10), atol=1e-8)


@pytest.mark.parametrize("verbose, warn", product([True, False], [True, False]))
def test_sinkhorn_variants_log_multib(verbose, warn, capsys):
    rng = np.random.RandomState(0)
    x = rng.randn(50, 2)
    u = ot.utils.unif(50)
    b = rng.rand(50, 3)
    b = b / np.sum(b, 0, keepdims=True)
    M = ot.dist(x, x)
    G0, log0 = hp.ot.sinkhorn_plan(u, b, M, 1, method="sinkhorn", stopThr=1e-10, log=True)
    Gl, logl = hp.ot.sinkhorn_plan(u, b, M, 1, method="sinkhorn_log", stopThr=1e-10, log=True, verbose=verbose,
                                   warn=warn)
    Gs, logs = hp.ot.sinkhorn_plan(u, b, M, 1, method="sinkhorn_stabilized", stopThr=1e-10, log=True,
                                   verbose=verbose, warn=warn)
    np.testing.assert_allclose(G0, Gs, atol=1e-5)
    np.testing.assert_allclose(G0, Gl, atol=1e-5)


def test_sinkhorn_variants_log():
    rng = np.random.RandomState(0)
    x = rng.randn(50, 2)
    u = ot.utils.unif(50)
    M = ot.dist(x, x)
    G0, log0 = hp.ot.sinkhorn_plan(u, u, M, 1, method="sinkhorn", stopThr=1e-10, log=True)
    Gl, logl = hp.ot.sinkhorn_plan(u, u, M, 1, method="sinkhorn_log", stopThr=1e-10, log=True)
    Gs, logs = hp.ot.sinkhorn_plan(u, u, M, 1, method="sinkhorn_stabilized", stopThr=1e-10, log=True)
    np.testing.assert_allclose(G0, Gs, atol=1e-5)
    np.testing.assert_allclose(G0, Gl, atol=1e-5)
    _, logp = ot.sinkhorn(u, u, M, 1, method="sinkhorn_log", stopThr=1e-10, log=True)
    assert set(logl) == set(logp) and logl["niter"] == logp["niter"]


def test_sinkhorn_warmstart():
    rng = np.random.RandomState(0)
    a, b = ot.unif(30), ot.unif(40)
    M = ot.dist(rng.randn(30, 2), rng.randn(40, 2))
    _, log = hp.ot.sinkhorn_plan(a, b, M, 0.5, method="sinkhorn_log", log=True, stopThr=1e-12)
    # a warm start at the solution converges at the first check
    _, log2 = hp.ot.sinkhorn_plan(a, b, M, 0.5, method="sinkhorn_log", log=True, stopThr=1e-9,
                                  warmstart=(log["log_u"], log["log_v"]))
    assert log2["niter"] == 0


def test_empirical_sinkhorn():
    # POT's empirical_sinkhorn(X_s, X_t, reg) is the plan of the cost |x - y|^2 at eps = reg; the
    # point-cloud solver's cost is |x - y|^2 / 2, so blur = sqrt(reg / 2) gives the same plan
    n = 100
    a = ot.unif(n)
    X_s = np.reshape(np.arange(n, dtype=np.float64), (n, 1))
    X_t = np.reshape(np.arange(0, n, dtype=np.float64), (n, 1))
    M = ot.dist(X_s, X_t)
    for reg in (1.0, 0.5):
        G_pot = ot.sinkhorn(a, a, M, reg, stopThr=1e-12, numItermax=10000)
        xs, xt = torch.from_numpy(X_s), torch.from_numpy(X_t)
        r = hp.ot.sinkhorn(xs, xt, blur=np.sqrt(reg / 2), max_iter=10000, tol=1e-12)
        G = hp.ot.transport_plan(r, xs, xt).numpy()
        np.testing.assert_allclose(G.sum(1), G_pot.sum(1), atol=1e-5)
        np.testing.assert_allclose(G.sum(0), G_pot.sum(0), atol=1e-5)
        np.testing.assert_allclose(G, G_pot, atol=1e-6)
        np.testing.assert_allclose(hp.ot.sinkhorn2(a, a, M, reg, stopThr=1e-12, numItermax=10000),
                                   ot.bregman.empirical_sinkhorn2(X_s, X_t, reg, stopThr=1e-12, numIterMax=10000),
                                   atol=1e-5)


def test_empirical_sinkhorn_divergence():
    n = 10
    a = ot.unif(n)
    X_s = np.reshape(np.arange(n, dtype=np.float64), (n, 1))
    X_t = np.reshape(np.arange(0, n * 2, 2, dtype=np.float64), (n, 1))
    M, M_s, M_t = ot.dist(X_s, X_t), ot.dist(X_s, X_s), ot.dist(X_t, X_t)
    emp = ot.bregman.empirical_sinkhorn_divergence(X_s, X_t, 1)
    ours = hp.ot.sinkhorn2(a, a, M, 1) - 0.5 * hp.ot.sinkhorn2(a, a, M_s, 1) - 0.5 * hp.ot.sinkhorn2(a, a, M_t, 1)
    np.testing.assert_allclose(emp, ours, atol=1e-5)
    v_ab, log_ab = hp.ot.sinkhorn2(a, a, M, 1, log=True)
    v_a, _ = hp.ot.sinkhorn2(a, a, M_s, 1, log=True)
    v_b, _ = hp.ot.sinkhorn2(a, a, M_t, 1, log=True)
    emp_log, _ = ot.bregman.empirical_sinkhorn_divergence(X_s, X_t, 1, log=True)
    np.testing.assert_allclose(emp_log, v_ab - 0.5 * (v_a + v_b), atol=1e-5)


def test_stabilized_vs_sinkhorn_multidim():
    n = 100
    a = ot.datasets.make_1D_gauss(n, m=20, s=5)
    b1 = ot.datasets.make_1D_gauss(n, m=60, s=8)
    b2 = ot.datasets.make_1D_gauss(n, m=30, s=4)
    b = np.vstack((b1, b2)).T
    M = ot.utils.dist0(n)
    M /= np.median(M)
    G, log = hp.ot.sinkhorn_plan(a, b, M, reg=0.1, method="sinkhorn_stabilized", log=True)
    G2, log2 = hp.ot.sinkhorn_plan(a, b, M, 0.1, method="sinkhorn", log=True)
    np.testing.assert_allclose(G, G2)
    np.testing.assert_allclose(G, ot.sinkhorn(a, b, M, 0.1), rtol=1e-6)


def test_implemented_methods():
    rng = np.random.RandomState(42)
    x = rng.randn(3, 2)
    a = ot.utils.unif(3)
    M = ot.dist(x, x)
    for method in METHODS:
        hp.ot.sinkhorn_plan(a, a, M, 1.0, method=method)
        hp.ot.sinkhorn2(a, a, M, 1.0, method=method)
    with pytest.raises(ValueError):
        hp.ot.sinkhorn2(a, a, M, 1.0, method="foo")


# ---------------------------------------------------------------- unbalanced (POT's reg_type="kl")
def test_unbalanced_convergence_fixed_point():
    """POT's KL-penalized Sinkhorn (reg_type='kl': reference measure a b^T) is hotpath's
    sinkhorn_dense(reach=reg_m): same fixed point, same plan, same <P, M>."""
    rng = np.random.RandomState(42)
    n = 100
    x = rng.randn(n, 2)
    a = ot.utils.unif(n)
    b = ot.utils.unif(n) * 1.5
    M = ot.dist(x, x)
    epsilon, reg_m = 1.0, 1.0
    G, log = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg=epsilon, reg_m=reg_m, log=True, stopThr=1e-12,
                                               numItermax=5000)
    loss = ot.unbalanced.sinkhorn_unbalanced2(a, b, M, reg=epsilon, reg_m=reg_m, stopThr=1e-12, numItermax=5000)
    r = hp.ot.sinkhorn_dense(torch.from_numpy(M), torch.from_numpy(a), torch.from_numpy(b), eps=epsilon,
                             reach=reg_m, max_iter=5000, tol=1e-12)
    f, g = r.f.numpy(), r.g.numpy()
    P = a[:, None] * b[None] * np.exp((f[:, None] + g[None] - M) / epsilon)
    np.testing.assert_allclose(P, G, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose((P * M).sum(), loss, rtol=1e-6)
    # the fixed-point equations, in the log domain (POT's check)
    fi = reg_m / (reg_m + epsilon)
    logKv = np.log(np.exp(g[None] / epsilon - M / epsilon + np.log(b)[None]).sum(1))
    np.testing.assert_allclose(f / epsilon, -fi * logKv, atol=1e-8)


def test_sinkhorn_numpy_float32_stays_float32():
    rng = np.random.RandomState(5)
    a = ot.unif(20).astype(np.float32)
    M = rng.rand(20, 20).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = hp.ot.sinkhorn2(a, a, M, 0.5)
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, ot.sinkhorn2(a.astype(np.float64), a.astype(np.float64), M.astype(np.float64), 0.5),
                               rtol=1e-5)
