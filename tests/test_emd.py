"""Exact optimal transport hp.ot.emd / emd2: POT cross-checks (plan cost to 1e-9, duals and
gradients), the reference on small sizes, batched == looped, gradcheck, dtype / numpy rules,
POT's mass rule and bad input."""
import zlib

import numpy as np
import pytest
import torch

import hotpath as hp

from conftest import backend_param

ot = pytest.importorskip("ot")


def _problem(n, m, kind, rng):
    a, b = rng.random(n) + 0.05, rng.random(m) + 0.05
    if kind == "uniform":
        a, b = np.ones(n), np.ones(m)
    if kind == "zeros":
        a[rng.random(n) < 0.3] = 0
        b[rng.random(m) < 0.3] = 0
        a[0], b[0] = a[0] + 0.5, b[0] + 0.5
    a, b = a / a.sum(), b / b.sum()
    if kind == "integer":
        M = rng.integers(0, 3, (n, m)).astype(np.float64)
    elif kind == "huge":
        M = rng.random((n, m))
        M[0, 0] = 1e9
    else:
        x, y = rng.standard_normal((n, 3)), rng.standard_normal((m, 3))
        M = ((x[:, None] - y[None]) ** 2).sum(-1)
    return a, b, M


def _check_plan(G, a, b, M, cost_ref):
    G = np.asarray(G, dtype=np.float64)
    assert G.min() >= 0
    np.testing.assert_allclose(G.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(G.sum(0), b * a.sum() / b.sum(), atol=1e-12)
    assert abs((G * M).sum() - cost_ref) <= 1e-9 * max(abs(cost_ref), 1e-12)


@pytest.mark.parametrize("kind", ["weighted", "uniform", "zeros", "integer", "huge"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 3), (59, 59), (97, 40), (20, 97)])
def test_emd_matches_pot(kind, shape):
    rng = np.random.default_rng(zlib.crc32(repr((kind, shape)).encode()))
    a, b, M = _problem(*shape, kind, rng)
    G0 = ot.emd(a, b, M)
    c0 = float((G0 * M).sum())
    G = hp.ot.emd(a, b, M)
    assert isinstance(G, np.ndarray) and G.shape == shape
    _check_plan(G, a, b, M, c0)
    c = hp.ot.emd2(a, b, M)
    assert isinstance(c, float) and abs(c - c0) <= 1e-9 * max(abs(c0), 1e-12)


def test_emd_duals_match_pot_when_unique():
    rng = np.random.default_rng(0)
    a, b, M = _problem(30, 25, "weighted", rng)  # generic weights: a nondegenerate optimum
    _, log0 = ot.emd(a, b, M, log=True)
    G, log = hp.ot.emd(a, b, M, log=True)
    np.testing.assert_allclose(log["u"], log0["u"], atol=1e-10)
    np.testing.assert_allclose(log["v"], log0["v"], atol=1e-10)
    assert abs(log["cost"] - log0["cost"]) < 1e-12 and log["warning"] is None
    # dual feasibility and strong duality
    assert (log["u"][:, None] + log["v"][None] - M).max() < 1e-12
    assert abs(a @ log["u"] + b @ log["v"] - log["cost"]) < 1e-12


def test_emd2_gradients_match_pot_torch():
    rng = np.random.default_rng(1)
    a, b, M = _problem(17, 13, "weighted", rng)
    ins = [torch.tensor(t, requires_grad=True) for t in (a, b, M)]
    ins0 = [torch.tensor(t, requires_grad=True) for t in (a, b, M)]
    hp.ot.emd2(*ins).backward()
    ot.emd2(*ins0).backward()
    for t, t0 in zip(ins, ins0):
        torch.testing.assert_close(t.grad, t0.grad, atol=1e-10, rtol=1e-9)


def test_emd2_gradcheck():
    rng = np.random.default_rng(2)
    a, b, M = _problem(6, 5, "weighted", rng)
    at, bt = torch.tensor(a), torch.tensor(b)
    Mt = torch.tensor(M, requires_grad=True)
    torch.autograd.gradcheck(lambda M_: hp.ot.emd2(at, bt, M_), (Mt,), eps=1e-7, atol=1e-6)
    # a, b: POT's gradients are the centered duals, the derivative along mass-preserving moves
    for which in range(2):
        w = [at.clone(), bt.clone()]
        k = w[which].numel()
        dirn = torch.zeros(k, dtype=torch.float64)
        dirn[0], dirn[k - 1] = 1.0, -1.0
        x = w[which].clone().requires_grad_(True)
        args = [x, bt, Mt.detach()] if which == 0 else [at, x, Mt.detach()]
        hp.ot.emd2(*args).backward()
        h = 1e-7
        plus, minus = list(args), list(args)
        plus[which] = x.detach() + h * dirn
        minus[which] = x.detach() - h * dirn
        fd = (hp.ot.emd2(*plus) - hp.ot.emd2(*minus)) / (2 * h)
        assert abs(float(x.grad @ dirn) - float(fd)) < 1e-6


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("kind", ["weighted", "uniform", "integer"])
def test_emd_reference_small(backend, kind):
    rng = np.random.default_rng(3)
    for shape in [(1, 3), (4, 4), (5, 3)]:
        a, b, M = _problem(*shape, kind, rng)
        G0 = ot.emd(a, b, M)
        G = hp.ot.emd(torch.tensor(a), torch.tensor(b), torch.tensor(M), backend=backend)
        _check_plan(G.numpy(), a, b, M, float((G0 * M).sum()))


@pytest.mark.parametrize("B", [1, 4])
def test_emd_batched_equals_looped(B):
    rng = np.random.default_rng(B)
    probs = [_problem(23, 31, "weighted", rng) for _ in range(B)]
    A = torch.tensor(np.stack([p[0] for p in probs]))
    Bw = torch.tensor(np.stack([p[1] for p in probs]))
    M = torch.tensor(np.stack([p[2] for p in probs]))
    G = hp.ot.emd(A, Bw, M)
    c = hp.ot.emd2(A, Bw, M)
    assert G.shape == (B, 23, 31) and c.shape == (B,)
    for k, (a, b, Mk) in enumerate(probs):
        c0 = ot.emd2(a, b, Mk)
        _check_plan(G[k].numpy(), a, b, Mk, c0)
        assert abs(float(c[k]) - c0) < 1e-9 * c0
    # shared 1-D weights broadcast over the batch
    G1 = hp.ot.emd(A[0], Bw[0], M)
    for k in range(B):
        _check_plan(G1[k].numpy(), probs[0][0], probs[0][1], probs[k][2], ot.emd2(probs[0][0], probs[0][1], probs[k][2]))


def test_emd_large_weighted():
    rng = np.random.default_rng(4)
    a, b, M = _problem(300, 280, "weighted", rng)
    c0 = ot.emd2(a, b, M)
    assert abs(hp.ot.emd2(a, b, M) - c0) < 1e-9 * c0


def test_emd_dtypes_and_uniform_default():
    rng = np.random.default_rng(5)
    a, b, M = _problem(12, 9, "weighted", rng)
    c0 = ot.emd2(a, b, M)
    # float32 cost: the exact optimum of the float32 matrix (solved in float64)
    M32 = torch.tensor(M, dtype=torch.float32)
    c32 = hp.ot.emd2(torch.tensor(a), torch.tensor(b), M32)
    assert abs(float(c32) - ot.emd2(a, b, M32.double().numpy())) < 1e-9
    G = hp.ot.emd(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), M32)
    assert G.dtype == torch.float32
    # integer costs: float64
    Mi = torch.tensor(rng.integers(0, 9, (12, 9)))
    assert hp.ot.emd(None, [], Mi).dtype == torch.float64
    # uniform weights when a / b are empty (POT)
    cu = hp.ot.emd2([], [], M)
    assert abs(cu - ot.emd2([], [], M)) < 1e-9 * cu
    # POT's rule: masses within 1.5e-6 are accepted, b scaled to a's mass
    c = hp.ot.emd2(a, b * (1 + 1e-7), M)
    assert abs(c - c0) < 1e-6 * c0
    assert abs(c - ot.emd2(a, b * (1 + 1e-7), M)) < 1e-9 * c0


def test_emd_non_contiguous_and_warning():
    rng = np.random.default_rng(6)
    a, b, M = _problem(10, 14, "weighted", rng)
    Mt = torch.tensor(M.T.copy()).t()  # a transposed view
    assert not Mt.is_contiguous()
    assert abs(float(hp.ot.emd2(torch.tensor(a), torch.tensor(b), Mt)) - ot.emd2(a, b, M)) < 1e-12
    with pytest.warns(UserWarning, match="numItermax"):
        hp.ot.emd(a, b, M, numItermax=2)


def test_emd_bad_input():
    a, b, M = np.ones(3) / 3, np.ones(4) / 4, np.random.default_rng(0).random((3, 4))
    with pytest.raises(ValueError, match="same total mass"):
        hp.ot.emd(a, b * 1.01, M)
    with pytest.raises(ValueError, match="same total mass"):
        hp.ot.emd2(torch.tensor(a), torch.tensor(b) * 1.001, torch.tensor(M))
    with pytest.raises(ValueError, match="a must be non-negative"):
        hp.ot.emd(np.array([0.5, -0.1, 0.6]), b, M)
    with pytest.raises(ValueError, match="b must have 4"):
        hp.ot.emd(a, np.ones(5) / 5, M)
    with pytest.raises(ValueError, match="M"):
        hp.ot.emd(a, b, np.where(M > 0.5, np.nan, M))
    with pytest.raises(ValueError, match="M"):
        hp.ot.emd2(a, b, np.where(M > 0.5, np.inf, M))
    with pytest.raises(ValueError, match="M must not be empty"):
        hp.ot.emd([], [], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="M must be"):
        hp.ot.emd(a, b, np.ones(3))
    with pytest.raises(ValueError, match="a must be finite"):
        hp.ot.emd(np.array([np.nan, 0.5, 0.5]), b, M)
    with pytest.raises(ValueError, match="positive total mass"):
        hp.ot.emd(np.zeros(3), np.zeros(4), M)
    with pytest.raises(ValueError, match="numItermax"):
        hp.ot.emd(a, b, M, numItermax=0)
    with pytest.raises(TypeError, match="M"):
        hp.ot.emd(a, b, torch.ones(3, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="device"):
        hp.ot.emd(torch.tensor(a, device="meta"), torch.tensor(b), torch.tensor(M))


def test_emd_no_stall_and_huge_entries():
    # a stream of small problems with a few huge entries; at one of them (50 x 2) rounding once
    # made a tree arc price negative and the simplex pivoted on it forever
    rng = np.random.default_rng(123)
    for t in range(60):
        n, m = rng.integers(1, 100, 2)
        a, b = rng.random(n) + .05, rng.random(m) + .05
        if t % 3 == 0:
            a, b = np.ones(n), np.ones(m)
        a, b = a / a.sum(), b / b.sum()
        M = rng.random((n, m)) * (10.0 ** rng.integers(-1, 3))
        for _ in range(rng.integers(0, 4)):
            M[rng.integers(n), rng.integers(m)] = 10.0 ** rng.integers(3, 10)
        G, log = hp.ot.emd(a, b, M, log=True)
        assert log["warning"] is None, t
        # never above POT's cost (POT itself loses digits at this dynamic range)
        assert (G * M).sum() <= ot.emd2(a, b, M) * (1 + 1e-9) + 1e-15, t
        np.testing.assert_allclose(G.sum(1), a, atol=1e-12)
