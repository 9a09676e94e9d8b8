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
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    u = torch.randn(n, *batch, generator=g, dtype=torch.float64, device="cpu")
    v = 1.5 * torch.randn(m, *batch, generator=g, dtype=torch.float64, device="cpu") + 0.3
    uw = torch.rand(n, *batch, generator=g, dtype=torch.float64, device="cpu") + 0.05 if weighted else None
    vw = torch.rand(m, *batch, generator=g, dtype=torch.float64, device="cpu") + 0.05 if weighted else None
    dev = torch.get_default_device()
    cast = (lambda t: None if t is None else t.to(dev, dtype))
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
    np_ = (lambda t: t.cpu().numpy())  # scipy reads numpy: CPU copies of (possibly CUDA) tensors
    assert abs(out.item() - stats.wasserstein_distance(np_(u), np_(v), np_(uw), np_(vw))) < 1e-12
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
    torch.library.opcheck(ops.wasserstein1d_fwd.overload, (u, v, uw, vw, 1.5, False, True, True))
    torch.library.opcheck(ops.wasserstein1d_fwd.overload, (u, v, None, None, 2.0, False, False, False))
    p, q = torch.rand(3, 9, generator=g), torch.rand(3, 9, generator=g)
    s = torch.arange(9.0)[None]
    for need_p, need_q in ((True, True), (True, False), (False, True), (False, False)):
        torch.library.opcheck(ops.histogram_w1_fwd.overload, (p, q, s, need_p, need_q))


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
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    p = torch.randn(B, K, generator=g, dtype=torch.float64, device="cpu").softmax(-1)
    q = torch.rand(B, K, generator=g, dtype=torch.float64, device="cpu")
    dev = torch.get_default_device()
    return p.to(dev, dtype), q.to(dev, dtype)


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


# ---------------------------------------------------------------------------- NaN rule, double backward, POT call forms
# explicit reference gradients (the default kernel of the ops) against autograd of the reference
@pytest.mark.parametrize("p", [1, 2, 1.5, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 4), (6, 1), (7, 5), (20, 20)])
def test_reference_grads_match_autograd(p, weighted, n, m):
    g = torch.Generator().manual_seed(n * 31 + m)
    u = torch.randn(3, n, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, m, generator=g, dtype=torch.float64, requires_grad=True)
    uw = (torch.rand(3, n, generator=g, dtype=torch.float64) + 0.1).requires_grad_() if weighted else None
    vw = (torch.rand(3, m, generator=g, dtype=torch.float64) + 0.1).requires_grad_() if weighted else None
    up = torch.randn(3, generator=g, dtype=torch.float64)
    val = ref.wasserstein_1d(u, v, uw, vw, p)
    ins = [t for t in (u, v, uw, vw) if t is not None]
    expected = torch.autograd.grad(val, ins, up)
    d = (lambda t: None if t is None else t.detach())
    cost, du, dv, duw, dvw = ref.wasserstein_1d_grads(d(u), d(v), d(uw), d(vw), p, False, True, True)
    assert torch.equal(cost, val.detach())
    got = [du, dv] + ([duw, dvw] if weighted else [])
    for a, b in zip(got, expected):
        torch.testing.assert_close(up[:, None] * a, b, atol=1e-13, rtol=1e-12)
    if not weighted:
        assert duw.numel() == 0 and dvw.numel() == 0
    # only what is asked for
    _, du2, dv2, duw2, dvw2 = ref.wasserstein_1d_grads(d(u), d(v), d(uw), d(vw), p, False, False, weighted)
    assert du2.numel() == 0 and dv2.numel() == 0
    if weighted:
        torch.testing.assert_close(duw2, duw, atol=0, rtol=0)
    # presorted input: the same numbers
    us, iu = torch.sort(d(u), -1)
    vs, iv = torch.sort(d(v), -1)
    uws = None if uw is None else torch.gather(d(uw), -1, iu)
    vws = None if vw is None else torch.gather(d(vw), -1, iv)
    cost3, du3, _, _, _ = ref.wasserstein_1d_grads(us, vs, uws, vws, p, True, True, True)
    torch.testing.assert_close(cost3, cost, atol=1e-14, rtol=1e-13)
    torch.testing.assert_close(du3, torch.gather(du, -1, iu), atol=1e-14, rtol=1e-13)


@pytest.mark.parametrize("K", [1, 2, 9, 40])
def test_reference_histogram_grads_match_autograd(K):
    g = torch.Generator().manual_seed(K)
    p = (torch.rand(3, K, generator=g, dtype=torch.float64) + 0.01).requires_grad_()
    q = (torch.rand(3, K, generator=g, dtype=torch.float64) + 0.01).requires_grad_()
    for s in (torch.sort(torch.randn(1, K, generator=g, dtype=torch.float64), -1).values,
              torch.sort(torch.randn(3, K, generator=g, dtype=torch.float64), -1).values):
        val = ref.histogram_wasserstein(p, q, s.expand(3, K), 1)
        up = torch.randn(3, generator=g, dtype=torch.float64)
        gp, gq = torch.autograd.grad(val, (p, q), up)
        cost, a, b = ref.histogram_wasserstein_grads(p.detach(), q.detach(), s, True, True)
        assert torch.equal(cost, val.detach())
        torch.testing.assert_close(up[:, None] * a, gp, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(up[:, None] * b, gq, atol=1e-13, rtol=1e-12)
        _, a1, b1 = ref.histogram_wasserstein_grads(p.detach(), q.detach(), s, True, False)
        assert torch.equal(a1, a) and b1.numel() == 0


# (3) double backward: with create_graph=True the gradient carries a graph (was silently detached)
@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_double_backward(backend):
    u, v, uw, vw = _samples(6, 4, (2,), torch.float64, True, seed=13)
    ins = [t.requires_grad_() for t in (u, v, uw, vw)]
    # the interpreter is slow: one p for Triton (the recomputed gradient is plain torch anyway)
    for p in ([1.5] if backend == "triton" else [1, 2, 1.5, 3]):
        f = (lambda a, b, c, d: hp.ot.wasserstein_1d(a, b, c, d, p=p, backend=backend))
        out = f(*ins).sum()
        grads = torch.autograd.grad(out, ins, create_graph=True)
        assert all(gr.requires_grad for gr in grads)
        if p != 1:  # p = 1: the gradient is piecewise constant in the values (a zero Hessian there)
            assert torch.autograd.gradgradcheck(f, ins)
        # a WGAN-GP style penalty reaches the values
        pen = sum((gr ** 2).sum() for gr in grads[:2])
        gx, = torch.autograd.grad(pen, ins[0])
        assert torch.isfinite(gx).all() and (p == 1 or gx.abs().max() > 0)
    if backend == "triton":
        return
    # uniform weights, unequal sizes
    a, b, _, _ = _samples(5, 7, (), torch.float64, False, seed=14)
    assert torch.autograd.gradgradcheck(lambda s, t: hp.ot.wasserstein_1d(s, t, p=2.5, backend=backend),
                                        (a.requires_grad_(), b.requires_grad_()))


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_histogram_double_backward(backend):
    p, q = _hists(2 if backend == "triton" else 3, 8, seed=15)
    p, q = (p + 0.01).requires_grad_(), (q + 0.01).requires_grad_()
    s = torch.sort(torch.rand(p.shape[0], 8, dtype=torch.float64) * 5, -1).values
    for order in ([1] if backend == "triton" else [1, 2, 1.5]):
        f = (lambda a, b: hp.ot.histogram_wasserstein(a, b, s, order, backend=backend))
        grads = torch.autograd.grad(f(p, q).sum(), (p, q), create_graph=True)
        assert all(gr.requires_grad for gr in grads)
        assert torch.autograd.gradgradcheck(f, (p, q))


# (4) NaN / inf rule: a NaN or +inf weight (or mass) gives NaN, never a finite number, on every backend
@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weight_gives_nan(backend, bad):
    u, v, uw, vw = _samples(7, 5, (3,), torch.float64, True, seed=16)
    uw[2, 1] = bad  # problem 1 only
    for p in (1, 2, 1.5):
        out = hp.ot.wasserstein_1d(u, v, uw, vw, p=p, backend=backend)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
        torch.testing.assert_close(out[[0, 2]], _ref(u, v, uw, vw, p)[[0, 2]])
        ins = [t.clone().requires_grad_() for t in (u, v, uw, vw)]
        hp.ot.wasserstein_1d(*ins, p=p, backend=backend)[1].backward()
        assert torch.isnan(ins[0].grad[:, 1]).all() and torch.isnan(ins[2].grad[:, 1]).all()
    # v side, shared (m,) weights
    w = torch.rand(5, dtype=torch.float64)
    w[0] = bad
    assert torch.isnan(hp.ot.wasserstein_1d(u, v, None, w, p=2, backend=backend)).all()
    # histograms, every order
    P, Q = _hists(2, 6, seed=17)
    P[0, 3] = bad
    for order in (1, 2, 3):
        out = hp.ot.histogram_wasserstein(P, Q, order=order, backend=backend)
        assert torch.isnan(out[0]) and torch.isfinite(out[1])


@pytest.mark.parametrize("backend", backend_param(["cpu", "triton"]))
def test_special_values_follow_reference(backend):
    # the same NaN / inf pattern as the reference for NaN and +-inf values and weights
    specials = [float("nan"), float("inf"), -float("inf")]
    u0, v0, uw0, vw0 = _samples(5, 4, (), torch.float64, True, seed=18)
    for which in range(4):
        for val in specials:
            if which >= 2 and val < 0:
                continue  # negative weights are a ValueError
            ts = [t.clone() for t in (u0, v0, uw0, vw0)]
            ts[which][1] = val
            for p in (1, 2, 1.5):
                got = hp.ot.wasserstein_1d(*ts, p=p, backend=backend)
                exp = hp.ot.wasserstein_1d(*ts, p=p, backend="reference")
                assert torch.isnan(got) == torch.isnan(exp) and torch.isinf(got) == torch.isinf(exp), (which, val, p)


# (10) histogram gradients are fresh tensors: retain_graph twice and zero_grad(set_to_none=False)
@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_histogram_grad_not_aliased(backend):
    p0, q = _hists(3, 10, seed=19)
    p = p0.clone().requires_grad_()
    loss = hp.ot.histogram_wasserstein(p, q, backend=backend).sum()
    loss.backward(retain_graph=True)
    first = p.grad.clone()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(p.grad, 2 * first)
    p.grad.zero_()  # what zero_grad(set_to_none=False) does
    loss.backward()
    torch.testing.assert_close(p.grad, first)
    opt = torch.optim.SGD([p], lr=0.0)
    opt.zero_grad(set_to_none=False)
    hp.ot.histogram_wasserstein(p, q, backend=backend).sum().backward()
    torch.testing.assert_close(p.grad, first)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_w1d_grad_not_aliased(backend):
    u, v, _, _ = _samples(6, 6, (), torch.float64, False, seed=20)
    u.requires_grad_()
    loss = hp.ot.wasserstein_1d(u, v, p=2, backend=backend)
    loss.backward(retain_graph=True)
    first = u.grad.clone()
    loss.backward()
    torch.testing.assert_close(u.grad, 2 * first)


# POT drop-in: numpy in -> numpy out, [] weights, POT's positional order
def test_numpy_in_numpy_out_and_empty_weights():
    rng = np.random.RandomState(0)
    x = np.linspace(0, 5, 30)
    ru, rv = np.abs(rng.randn(30)), np.abs(rng.randn(30))
    ru, rv = ru / ru.sum(), rv / rv.sum()
    out = hp.ot.wasserstein_1d(x, x, ru, rv, 1)
    assert isinstance(out, np.floating)
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(out, stats.wasserstein_distance(x, x, ru, rv), rtol=1e-12, atol=1e-14)
    assert hp.ot.wasserstein_1d(x, x + 1, [], [], 2) == pytest.approx(1.0, abs=1e-12)
    assert hp.ot.wasserstein_1d(x, x + 1, p=2) == pytest.approx(1.0, abs=1e-12)
    assert hp.ot.wasserstein_1d(list(x), list(x + 1), p=2) == pytest.approx(1.0, abs=1e-12)
    X = np.stack([x, 10 * x], -1)
    res = hp.ot.wasserstein_1d(X, X + np.array([1.0, 2.0]), ru, rv, 2)
    assert isinstance(res, np.ndarray) and res.shape == (2,) and res.dtype == np.float64
    res32 = hp.ot.wasserstein_1d(X.astype(np.float32), X.astype(np.float32), p=2)
    assert res32.dtype == np.float32
    # tensors stay tensors; [] weights there too; require_sort positional (POT's order)
    t = torch.from_numpy(x)
    assert isinstance(hp.ot.wasserstein_1d(t, t + 1, [], [], 2), torch.Tensor)
    assert float(hp.ot.wasserstein_1d(t, t + 1, None, None, 2, False)) == pytest.approx(1.0, abs=1e-12)
    # numpy weights with tensor values follow the tensors
    assert isinstance(hp.ot.wasserstein_1d(t, t, ru, rv), torch.Tensor)


# (11) bad input names the argument
def test_bad_input_more():
    u, v = torch.randn(5), torch.randn(4)
    with pytest.raises(TypeError, match="require_sort"):
        hp.ot.wasserstein_1d(u, v, None, None, 1, "yes")
    with pytest.raises(TypeError, match="u_weights"):
        hp.ot.wasserstein_1d(u, v, torch.ones(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="u_weights"):
        hp.ot.wasserstein_1d(u.numpy(), v.numpy(), ["a"] * 5)
    with pytest.raises(TypeError, match="u_values"):
        hp.ot.wasserstein_1d([[1.0, 2.0], [3.0]], [1.0])
    with pytest.raises(ValueError, match="u_weights"):
        hp.ot.wasserstein_1d(u, v, torch.tensor([1.0, 1.0, -float("inf"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="p must be a finite"):
        hp.ot.wasserstein_1d(u, v, p=float("nan"))
    with pytest.raises(ValueError, match="device"):
        hp.ot.wasserstein_1d(u, v.to("meta"))
    with pytest.raises(TypeError, match="support"):
        hp.ot.histogram_wasserstein(torch.rand(5), torch.rand(5), torch.arange(5))
    with pytest.raises(ValueError, match="p must be"):
        hp.ot.histogram_wasserstein(torch.rand(2, 2, 5), torch.rand(2, 5))
    with pytest.raises(ValueError, match="support must be finite"):
        hp.ot.histogram_wasserstein(torch.rand(3), torch.rand(3), torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="p must have a positive total"):
        hp.ot.histogram_wasserstein(torch.zeros(3), torch.rand(3), order=2)
    # empty batches and non-contiguous inputs work
    assert hp.ot.wasserstein_1d(torch.randn(5, 0), torch.randn(4, 0)).shape == (0,)
    assert hp.ot.histogram_wasserstein(torch.rand(0, 5), torch.rand(0, 5), order=2).shape == (0,)
    P = torch.rand(5, 3, dtype=torch.float64).t()
    Q = torch.rand(3, 5, dtype=torch.float64)
    assert not P.is_contiguous()
    for order in (1, 2):
        torch.testing.assert_close(hp.ot.histogram_wasserstein(P, Q, order=order),
                                   hp.ot.histogram_wasserstein(P.contiguous(), Q, order=order))
