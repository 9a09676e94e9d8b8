"""Linear sum assignment, minibatch couplings and balanced assignment (hotpath.ot.assignment):
scipy / lap cross-checks on random, tied, rectangular and adversarial costs, the reference on
small sizes, batched == looped, dtype rule, numpy in / out, opcheck, bad input."""
import zlib

import numpy as np
import pytest
import torch

import hotpath as hp

from conftest import backend_param

sp_opt = pytest.importorskip("scipy.optimize")
try:
    import lap
except ImportError:  # pragma: no cover
    lap = None

LSA = hp.ot.linear_sum_assignment


def _cost(C, r, c):
    return float(np.asarray(C, dtype=np.float64)[np.asarray(r), np.asarray(c)].sum())


def _make(kind, n, m, rng):
    if kind == "random":
        return rng.random((n, m))
    if kind == "integer":  # many ties
        return rng.integers(0, 4, (n, m)).astype(np.float64)
    if kind == "equal":
        return np.full((n, m), 2.5)
    if kind == "huge":
        C = rng.random((n, m))
        C[rng.integers(n), rng.integers(m)] = 1e12
        return C
    if kind == "forbidden":
        C = rng.random((n, m))
        C[rng.random((n, m)) < 0.3] = np.inf
        return C
    if kind == "sqeuclid":
        x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2))
        return ((x[:, None] - y[None]) ** 2).sum(-1)
    raise AssertionError(kind)


def _check_against_scipy(C, maximize, backend="auto", dtype=torch.float64):
    T = torch.from_numpy(C).to(dtype)
    Cq = T.double().numpy()
    try:
        r0, c0 = sp_opt.linear_sum_assignment(Cq, maximize=maximize)
    except ValueError:
        with pytest.raises(ValueError, match="C"):
            LSA(T, maximize, backend=backend)
        return
    r, c = LSA(T, maximize, backend=backend)
    r, c = r.numpy(), c.numpy()
    k = min(C.shape)
    assert r.shape == c.shape == (k,)
    assert np.all(np.diff(r) > 0) and len(set(c.tolist())) == k
    best = _cost(Cq, r0, c0)
    assert abs(_cost(Cq, r, c) - best) <= 1e-9 * max(1.0, abs(best))


@pytest.mark.parametrize("kind", ["random", "integer", "equal", "huge", "forbidden", "sqeuclid"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (59, 59), (97, 97), (3, 59), (59, 3), (97, 60)])
@pytest.mark.parametrize("maximize", [False, True])
def test_lsa_matches_scipy(kind, shape, maximize):
    rng = np.random.default_rng(zlib.crc32(repr((kind, shape, maximize)).encode()))
    C = _make(kind, *shape, rng)
    if kind == "forbidden" and maximize:
        C = np.where(np.isinf(C), -np.inf, C)
    _check_against_scipy(C, maximize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 64, 256, 1025])
def test_lsa_larger_and_float32(dtype, n):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    _check_against_scipy(C, False, dtype=dtype)


@pytest.mark.skipif(lap is None, reason="lap not installed")
def test_lsa_matches_lap():
    rng = np.random.default_rng(3)
    C = rng.integers(0, 50, (300, 300)).astype(np.float64)
    opt, x, _ = lap.lapjv(C)
    r, c = LSA(C)
    assert abs(_cost(C, r, c) - opt) < 1e-9


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("kind", ["random", "integer", "forbidden"])
@pytest.mark.parametrize("shape", [(1, 4), (5, 5), (7, 4), (4, 9)])
def test_lsa_reference_small(backend, kind, shape):
    rng = np.random.default_rng(7)
    for _ in range(3):
        _check_against_scipy(_make(kind, *shape, rng), False, backend=backend)


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("shape", [(31, 31), (17, 40), (40, 17)])
def test_lsa_batched_equals_looped(B, shape):
    g = torch.Generator().manual_seed(B)
    C = torch.rand(B, *shape, generator=g, dtype=torch.float64)
    r, c = LSA(C)
    k = min(shape)
    assert r.shape == c.shape == (B, k) and r.dtype == c.dtype == torch.int64
    for b in range(B):
        rb, cb = LSA(C[b])
        assert torch.equal(rb, r[b]) and torch.equal(cb, c[b])
        r0, c0 = sp_opt.linear_sum_assignment(C[b].numpy())
        assert abs(_cost(C[b], r[b], c[b]) - _cost(C[b], r0, c0)) < 1e-9


def test_lsa_io_and_dtype_rule():
    C = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    r, c = LSA(C)  # integer numpy in -> numpy out, solved in float64
    assert isinstance(r, np.ndarray) and r.dtype == np.int64
    assert _cost(C, r, c) == 5
    r, c = LSA(C.tolist())
    assert isinstance(r, np.ndarray) and _cost(C, r, c) == 5
    r, c = LSA(torch.tensor(C, dtype=torch.int32))
    assert isinstance(r, torch.Tensor) and _cost(C, r, c) == 5
    r, c = LSA(torch.tensor(C, dtype=torch.float16))
    assert _cost(C, r, c) == 5
    r, c = LSA(torch.tensor(C, dtype=torch.bfloat16), maximize=True)
    assert _cost(C, r, c) == 11
    # 2**60 + small: integers are not squeezed through float32
    big = np.array([[2**52, 2**52 + 1], [2**52 + 1, 2**52 + 3]], dtype=np.int64)
    r, c = LSA(big)
    assert c.tolist() == [1, 0]


def test_lsa_non_contiguous_views():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(40, 60, generator=g, dtype=torch.float64)
    for view in (base.t(), base[::2, 1::3], base[:, :40].t()):
        r, c = LSA(view)
        r0, c0 = sp_opt.linear_sum_assignment(view.numpy())
        assert abs(_cost(view, r, c) - _cost(view, r0, c0)) < 1e-9


def test_lsa_empty():
    for shape in [(0, 3), (3, 0), (0, 0)]:
        r, c = LSA(np.zeros(shape))
        assert r.shape == c.shape == (0,)
    r, c = LSA(torch.zeros(2, 0, 4))
    assert r.shape == (2, 0)
    r, c = LSA(torch.zeros(0, 3, 4))
    assert r.shape == (0, 3)


def test_lsa_bad_input():
    with pytest.raises(ValueError, match="C.*invalid"):
        LSA(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="C.*invalid"):
        LSA(np.array([[1.0, -np.inf], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="C.*invalid"):
        LSA(np.array([[1.0, np.inf], [2.0, 3.0]]), maximize=True)
    with pytest.raises(ValueError, match="C.*infeasible"):
        LSA(np.array([[1.0, np.inf], [np.inf, np.inf]]))
    with pytest.raises(ValueError, match="C.*infeasible"):
        LSA(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, np.inf], [2.0, np.inf]]]))
    with pytest.raises(ValueError, match="C must be"):
        LSA(torch.zeros(3))
    with pytest.raises(ValueError, match="C must be"):
        LSA(torch.zeros(2, 2, 2, 2))
    with pytest.raises(TypeError, match="C"):
        LSA(torch.zeros(2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="C"):
        LSA(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="maximize"):
        LSA(torch.zeros(2, 2), maximize="yes")
    with pytest.raises(ValueError, match="backend"):
        LSA(torch.zeros(2, 2), backend="gpu")


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    lsa, emd = torch.ops.hotpath.lsa_solve.default, torch.ops.hotpath.emd_solve.default
    torch.library.opcheck(lsa, (torch.rand(2, 5, 5, generator=g, dtype=torch.float64), False))
    torch.library.opcheck(lsa, (torch.rand(1, 6, 3, generator=g), True))
    a = torch.rand(2, 5, generator=g, dtype=torch.float64)
    a = a / a.sum(1, keepdim=True)
    b = torch.rand(2, 4, generator=g, dtype=torch.float64)
    b = b / b.sum(1, keepdim=True)
    torch.library.opcheck(emd, (a, b, torch.rand(2, 5, 4, generator=g), 1000))


# ------------------------------------------------------------------------------ minibatch coupling
def test_minibatch_exact_square_is_a_permutation():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randn(64, 5, generator=g, dtype=torch.float64)
    i, j = hp.ot.minibatch_coupling(x0, x1, replace=False, generator=g)
    assert i.shape == j.shape == (64,) and i.dtype == torch.int64
    assert sorted(i.tolist()) == list(range(64)) and sorted(j.tolist()) == list(range(64))
    C = torch.cdist(x0, x1) ** 2
    r0, c0 = sp_opt.linear_sum_assignment(C.numpy())
    assert abs(float(C[i, j].sum()) - _cost(C, r0, c0)) < 1e-9
    # with replacement: every drawn pair is a cell of the optimal permutation
    i, j = hp.ot.minibatch_coupling(x0, x1, batch_size=200, generator=g)
    assert i.shape == (200,)
    assert all(c0[a] == b for a, b in zip(i.tolist(), j.tolist()))


def test_minibatch_matches_pot_plan_cost():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(40, 7, generator=g), torch.randn(40, 7, generator=g)
    i, j = hp.ot.minibatch_coupling(x0, x1, replace=False, generator=g)
    M = (torch.cdist(x0.double(), x1.double()) ** 2).numpy()
    pot = ot.emd2(ot.unif(40), ot.unif(40), M)
    assert abs(float(M[i.numpy(), j.numpy()].mean()) - pot) < 1e-6 * pot


def test_minibatch_rectangular_and_sinkhorn_follow_the_plan():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    M = (torch.cdist(x0, x1) ** 2).numpy()
    for method, plan in (("exact", ot.emd(ot.unif(6), ot.unif(4), M)),
                         ("sinkhorn", ot.sinkhorn(ot.unif(6), ot.unif(4), M, 0.5))):
        i, j = hp.ot.minibatch_coupling(x0, x1, method=method, reg=0.5, batch_size=40000, generator=g)
        freq = np.zeros((6, 4))
        np.add.at(freq, (i.numpy(), j.numpy()), 1.0 / 40000)
        assert np.abs(freq - plan / plan.sum()).max() < 0.01, method
        if method == "exact":
            assert np.all(plan[i.numpy(), j.numpy()] > 0)


@pytest.mark.parametrize("B", [1, 3])
def test_minibatch_batched(B):
    g = torch.Generator().manual_seed(B)
    x0, x1 = torch.randn(B, 33, 4, generator=g), torch.randn(B, 33, 4, generator=g)
    i, j = hp.ot.minibatch_coupling(x0, x1, replace=False, generator=torch.Generator().manual_seed(5))
    assert i.shape == (B, 33)
    for b in range(B):
        C = (torch.cdist(x0[b].double(), x1[b].double()) ** 2).numpy()
        r0, c0 = sp_opt.linear_sum_assignment(C)
        assert abs(C[i[b].numpy(), j[b].numpy()].sum() - C[r0, c0].sum()) < 1e-6 * C[r0, c0].sum()
    # the generator makes draws reproducible
    a = hp.ot.minibatch_coupling(x0, x1, generator=torch.Generator().manual_seed(9))
    b_ = hp.ot.minibatch_coupling(x0, x1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1])


def test_minibatch_bad_input():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="method"):
        hp.ot.minibatch_coupling(x, x, method="auction")
    with pytest.raises(ValueError, match="x0"):
        hp.ot.minibatch_coupling(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="x0"):
        hp.ot.minibatch_coupling(torch.randn(5), x)
    with pytest.raises(TypeError, match="x1"):
        hp.ot.minibatch_coupling(x, x.numpy())
    with pytest.raises(TypeError, match="x0"):
        hp.ot.minibatch_coupling(x.long(), x)
    with pytest.raises(ValueError, match="batch_size"):
        hp.ot.minibatch_coupling(x, x, batch_size=6, replace=False)
    with pytest.raises(ValueError, match="batch_size"):
        hp.ot.minibatch_coupling(x, x, batch_size=-1)
    with pytest.raises(ValueError, match="reg"):
        hp.ot.minibatch_coupling(x, x, method="sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="empty"):
        hp.ot.minibatch_coupling(torch.randn(0, 3), x)


# ------------------------------------------------------------------------------ balanced assignment
def _replicated_optimum(S, cap):
    rep = np.repeat(S, cap, axis=1)
    r, c = sp_opt.linear_sum_assignment(rep, maximize=True)
    return rep[r, c].sum()


@pytest.mark.parametrize("n,e,cap", [(1, 1, 1), (12, 4, 3), (13, 4, 4), (50, 7, 8), (9, 3, 100)])
def test_balanced_exact(n, e, cap):
    g = torch.Generator().manual_seed(n)
    S = torch.randn(n, e, generator=g, dtype=torch.float64)
    col = hp.ot.balanced_assignment(S, cap)
    assert col.shape == (n,) and col.dtype == torch.int64
    assert int(torch.bincount(col, minlength=e).max()) <= cap
    assert abs(float(S[torch.arange(n), col].sum()) - _replicated_optimum(S.numpy(), min(cap, n))) < 1e-9


def test_balanced_ties_batched_and_sinkhorn():
    g = torch.Generator().manual_seed(4)
    S = torch.randint(0, 3, (3, 24, 6), generator=g).float()  # integer scores: ties
    col = hp.ot.balanced_assignment(S, 4)
    assert col.shape == (3, 24)
    for b in range(3):
        assert int(torch.bincount(col[b], minlength=6).max()) <= 4
        assert abs(float(S[b, torch.arange(24), col[b]].sum()) - _replicated_optimum(S[b].double().numpy(), 4)) < 1e-6
    S = torch.randn(2, 64, 8, generator=g)
    exact = hp.ot.balanced_assignment(S, 8)
    approx = hp.ot.balanced_assignment(S, 8, method="sinkhorn", reg=0.02)
    for b in range(2):
        assert int(torch.bincount(approx[b], minlength=8).max()) <= 8
        se = float(S[b, torch.arange(64), exact[b]].sum())
        sa = float(S[b, torch.arange(64), approx[b]].sum())
        assert sa <= se + 1e-5 and sa >= se - 0.05 * abs(se)


def test_balanced_bad_input():
    S = torch.randn(6, 3)
    with pytest.raises(ValueError, match="capacity"):
        hp.ot.balanced_assignment(S, -1)
    with pytest.raises(ValueError, match="capacity"):
        hp.ot.balanced_assignment(S, 1)
    with pytest.raises(TypeError, match="capacity"):
        hp.ot.balanced_assignment(S, 2.5)
    with pytest.raises(ValueError, match="scores"):
        hp.ot.balanced_assignment(torch.tensor([[1.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="scores"):
        hp.ot.balanced_assignment(torch.randn(3), 1)
    with pytest.raises(TypeError, match="scores"):
        hp.ot.balanced_assignment(S.numpy(), 2)
    with pytest.raises(ValueError, match="method"):
        hp.ot.balanced_assignment(S, 2, method="auction")
    assert hp.ot.balanced_assignment(torch.zeros(0, 3), 0).shape == (0,)
