"""hp.ot.wasserstein_1d and hp.ot.histogram_wasserstein: float64 reference, scipy and POT
cross-checks, gradients (gradcheck), batched == looped, ties, equal inputs, opcheck, bad input."""
import numpy as np
import pytest
import torch

import hotpath as hp
from hotpath._ops import wasserstein1d as ops
from hotpath.reference import wasserstein1d as ref

from conftest import assert_close, backend_param


def _samples(n, m, batch=(), dtype=torch.float64, weighted=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, *batch, generator=g, dtype=torch.float64)
    v = 1.5 * torch.randn(m, *batch, generator=g, dtype=torch.float64) + 0.3
    uw = torch.rand(n, *batch, generator=g, dtype=torch.float64) + 0.05 if weighted else None
    vw = torch.rand(m, *batch, generator=g, dtype=torch.float64) + 0.05 if weighted else None
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(u), cast(v), cast(uw), cast(vw)


def _ref(u, v, uw, vw, p):
    """float64 reference in the POT layout (samples along dim 0, batch trailing)."""
    n, m = u.shape[0], v.shape[0]
    batch = u.shape[1:]

    def rows(t, k):
        if t is None:
            return None
        t = t.double()
        if t.dim() == 1 and len(batch):
            t = t.reshape(k, *([1] * len(batch))).expand(k, *batch)
        return t.reshape(k, -1).t()

    return ref.wasserstein_1d(rows(u, n), rows(v, m), rows(uw, n), rows(vw, m), p).reshape(batch)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("n,m", [(1, 1), (1, 3), (3, 1), (59, 97), (97, 97), (1025, 59)])
@pytest.mark.parametrize("p", [1, 2, 1.5, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(backend, n, m, p, weighted, dtype):
    u, v, uw, vw = _samples(n, m, (3,), dtype, weighted)
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=p, backend=backend)
    expected = _ref(u, v, uw, vw, p)
    assert out.shape == (3,) and out.dtype == dtype
    assert_close(out, expected, dtype, scale=4.0 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("backend", backend_param(["triton"]))
@pytest.mark.parametrize("n,m,weighted,p", [(1, 3, True, 1), (7, 5, False, 2), (33, 17, True, 1.5), (20, 20, False, 1),
                                             (300, 200, True, 2)])
def test_triton_matches_reference(backend, n, m, weighted, p):
    u, v, uw, vw = _samples(n, m, (2,), torch.float32, weighted)
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=p, backend=backend)
    expected = _ref(u, v, uw, vw, p)
    assert_close(out, expected, torch.float32, scale=4.0 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_gradcheck_values_and_weights(backend):
    for p in ([1, 2, 1.7] if backend != "triton" else [1, 1.7]):
        u, v, uw, vw = _samples(6, 4, (2,), torch.float64, True, seed=3)
        args = [t.requires_grad_() for t in (u, v, uw, vw)]
        assert torch.autograd.gradcheck(lambda a, b, c, d: hp.ot.wasserstein_1d(a, b, c, d, p=p, backend=backend),
                                        args)
        u, v, _, _ = _samples(5, 7, (), torch.float64, False, seed=4)
        assert torch.autograd.gradcheck(lambda a, b: hp.ot.wasserstein_1d(a, b, p=p, backend=backend),
                                        (u.requires_grad_(), v.requires_grad_()))


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_gradients_match_reference_float32(backend):
    u, v, uw, vw = _samples(97, 59, (4,), torch.float32, True, seed=5)
    for p in (1, 2, 2.5):
        ins = [t.clone().requires_grad_() for t in (u, v, uw, vw)]
        hp.ot.wasserstein_1d(*ins, p=p, backend=backend).sum().backward()
        ins64 = [t.double().requires_grad_() for t in (u, v, uw, vw)]
        hp.ot.wasserstein_1d(*ins64, p=p, backend="reference").sum().backward()
        for a, b in zip(ins, ins64):
            assert_close(a.grad, b.grad, torch.float32, scale=20.0)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
def test_scipy_weighted_p1(backend):
    stats = pytest.importorskip("scipy.stats")
    u, v, uw, vw = _samples(59, 97, (), torch.float64, True, seed=7)
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=1, backend=backend)
    expected = stats.wasserstein_distance(u.numpy(), v.numpy(), uw.numpy(), vw.numpy())
    assert abs(out.item() - expected) < 1e-12


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_pot_wasserstein_1d(backend, p):
    ot = pytest.importorskip("ot")
    u, v, uw, vw = _samples(59, 31, (5,), torch.float64, True, seed=8)
    uw, vw = uw / uw.sum(0), vw / vw.sum(0)  # POT expects normalized weights
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=p, backend=backend)
    expected = ot.wasserstein_1d(u, v, uw, vw, p=p)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    # shared (n,) weights, POT's other convention
    w = uw[:, 0] / uw[:, 0].sum()
    torch.testing.assert_close(hp.ot.wasserstein_1d(u, v, w, None, p=p, backend=backend),
                               ot.wasserstein_1d(u, v, w, None, p=p), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_batched_equals_looped_and_trailing_dims(backend):
    u, v, uw, vw = _samples(40, 23, (3, 2), torch.float32, True, seed=9)
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=2, backend=backend)
    assert out.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            one = hp.ot.wasserstein_1d(u[:, i, j], v[:, i, j], uw[:, i, j], vw[:, i, j], p=2, backend=backend)
            assert one.shape == ()
            assert_close(one, out[i, j], torch.float32)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_equal_inputs_exact_zero_and_zero_grad(backend):
    u = torch.tensor([[0.3, 1.0], [-1.0, 2.0], [0.3, 2.0], [5.0, -1.0]], dtype=torch.float64)  # with ties
    w = torch.tensor([0.2, 0.3, 0.1, 0.4], dtype=torch.float64)
    for p in (1, 2, 1.5):
        a = u.clone().requires_grad_()
        b = u.clone().requires_grad_()
        wa = w.clone().requires_grad_()
        out = hp.ot.wasserstein_1d(a, b, wa, w, p=p, backend=backend)
        assert torch.equal(out, torch.zeros(2, dtype=torch.float64))
        out.sum().backward()
        for t in (a.grad, b.grad):
            assert torch.isfinite(t).all() and t.abs().max() == 0


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_ties_and_zero_weights(backend):
    # many tied values and zero-weight samples: a zero-weight sample must not move the value
    u = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    v = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    uw = torch.tensor([0.1, 0.2, 0.0, 0.3, 0.1, 0.3], dtype=torch.float64)
    vw = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    out = hp.ot.wasserstein_1d(u, v, uw, vw, p=1, backend=backend)
    stats = pytest.importorskip("scipy.stats")
    assert abs(out.item() - stats.wasserstein_distance(u.numpy(), v.numpy(), uw.numpy(), vw.numpy())) < 1e-12
    u2 = torch.cat([u, torch.tensor([100.0], dtype=torch.float64)])
    uw2 = torch.cat([uw, torch.zeros(1, dtype=torch.float64)])
    assert abs(hp.ot.wasserstein_1d(u2, v, uw2, vw, p=2, backend=backend).item()
               - hp.ot.wasserstein_1d(u, v, uw, vw, p=2, backend=backend).item()) < 1e-12


def test_unequal_uniform_sizes_exact_ties():
    # n = 6, m = 4: breakpoints 1/2 and 3/6 coincide; the integer walk gets them exactly
    u = torch.arange(6, dtype=torch.float64)
    v = torch.arange(4, dtype=torch.float64) * 2
    expected = _ref(u, v, None, None, 1)
    for backend in ("cpu", "reference"):
        torch.testing.assert_close(hp.ot.wasserstein_1d(u, v, backend=backend), expected, atol=1e-14, rtol=0)


def test_half_inputs_and_noncontiguous():
    u, v, uw, vw = _samples(33, 17, (4,), torch.float32, True, seed=11)
    ut = u.t().contiguous().t()  # non-contiguous view of the same values
    assert not ut.is_contiguous()
    assert_close(hp.ot.wasserstein_1d(ut, v, uw, vw), hp.ot.wasserstein_1d(u, v, uw, vw), torch.float32)
    out16 = hp.ot.wasserstein_1d(u.half(), v.half(), p=2)
    assert out16.dtype == torch.float16
    assert_close(out16, _ref(u.half().double(), v.half().double(), None, None, 2), torch.float16, scale=4.0)


def test_nan_propagates():
    u, v, _, _ = _samples(10, 12, (2,), torch.float64, False)
    u[3, 1] = float("nan")
    out = hp.ot.wasserstein_1d(u, v, p=1.5)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_require_sort_false_uses_given_order():
    u, v, uw, vw = _samples(20, 30, (3,), torch.float64, True, seed=12)
    us, iu = torch.sort(u, 0)
    vs, iv = torch.sort(v, 0)
    out = hp.ot.wasserstein_1d(us, vs, torch.gather(uw, 0, iu), torch.gather(vw, 0, iv), p=2, require_sort=False)
    assert_close(out, _ref(u, v, uw, vw, 2), torch.float64)


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(3, 7, generator=g), torch.randn(3, 5, generator=g)
    uw, vw = torch.rand(3, 7, generator=g) + 0.1, torch.rand(3, 5, generator=g) + 0.1
    torch.library.opcheck(ops.wasserstein1d_fwd, (u, v, uw, vw, 1.5, False, True, True))
    torch.library.opcheck(ops.wasserstein1d_fwd, (u, v, None, None, 2.0, False, False, False))
    p, q = torch.rand(3, 9, generator=g), torch.rand(3, 9, generator=g)
    s = torch.arange(9.0)[None]
    for need_p, need_q in ((True, True), (True, False), (False, True), (False, False)):
        torch.library.opcheck(ops.histogram_w1_fwd, (p, q, s, need_p, need_q))


def test_bad_input():
    u, v = torch.randn(5, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="p"):
        hp.ot.wasserstein_1d(u, v, p=0.5)
    with pytest.raises(TypeError, match="p"):
        hp.ot.wasserstein_1d(u, v, p="2")
    with pytest.raises(ValueError, match="u_weights"):
        hp.ot.wasserstein_1d(u, v, -torch.rand(5, 2))
    with pytest.raises(ValueError, match="v_weights"):
        hp.ot.wasserstein_1d(u, v, None, torch.zeros(4))
    with pytest.raises(ValueError, match="u_weights"):
        hp.ot.wasserstein_1d(u, v, torch.rand(3))
    with pytest.raises(ValueError, match="trailing"):
        hp.ot.wasserstein_1d(u, torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least one sample"):
        hp.ot.wasserstein_1d(torch.randn(0, 2), v)
    with pytest.raises(TypeError, match="u_values"):
        hp.ot.wasserstein_1d(torch.arange(5), v)
    with pytest.raises(ValueError, match="backend"):
        hp.ot.wasserstein_1d(u, v, backend="gpu")


# ---------------------------------------------------------------------------- histograms
def _hists(B, K, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, K, generator=g, dtype=torch.float64).softmax(-1)
    q = torch.rand(B, K, generator=g, dtype=torch.float64)
    return p.to(dtype), q.to(dtype)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("B,K", [(1, 1), (3, 2), (4, 59), (2, 1025)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histogram_w1_matches_reference(backend, B, K, dtype):
    if backend == "triton" and K > 64:
        B, K = 1, 2100  # several blocks of 1024: exercises the carried prefixes
        if dtype == torch.float64:
            pytest.skip("interpreter: tiny shapes only")
    p, q = _hists(B, K, dtype)
    s = torch.sort(torch.randn(K, dtype=torch.float64)).values.to(dtype)
    out = hp.ot.histogram_wasserstein(p, q, s, backend=backend)
    expected = ref.histogram_wasserstein(p.double(), q.double(), s.double().expand(B, K), 1)
    assert_close(out, expected, dtype, scale=4.0 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_histogram_grad_one_side_and_unit_upstream(backend):
    # only p needs a gradient (q is a target): the kernel skips d/dq; sum().backward() hands the
    # saved gradients over as they are
    p, q = _hists(4, 37, seed=5)
    s = torch.sort(torch.rand(37, dtype=torch.float64) * 3).values
    p0 = p.clone().requires_grad_()
    ref.histogram_wasserstein(p0, q, s.expand(4, 37), 1).sum().backward()
    for weights in (torch.ones(4, dtype=torch.float64), torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)):
        p1 = p.clone().requires_grad_()
        (hp.ot.histogram_wasserstein(p1, q, s, backend=backend) * weights).sum().backward()
        assert_close(p1.grad, p0.grad * weights[:, None], torch.float64)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_histogram_gradcheck(backend):
    p, q = _hists(3, 8, seed=2)
    p, q = (p + 0.01).requires_grad_(), (q + 0.01).requires_grad_()
    s = torch.sort(torch.rand(3, 8, dtype=torch.float64) * 5, -1).values
    orders = [1] if backend == "triton" else [1, 2, 1.5]
    for order in orders:
        assert torch.autograd.gradcheck(lambda a, b: hp.ot.histogram_wasserstein(a, b, s, order, backend=backend),
                                        (p, q))
    # the bin positions too (plain torch formula for order 1, quantile kernel for higher orders)
    if backend != "triton":
        for order in (1, 2):
            assert torch.autograd.gradcheck(
                lambda a, sup: hp.ot.histogram_wasserstein(a, q.detach(), sup, order, backend=backend),
                (p, s.clone().requires_grad_()))


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
def test_histogram_higher_orders_match_pot(backend):
    ot = pytest.importorskip("ot")
    p, q = _hists(4, 30, seed=3)
    s = torch.linspace(-2, 3, 30, dtype=torch.float64)
    pn, qn = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    for order in (1, 2, 3):
        out = hp.ot.histogram_wasserstein(p, q, s, order, backend=backend)
        expected = ot.wasserstein_1d(s[:, None].expand(30, 4), s[:, None].expand(30, 4), pn.t(), qn.t(), p=order)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_histogram_default_support_and_1d():
    p = torch.tensor([0.0, 1.0, 0.0, 0.0])
    q = torch.tensor([0.0, 0.0, 0.0, 2.0])  # normalized inside
    out = hp.ot.histogram_wasserstein(p, q)
    assert out.shape == () and abs(out.item() - 2.0) < 1e-6
    assert abs(hp.ot.histogram_wasserstein(p, q, order=2).item() - 4.0) < 1e-6
    # equal histograms: exactly zero, zero gradient
    a = torch.rand(3, 50, requires_grad=True)
    out = hp.ot.histogram_wasserstein(a, a.detach().clone())
    assert torch.equal(out, torch.zeros(3))
    out.sum().backward()
    assert a.grad.abs().max() == 0


def test_histogram_bad_input():
    p, q = torch.rand(2, 5), torch.rand(2, 5)
    with pytest.raises(ValueError, match="support"):
        hp.ot.histogram_wasserstein(p, q, torch.tensor([0.0, 2.0, 1.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="support"):
        hp.ot.histogram_wasserstein(p, q, torch.tensor([0.0, 1.0, float("inf"), 3.0, 4.0]))
    with pytest.raises(ValueError, match="support"):
        hp.ot.histogram_wasserstein(p, q, torch.arange(4.0))
    with pytest.raises(ValueError, match="order"):
        hp.ot.histogram_wasserstein(p, q, order=0)
    with pytest.raises(ValueError, match="p "):
        hp.ot.histogram_wasserstein(-p, q)
    with pytest.raises(ValueError, match="q "):
        hp.ot.histogram_wasserstein(p, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="bins"):
        hp.ot.histogram_wasserstein(p, torch.rand(2, 4))
    with pytest.raises(ValueError, match="rows"):
        hp.ot.histogram_wasserstein(p, torch.rand(3, 5))


def test_histogram_vs_numpy_formula():
    # W1 between histograms = sum |cumsum(p - q)| * bin widths
    p, q = _hists(5, 40, seed=6)
    s = np.sort(np.random.default_rng(0).normal(size=40))
    pn, qn = (p / p.sum(-1, keepdim=True)).numpy(), (q / q.sum(-1, keepdim=True)).numpy()
    expected = (np.abs(np.cumsum(pn - qn, -1)[:, :-1]) * np.diff(s)).sum(-1)
    out = hp.ot.histogram_wasserstein(p, q, torch.from_numpy(s))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_problems_sort_paths(backend, dtype):
    # n above the radix sort's small/large thresholds; duplicates, +-0, negatives, large magnitudes
    g = torch.Generator().manual_seed(21)
    n, m = 20011, 16384 + 7
    u = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e6], dtype=torch.float64)
    v = torch.randint(-50, 50, (m, 2), generator=g).to(torch.float64) / 7
    u[:100] = 0.0
    u[100:200] = -0.0
    u, v = u.to(dtype), v.to(dtype)
    uw = torch.rand(n, 2, generator=g, dtype=torch.float64).to(dtype)
    for weights in ((None, None), (uw, None)):
        out = hp.ot.wasserstein_1d(u, v, *weights, p=2, backend=backend)
        expected = _ref(u, v, *weights, 2)
        assert_close(out, expected, dtype, scale=50.0 * max(1.0, expected.abs().max().item()))
