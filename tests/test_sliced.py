"""hp.ot.sliced_wasserstein: float64 reference, POT cross-check with the same projections,
generator reproducibility, gradients (gradcheck) w.r.t. x, y, a, b, projections, batched ==
looped, equal inputs, opcheck, bad input; max-sliced."""
import numpy as np
import pytest
import torch

import hotpath as hp
from hotpath._ops import wasserstein1d as ops
from hotpath.reference import wasserstein1d as ref

from conftest import assert_close, backend_param


def _clouds(B, N, M, D, dtype=torch.float64, weighted=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (lambda *s: (B, *s)) if B else (lambda *s: s)
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    x = torch.randn(shape(N, D), generator=g, dtype=torch.float64, device="cpu")
    y = torch.randn(shape(M, D), generator=g, dtype=torch.float64, device="cpu") * 0.7 + 0.5
    a = torch.rand(shape(N), generator=g, dtype=torch.float64, device="cpu") + 0.05 if weighted else None
    b = torch.rand(shape(M), generator=g, dtype=torch.float64, device="cpu") + 0.05 if weighted else None
    dev = torch.get_default_device()
    cast = (lambda t: None if t is None else t.to(dev, dtype))
    return cast(x), cast(y), cast(a), cast(b)


def _ref(x, y, a, b, theta, p):
    X = x.double() if x.dim() == 3 else x.double()[None]
    Y = y.double() if y.dim() == 3 else y.double()[None]
    Bn = max(X.shape[0], Y.shape[0])
    X, Y = X.expand(Bn, *X.shape[1:]), Y.expand(Bn, *Y.shape[1:])
    A = None if a is None else a.double().expand(Bn, X.shape[1])
    Bw = None if b is None else b.double().expand(Bn, Y.shape[1])
    out = ref.sliced_wasserstein(X, Y, A, Bw, theta.double(), p)
    return out if (x.dim() == 3 or y.dim() == 3) else out[0]


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("B,N,M,D", [(0, 1, 1, 1), (0, 59, 97, 3), (0, 97, 97, 2), (2, 33, 17, 3), (1, 40, 40, 20)])
@pytest.mark.parametrize("p", [1, 2, 1.5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(backend, B, N, M, D, p, weighted, dtype):
    x, y, a, b = _clouds(B, N, M, D, dtype, weighted)
    theta = hp.ot.random_projections(D, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out = hp.ot.sliced_wasserstein(x, y, a, b, projections=theta, p=p, backend=backend)
    expected = _ref(x, y, a, b, theta, p)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, scale=4.0 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("backend", backend_param(["triton"]))
def test_triton_matches_reference(backend):
    x, y, a, b = _clouds(2, 9, 6, 3, torch.float32, True)
    theta = hp.ot.random_projections(3, 4, generator=torch.Generator().manual_seed(1), device=x.device)
    out = hp.ot.sliced_wasserstein(x, y, a, b, projections=theta, p=2, backend=backend)
    assert_close(out, _ref(x, y, a, b, theta, 2), torch.float32, scale=4.0)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("p", [1, 2, 3])
def test_pot_same_projections(backend, p):
    ot = pytest.importorskip("ot")
    x, y, a, b = _clouds(0, 50, 70, 4, torch.float64, True, seed=2)
    a, b = a / a.sum(), b / b.sum()
    theta = hp.ot.random_projections(4, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = hp.ot.sliced_wasserstein(x, y, a, b, projections=theta, p=p, backend=backend)
    expected = ot.sliced_wasserstein_distance(x, y, a, b, projections=theta, p=p)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    # uniform weights
    torch.testing.assert_close(hp.ot.sliced_wasserstein(x, y, projections=theta, p=p, backend=backend),
                               ot.sliced_wasserstein_distance(x, y, projections=theta, p=p), atol=1e-12, rtol=1e-10)


def test_generator_reproducible_and_default_projections():
    x, y, _, _ = _clouds(0, 30, 30, 5, torch.float32)
    s1 = hp.ot.sliced_wasserstein(x, y, n_projections=64, generator=torch.Generator().manual_seed(7))
    s2 = hp.ot.sliced_wasserstein(x, y, n_projections=64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2)
    theta = hp.ot.random_projections(5, 64, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(theta.norm(dim=0), torch.ones(64))
    assert torch.equal(hp.ot.sliced_wasserstein(x, y, projections=theta), s1)
    s3 = hp.ot.sliced_wasserstein(x, y, n_projections=64, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(s1, s3)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_gradcheck(backend):
    x, y, a, b = _clouds(0, 6, 4, 3, torch.float64, True, seed=4)
    # a CPU generator: drawn on the CPU, then moved to x's device
    theta = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5),
                        device="cpu").to(x.device)
    ins = [t.requires_grad_() for t in (x, y, a, b, theta)]
    for p in ([2] if backend == "triton" else [1, 2, 1.5]):
        assert torch.autograd.gradcheck(
            lambda x_, y_, a_, b_, t_: hp.ot.sliced_wasserstein(x_, y_, a_, b_, projections=t_, p=p, backend=backend),
            ins)
    if backend != "triton":
        xb, yb, ab, bb = _clouds(2, 5, 7, 2, torch.float64, True, seed=6)
        th = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        # batch entries weighted differently downstream: the projections' gradient is per entry
        wts = torch.tensor([0.3, 1.7], dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda x_, y_, a_, b_, t_: (wts * hp.ot.sliced_wasserstein(x_, y_, a_, b_, projections=t_, p=1.5,
                                                                       backend=backend)).sum(),
            [t.requires_grad_() for t in (xb, yb, ab, bb, th)])


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_gradients_match_reference_float32(backend):
    x, y, a, b = _clouds(2, 97, 59, 3, torch.float32, True, seed=8)
    theta = hp.ot.random_projections(3, 8, generator=torch.Generator().manual_seed(9))
    ins = [t.clone().requires_grad_() for t in (x, y, a, b)]
    hp.ot.sliced_wasserstein(*ins, projections=theta, p=2, backend=backend).sum().backward()
    ins64 = [t.double().requires_grad_() for t in (x, y, a, b)]
    hp.ot.sliced_wasserstein(*ins64, projections=theta.double(), p=2, backend="reference").sum().backward()
    for u, w in zip(ins, ins64):
        assert_close(u.grad, w.grad, torch.float32, scale=20.0)


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_batched_equals_looped(backend):
    x, y, a, b = _clouds(3, 41, 29, 3, torch.float32, True, seed=10)
    theta = hp.ot.random_projections(3, 12, generator=torch.Generator().manual_seed(11))
    out = hp.ot.sliced_wasserstein(x, y, a, b, projections=theta, backend=backend)
    assert out.shape == (3,)
    for i in range(3):
        assert_close(hp.ot.sliced_wasserstein(x[i], y[i], a[i], b[i], projections=theta, backend=backend), out[i],
                     torch.float32)
    # an unbatched y is shared by the batch
    shared = hp.ot.sliced_wasserstein(x, y[0], None, None, projections=theta, backend=backend)
    assert_close(shared[1], hp.ot.sliced_wasserstein(x[1], y[0], projections=theta, backend=backend), torch.float32)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_equal_inputs_zero_and_zero_grad(backend):
    x, _, _, _ = _clouds(0, 12, 12, 3, torch.float64, seed=12)
    x[3] = x[5]  # ties
    theta = hp.ot.random_projections(3, 6, generator=torch.Generator().manual_seed(13), dtype=torch.float64,
                                     device=x.device)
    xa = x.clone().requires_grad_()
    out = hp.ot.sliced_wasserstein(xa, x.clone(), projections=theta, p=2, backend=backend)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(xa.grad).all() and xa.grad.abs().max() == 0


def test_half_and_noncontiguous():
    x, y, _, _ = _clouds(0, 40, 30, 3, torch.float32, seed=14)
    theta = hp.ot.random_projections(3, 8, generator=torch.Generator().manual_seed(15))
    xt = x.t().contiguous().t()
    assert not xt.is_contiguous()
    assert_close(hp.ot.sliced_wasserstein(xt, y, projections=theta), hp.ot.sliced_wasserstein(x, y, projections=theta),
                 torch.float32)
    out = hp.ot.sliced_wasserstein(x.half(), y.half(), projections=theta.half())
    assert out.dtype == torch.float16
    assert_close(out, _ref(x.half(), y.half(), None, None, theta.half(), 2), torch.float16, scale=4.0)


def test_max_sliced():
    x, y, a, b = _clouds(0, 30, 20, 3, torch.float64, True, seed=16)
    theta = hp.ot.random_projections(3, 10, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    per_dir = torch.stack([ref.wasserstein_1d((x @ theta[:, l])[None], (y @ theta[:, l])[None], a[None], b[None], 2)[0]
                           for l in range(10)])
    out = hp.ot.max_sliced_wasserstein(x, y, a, b, projections=theta, p=2)
    torch.testing.assert_close(out, per_dir.max().sqrt())
    t = theta.clone().requires_grad_()
    hp.ot.max_sliced_wasserstein(x, y, a, b, projections=t).backward()
    assert torch.isfinite(t.grad).all() and (t.grad.abs().sum(0) > 0).sum() == 1  # only the maximizing direction


def test_opcheck():
    x, y, a, b = _clouds(2, 7, 5, 3, torch.float32, True, seed=18)
    theta = hp.ot.random_projections(3, 4)
    torch.library.opcheck(ops.sliced_wasserstein_fwd.overload, (x, y, a, b, theta, 2.0, True, True, True, True, True))
    torch.library.opcheck(ops.sliced_wasserstein_fwd.overload, (x, y, None, None, theta, 1.5, False, False, False, False, False))


def test_bad_input():
    x, y = torch.randn(10, 3), torch.randn(8, 3)
    with pytest.raises(ValueError, match="p"):
        hp.ot.sliced_wasserstein(x, y, p=0.9)
    with pytest.raises(ValueError, match="dimension"):
        hp.ot.sliced_wasserstein(x, torch.randn(8, 4))
    with pytest.raises(ValueError, match="projections"):
        hp.ot.sliced_wasserstein(x, y, projections=torch.randn(4, 5))
    with pytest.raises(ValueError, match="projections"):
        hp.ot.sliced_wasserstein(x, y, projections=torch.full((3, 5), float("nan")))
    with pytest.raises(ValueError, match="n_projections"):
        hp.ot.sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(TypeError, match="generator"):
        hp.ot.sliced_wasserstein(x, y, generator=3)
    with pytest.raises(ValueError, match="a "):
        hp.ot.sliced_wasserstein(x, y, a=-torch.rand(10))
    with pytest.raises(ValueError, match="b "):
        hp.ot.sliced_wasserstein(x, y, b=torch.zeros(8))
    with pytest.raises(ValueError, match="a must have shape"):
        hp.ot.sliced_wasserstein(x, y, a=torch.rand(9))
    with pytest.raises(ValueError, match="batch"):
        hp.ot.sliced_wasserstein(torch.randn(2, 10, 3), torch.randn(3, 8, 3))
    with pytest.raises(ValueError, match="x must be"):
        hp.ot.sliced_wasserstein(torch.randn(10), y)
    with pytest.raises(ValueError, match="at least one point"):
        hp.ot.sliced_wasserstein(torch.randn(0, 3), y)


@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_many_points_direction_blocks(backend):
    # N * L large enough for the kernel to process the directions in several blocks
    x, y, a, _ = _clouds(0, 40000, 30011, 3, torch.float64, True, seed=19)
    theta = hp.ot.random_projections(3, 160, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x, y, a, theta)]
    out = hp.ot.sliced_wasserstein(ins[0], ins[1], ins[2], projections=ins[3], p=2, backend=backend)
    out.backward()
    ref_ins = [t.clone().requires_grad_() for t in (x, y, a, theta)]
    expected = ref.sliced_wasserstein(ref_ins[0][None], ref_ins[1][None], ref_ins[2][None], None, ref_ins[3], 2)[0]
    expected.backward()
    assert_close(out, expected, torch.float64, scale=10.0)
    for u, w in zip(ins, ref_ins):
        assert_close(u.grad, w.grad, torch.float64, scale=100.0)


# ---------------------------------------------------------------------------- NaN rule, double backward, POT call forms
# (3) double backward: create_graph=True gives a differentiable gradient (WGAN-GP style penalties)
@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_double_backward(backend):
    # the interpreter is slow: a smaller problem and one p for Triton
    x, y, a, b = _clouds(0, 4 if backend == "triton" else 6, 3 if backend == "triton" else 5, 3, torch.float64, True,
                         seed=30)
    theta = torch.randn(3, 2 if backend == "triton" else 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(31), device="cpu").to(x.device)  # CPU generator
    ins = [t.requires_grad_() for t in (x, y, a, b, theta)]
    for p in ([2] if backend == "triton" else [2, 1.5, 3]):
        f = (lambda x_, y_, a_, b_, t_: hp.ot.sliced_wasserstein(x_, y_, a_, b_, projections=t_, p=p, backend=backend))
        grads = torch.autograd.grad(f(*ins), ins, create_graph=True)
        assert all(g.requires_grad for g in grads)
        assert torch.autograd.gradgradcheck(f, ins)
    if backend == "triton":
        return
    # gradient penalty on a batched loss: the penalty's gradient matches finite differences
    xb, yb, _, _ = _clouds(2, 5, 4, 2, torch.float64, False, seed=32)
    th = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(33))

    def penalized(x_):
        sw = hp.ot.sliced_wasserstein(x_, yb, projections=th, p=2, backend=backend).sum()
        gx, = torch.autograd.grad(sw, x_, create_graph=True)
        return sw + (gx ** 2).sum()

    assert torch.autograd.gradcheck(penalized, (xb.requires_grad_(),))


def test_double_backward_log_and_max_sliced():
    x, y, a, _ = _clouds(0, 6, 5, 2, torch.float64, True, seed=34)
    theta = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(35))
    ins = [t.requires_grad_() for t in (x, y, a, theta)]
    assert torch.autograd.gradgradcheck(
        lambda x_, y_, a_, t_: hp.ot.sliced_wasserstein(x_, y_, a_, projections=t_, p=2, log=True)[0], ins)
    assert torch.autograd.gradgradcheck(
        lambda x_, y_, a_, t_: hp.ot.max_sliced_wasserstein(x_, y_, a_, projections=t_, p=2), ins)


# (4) NaN rule on every backend
@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_nonfinite_inputs_give_nan(backend):
    x, y, a, b = _clouds(2, 7, 5, 3, torch.float64, True, seed=36)
    theta = hp.ot.random_projections(3, 4, generator=torch.Generator().manual_seed(37), dtype=torch.float64,
                                     device=x.device)
    for bad in (float("nan"), float("inf")):
        for which in ("x", "a"):
            xs, As = x.clone(), a.clone()
            (xs if which == "x" else As)[1, 2] = bad
            out = hp.ot.sliced_wasserstein(xs, y, As, b, projections=theta, backend=backend)
            assert torch.isnan(out[1]) and torch.isfinite(out[0]), (which, bad)
            torch.testing.assert_close(out[0], _ref(x[:1], y[:1], a[:1], b[:1], theta, 2)[0])


# (11) max-sliced with no projections and other bad input: ValueError / TypeError naming the argument
def test_bad_input_more():
    x, y = torch.randn(10, 3), torch.randn(8, 3)
    with pytest.raises(ValueError, match="projections"):
        hp.ot.max_sliced_wasserstein(x, y, projections=torch.randn(3, 0))
    with pytest.raises(ValueError, match="n_projections"):
        hp.ot.max_sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(ValueError, match="n_projections"):
        hp.ot.sliced_wasserstein(x, y, n_projections=2.5)
    with pytest.raises(ValueError, match="dimension D"):
        hp.ot.sliced_wasserstein(torch.randn(10, 0), torch.randn(8, 0))
    with pytest.raises(TypeError, match="seed"):
        hp.ot.sliced_wasserstein(x, y, seed="0")
    with pytest.raises(ValueError, match="seed"):
        hp.ot.sliced_wasserstein(x, y, seed=-1)
    with pytest.raises(ValueError, match="seed or generator"):
        hp.ot.sliced_wasserstein(x, y, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="log"):
        hp.ot.sliced_wasserstein(x, y, log="yes")
    with pytest.raises(TypeError, match="projections"):
        hp.ot.sliced_wasserstein(x, y, projections=torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must"):
        hp.ot.sliced_wasserstein([[0.0, 1.0], [1.0]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="a must have a positive total"):
        hp.ot.max_sliced_wasserstein(x, y, torch.zeros(10), n_projections=3)
    with pytest.raises(ValueError, match="d must"):
        hp.ot.random_projections(0, 5)
    with pytest.raises(ValueError, match="n_projections"):
        hp.ot.random_projections(3, 0)
    # non-contiguous and batched max-sliced work
    xt = torch.randn(3, 10).t()
    th = hp.ot.random_projections(3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hp.ot.max_sliced_wasserstein(xt, y, projections=th),
                               hp.ot.max_sliced_wasserstein(xt.contiguous(), y, projections=th))
    xb = torch.randn(2, 10, 3)
    mb = hp.ot.max_sliced_wasserstein(xb, y, projections=th)
    assert mb.shape == (2,)
    torch.testing.assert_close(mb[1], hp.ot.max_sliced_wasserstein(xb[1], y, projections=th))


def test_max_sliced_zero_distance_zero_grad():
    x, _, _, _ = _clouds(0, 9, 9, 3, torch.float64, seed=38)
    xa = x.clone().requires_grad_()
    out = hp.ot.max_sliced_wasserstein(xa, x.clone(), n_projections=5, seed=0)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(xa.grad).all() and xa.grad.abs().max() == 0


# (12) float32 random projections: unit norms to 1e-7 (normalized in float64, then cast)
def test_float32_projection_norms():
    for seed in range(3):
        P = hp.ot.random_projections(1000, 50, generator=torch.Generator().manual_seed(seed))
        assert P.dtype == torch.float32
        assert (P.double().pow(2).sum(0) - 1).abs().max() < 1e-7
    x, y = torch.randn(20, 1000), torch.randn(20, 1000)
    _, log = hp.ot.sliced_wasserstein(x, y, n_projections=50, seed=0, log=True)
    assert (log["projections"].double().pow(2).sum(0) - 1).abs().max() < 1e-7


# POT drop-in: positional order and defaults, seed, log, numpy in -> numpy out
def test_pot_signature_seed_and_log():
    ot = pytest.importorskip("ot")
    rng = np.random.RandomState(0)
    x, y = rng.randn(30, 4), rng.randn(40, 4)
    a = rng.uniform(0.1, 1, 30)
    a /= a.sum()
    u = np.full(40, 1 / 40)
    # numpy + int seed: the same projections (numpy's RandomState stream) and value as POT
    res, log = hp.ot.sliced_wasserstein(x, y, a, u, 10, 2, None, 3, True)
    pres, plog = ot.sliced_wasserstein_distance(x, y, a, u, 10, 2, None, 3, True)
    assert isinstance(res, np.floating) and isinstance(log["projections"], np.ndarray)
    np.testing.assert_allclose(log["projections"], plog["projections"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log["projected_emds"], plog["projected_emds"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res, pres, rtol=1e-10)
    # RandomState seeds: same draws as POT from the same state
    r1, r2 = hp.ot.sliced_wasserstein(x, y, seed=np.random.RandomState(5)), \
        ot.sliced_wasserstein_distance(x, y, seed=np.random.RandomState(5))
    np.testing.assert_allclose(r1, r2, rtol=1e-10)
    # default n_projections is POT's 50
    _, log = hp.ot.sliced_wasserstein(x, y, seed=0, log=True)
    assert log["projections"].shape == (4, 50) and log["projected_emds"].shape == (50,)
    # torch + int seed: POT seeds torch's generator with it; same numbers, global RNG untouched
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    state = torch.random.get_rng_state()
    v1 = hp.ot.sliced_wasserstein(xt, yt, n_projections=20, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(v1, ot.sliced_wasserstein_distance(xt, yt, n_projections=20, seed=7))
    assert isinstance(v1, torch.Tensor)
    # hotpath's own generator= keyword still works, and a torch.Generator as seed is the same
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(hp.ot.sliced_wasserstein(xt, yt, n_projections=8, generator=g1),
                       hp.ot.sliced_wasserstein(xt, yt, n_projections=8, seed=g2))
    # log=True agrees with the fused path and is differentiable
    xg = xt.clone().requires_grad_()
    val, lg = hp.ot.sliced_wasserstein(xg, yt, n_projections=8, seed=1, log=True)
    torch.testing.assert_close(val, hp.ot.sliced_wasserstein(xt, yt, n_projections=8, seed=1))
    assert lg["projected_emds"].requires_grad
    val.backward()
    assert torch.isfinite(xg.grad).all()
    # POT-named aliases with POT's argument names
    np.testing.assert_allclose(hp.ot.sliced_wasserstein_distance(X_s=x, X_t=y, seed=2),
                               ot.sliced_wasserstein_distance(X_s=x, X_t=y, seed=2), rtol=1e-10)
    np.testing.assert_allclose(hp.ot.max_sliced_wasserstein_distance(x, y, seed=2),
                               ot.max_sliced_wasserstein_distance(x, y, seed=2), rtol=1e-10)
    np.testing.assert_allclose(hp.ot.get_random_projections(4, 6, seed=9),
                               ot.sliced.get_random_projections(4, 6, seed=9), rtol=1e-12)
    # a batched log
    xb, yb = torch.randn(3, 10, 2), torch.randn(3, 12, 2)
    val, lg = hp.ot.sliced_wasserstein(xb, yb, n_projections=5, seed=0, log=True)
    assert val.shape == (3,) and lg["projected_emds"].shape == (3, 5)
    torch.testing.assert_close(val, lg["projected_emds"].mean(1).sqrt())


def test_sliced_blocks_of_directions_match_one_block():
    # the projections are processed in blocks of directions (bounded memory at 1M points x 256
    # directions); any block size gives the same costs and gradients
    from hotpath._ops import wasserstein1d as W
    from hotpath.reference import wasserstein1d as RW
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 7, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    a, b = torch.rand(2, 7, generator=g, dtype=torch.float64), torch.rand(2, 5, generator=g, dtype=torch.float64)
    th = torch.randn(3, 9, generator=g, dtype=torch.float64)
    need = (True,) * 5
    whole = W.sliced_via_rows(x, y, a, b, th, 2.0, need, RW.wasserstein_1d_grads)
    for block in (1, 24, 50):   # 1 direction, 1 direction, 2 directions per block (B (N + M) = 24)
        part = W.sliced_via_rows(x, y, a, b, th, 2.0, need, RW.wasserstein_1d_grads, block_elements=block)
        for u, v in zip(whole, part):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
