"""hp.pairwise_lse against the float64 reference, on every backend; gradients; opcheck; bad input."""
import math

import pytest
import torch

import hotpath as hp
from hotpath._ops import pairwise as ops
from hotpath.reference import pairwise as ref

from conftest import assert_close, backend_param

METRICS = ["dot", "sqeuclidean"]


def _ref(x, y, scale, metric, col_bias=None, values=None):
    """float64 reference with the same batching rules as the public function."""
    X = x.double().unsqueeze(0) if x.dim() == 2 else x.double()
    Y = y.double().unsqueeze(0) if y.dim() == 2 else y.double()
    B = max(X.shape[0], Y.shape[0])
    X, Y = X.expand(B, *X.shape[1:]), Y.expand(B, *Y.shape[1:])
    cb = None if col_bias is None else col_bias.double().expand(B, Y.shape[1])
    v = None if values is None else values.double().expand(B, *values.shape[-2:])
    lse, out = ref.pairwise_lse_fwd(X, Y, cb, v, float(scale), metric)
    if out is not None:
        out = torch.nan_to_num(out)
    if x.dim() == 2 and y.dim() == 2:
        lse, out = lse[0], (None if out is None else out[0])
    return lse, out


def _inputs(B, n, m, d, k, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (lambda *s: (B, *s)) if B else (lambda *s: s)
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    dev = torch.get_default_device()
    x = torch.randn(shape(n, d), generator=g, dtype=torch.float64, device="cpu").to(dev, dtype)
    y = torch.randn(shape(m, d), generator=g, dtype=torch.float64, device="cpu").to(dev, dtype)
    cb = torch.randn(shape(m), generator=g, dtype=torch.float64, device="cpu").to(dev, dtype) if bias else None
    v = torch.randn(shape(m, k), generator=g, dtype=torch.float64, device="cpu").to(dev, dtype) if k else None
    return x, y, cb, v


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (97, 1025, 3), (1025, 97, 64), (59, 97, 513), (3, 59, 59)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(backend, metric, n, m, d, dtype):
    x, y, cb, v = _inputs(0, n, m, d, 3, dtype)
    scale = 0.3 / math.sqrt(d)
    lse, out = hp.pairwise_lse(x, y, scale=scale, metric=metric, col_bias=cb, values=v, backend=backend)
    rl, ro = _ref(x, y, scale, metric, cb, v)
    # errors scale with the magnitude of the scores
    assert_close(lse, rl, dtype, scale=max(1.0, rl.abs().max().item()))
    assert_close(out, ro, dtype, scale=4.0)
    assert lse.dtype == dtype and lse.shape == (n,) and out.shape == (n, 3)


@pytest.mark.parametrize("backend", backend_param(["cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("B,n,m,d,k", [(1, 5, 7, 3, 2), (3, 17, 33, 19, 0), (2, 1, 40, 70, 5)])
def test_batched_with_masks(backend, metric, B, n, m, d, k):
    x, y, cb, v = _inputs(B, n, m, d, k, torch.float32)
    cb[:, ::3] = -float("inf")
    res = hp.pairwise_lse(x, y, scale=0.5, metric=metric, col_bias=cb, values=v, backend=backend)
    lse, out = res if k else (res, None)
    rl, ro = _ref(x, y, 0.5, metric, cb, v)
    assert_close(lse, rl, torch.float32, scale=max(1.0, rl.abs().max().item()))
    if k:
        assert_close(out, ro, torch.float32, scale=4.0)
    # batched equals per-problem
    for b in range(B):
        one = hp.pairwise_lse(x[b], y[b], scale=0.5, metric=metric, col_bias=cb[b], backend=backend)
        assert_close(one, lse[b], torch.float32, scale=max(1.0, rl.abs().max().item()))


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_all_masked_rows_give_minus_inf_and_zero_out(backend):
    x, y, _, v = _inputs(2, 4, 6, 3, 2, torch.float32)
    cb = torch.zeros(2, 6)
    cb[1] = -float("inf")
    lse, out = hp.pairwise_lse(x, y, col_bias=cb, values=v, backend=backend)
    assert torch.isfinite(lse[0]).all()
    assert torch.isneginf(lse[1]).all()
    assert (out[1] == 0).all() and not out.isnan().any()
    x.requires_grad_(True)
    lse, out = hp.pairwise_lse(x, y, col_bias=cb, values=v, backend=backend)
    (g,) = torch.autograd.grad(torch.where(torch.isfinite(lse), lse, 0).sum() + out.sum(), [x])
    assert torch.isfinite(g).all() and (g[1] == 0).all()


@pytest.mark.parametrize("backend", backend_param(["cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_extreme_scales_do_not_overflow(backend, metric, scale):
    x, y, cb, v = _inputs(0, 33, 65, 8, 2, torch.float32)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.nn.functional.normalize(y, dim=-1)
    lse, out = hp.pairwise_lse(x, y, scale=scale, metric=metric, values=v, backend=backend)
    rl, ro = _ref(x, y, scale, metric, None, v)
    assert torch.isfinite(lse).all() and torch.isfinite(out).all()
    assert_close(lse, rl, torch.float32, scale=max(1.0, rl.abs().max().item()) * 4)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [0, 2])
def test_gradcheck(backend, metric, k):
    B, n, m, d = 2, 5, 7, 3
    x, y, cb, v = _inputs(B, n, m, d, k, torch.float64)
    cb[:, 2] = -float("inf")
    scale = torch.tensor(0.7, dtype=torch.float64)
    ins = [t.requires_grad_(True) for t in (x, y, scale)]
    finite = torch.isfinite(cb)
    cbg = torch.where(finite, cb, 0.0).requires_grad_(True)
    vg = v.requires_grad_(True) if k else None

    def f(x, y, scale, cb, *rest):
        r = hp.pairwise_lse(x, y, scale=scale, metric=metric, col_bias=cb, values=rest[0] if rest else None,
                            backend=backend)
        return r
    args = (*ins, cbg) + ((vg,) if k else ())
    # masked (-inf) columns stay masked while the finite biases are perturbed
    masked = lambda c: torch.where(finite, c, -float("inf"))  # noqa: E731
    assert torch.autograd.gradcheck(lambda x, y, s, c, *r: f(x, y, s, masked(c), *r), args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
def test_backward_only_the_needed_passes(backend, metric):
    # with only x (or only y) requiring a gradient one of the two backward passes is skipped:
    # the gradients that are computed equal those of the full backward
    x, y, cb, v = _inputs(2, 9, 13, 3, 2, torch.float64)
    full = [t.clone().requires_grad_() for t in (x, y)]
    hp.pairwise_lse(*full, metric=metric, col_bias=cb, values=v, backend=backend)[1].sum().backward()
    for i in (0, 1):
        part = [x.clone(), y.clone()]
        part[i].requires_grad_()
        hp.pairwise_lse(*part, metric=metric, col_bias=cb, values=v, backend=backend)[1].sum().backward()
        assert part[1 - i].grad is None
        assert_close(part[i].grad, full[i].grad, torch.float64)


@pytest.mark.parametrize("backend", backend_param(["cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [3, 40])
def test_backward_matches_reference_float32(backend, metric, d):
    x, y, cb, v = _inputs(2, 37, 61, d, 3, torch.float32)
    grads = []
    for be in (backend, "reference"):
        ts = [t.detach().double().requires_grad_(True) if be == "reference" else t.detach().clone().requires_grad_(True)
              for t in (x, y, cb, v)]
        lse, out = hp.pairwise_lse(ts[0], ts[1], scale=0.4, metric=metric, col_bias=ts[2], values=ts[3], backend=be)
        w = torch.linspace(-1, 1, lse.numel(), dtype=lse.dtype).reshape(lse.shape)
        grads.append(torch.autograd.grad((lse * w).sum() + out.pow(2).sum(), ts))
    for g, r in zip(*grads):
        assert_close(g, r, torch.float32, scale=20.0)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_inputs_reach_the_kernels_as_they_are(backend, metric, half, monkeypatch):
    """On the GPU (and backend="triton" through the interpreter) 16-bit x, y and values go to the
    ops unconverted, col_bias as float32; lse and out are float32 and match the float64 result on
    the same 16-bit values; gradients come back in each input's dtype. The CPU kernels read
    float32 copies."""
    seen = []
    for name in ("pairwise_lse_fwd", "pairwise_lse_bwd"):
        orig = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=orig, _n=name: (seen.append((_n, a[0].dtype, a[2].dtype)),
                                                                    _f(*a))[1])
    x, y, cb, v = _inputs(2, 9, 13, 24, 3, torch.float64)
    xh, yh, vh = (t.to(half).requires_grad_() for t in (x, y, v))
    cbf = cb.float().requires_grad_()
    lse, out = hp.pairwise_lse(xh, yh, scale=0.3, metric=metric, col_bias=cbf, values=vh, backend=backend)
    assert lse.dtype == out.dtype == torch.float32
    keep = backend == "triton" or xh.device.type == "cuda"
    assert [s[1:] for s in seen] == [(half if keep else torch.float32, torch.float32)]
    ts = [t.detach().double().requires_grad_() for t in (xh, yh, cbf, vh)]
    rl, ro = hp.pairwise_lse(ts[0], ts[1], scale=0.3, metric=metric, col_bias=ts[2], values=ts[3], backend="reference")
    mag = rl.abs().max().item()
    assert_close(lse, rl, torch.float32, scale=10 * mag)
    assert_close(out, ro, half, scale=2)
    w = torch.linspace(-1, 1, lse.numel(), dtype=torch.float64).reshape(lse.shape)
    got = torch.autograd.grad((lse * w.float()).sum() + out.sum(), (xh, yh, cbf, vh))
    want = torch.autograd.grad((rl * w).sum() + ro.sum(), ts)
    for g, r, t in zip(got, want, (xh, yh, cbf, vh)):
        assert g.dtype == t.dtype
        assert_close(g, r, half, scale=4 * max(1.0, r.abs().max().item()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d,k", [(1, 0), (3, 3), (16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_cpp_narrow_kernel_matches_reference(metric, d, k, dtype):
    """The CUDA C++ forward (d, k <= 16), called directly: the dispatcher gives it only problems
    past CPP_MIN_PAIRS, which no other test reaches."""
    from hotpath import _ext
    from hotpath.backends.cuda import pairwise as CP
    _ext.load_extension()
    if not CP.cuda_kernels_built():
        pytest.skip("the extension was built without its CUDA kernels")
    x, y, cb, v = _inputs(2, 37, 129, d, k, torch.float64)
    cb[:, 5] = -math.inf
    got = CP.pairwise_lse_fwd_narrow.overload(*(t.to("cuda", dtype) if t is not None else None
                                                for t in (x, y, cb, v)), 0.3, metric)
    lse, out = ref.pairwise_lse_fwd(x, y, cb, v, 0.3, metric)
    mag = max(1.0, lse.abs().max().item())
    assert_close(got[0].cpu(), lse, dtype, scale=10 * mag)
    if k:
        assert_close(got[1].cpu(), out, dtype, scale=10)


def test_empty_and_nan():
    x, y, cb, v = _inputs(0, 4, 6, 3, 2, torch.float32)
    lse, out = hp.pairwise_lse(x[:0], y, values=v)
    assert lse.shape == (0,) and out.shape == (0, 2)
    lse, out = hp.pairwise_lse(x, y[:0], values=v[:0])
    assert torch.isneginf(lse).all() and (out == 0).all()
    xn = x.clone()
    xn[1, 0] = float("nan")
    for be in ("cpu", "reference"):
        lse = hp.pairwise_lse(xn, y, backend=be)
        assert torch.isnan(lse[1]) and torch.isfinite(lse[[0, 2, 3]]).all()



def _lse_and_grads(backend, x, y, cb=None, v=None, **kw):
    """(lse, out, grads of lse.sum() + out.sum() w.r.t. the given float inputs)."""
    ts = [None if t is None else t.clone().requires_grad_(True) for t in (x, y, cb, v)]
    r = hp.pairwise_lse(ts[0], ts[1], col_bias=ts[2], values=ts[3], backend=backend, **kw)
    lse, out = r if v is not None else (r, None)
    total = lse.sum() + (out.sum() if out is not None else 0)
    leaves = [t for t in ts if t is not None]
    return lse.detach(), None if out is None else out.detach(), torch.autograd.grad(total, leaves)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_nan_rule_nonfinite_x_row(backend):
    # an infinite x_i: row i's lse NaN (only that row), gradients of what it reaches NaN: x_i and
    # every unmasked column; a -inf col_bias column is never read and gets gradient 0
    x, y, cb, v = _inputs(0, 3, 4, 2, 1, torch.float32)
    x[1, 0] = math.inf
    cb[2] = -math.inf
    lse, out, (gx, gy, gc, gv) = _lse_and_grads(backend, x, y, cb, v)
    assert torch.isnan(lse[1]) and torch.isfinite(lse[[0, 2]]).all()
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    assert torch.isnan(gx[1]).all() and torch.isfinite(gx[[0, 2]]).all()
    for g in (gy, gc, gv):
        assert torch.isnan(g[[0, 1, 3]]).all() and (g[2] == 0).all()


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_nan_rule_masked_column_is_never_read(backend):
    # y_j = -inf and values_j = NaN under col_bias_j = -inf: the column is masked, all finite
    x, y, cb, v = _inputs(0, 2, 3, 2, 2, torch.float32)
    y[1, 0], v[1, 1], cb[1] = -math.inf, math.nan, -math.inf
    lse, out, grads = _lse_and_grads(backend, x, y, cb, v)
    assert torch.isfinite(lse).all() and torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[1][1] == 0).all() and grads[2][1] == 0 and (grads[3][1] == 0).all()


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
@pytest.mark.parametrize("metric", METRICS)
def test_nan_rule_d0_infinite_bias_or_values(backend, metric):
    # d = 0: the scores are the column biases. A +inf col_bias is a non-finite input: every row
    # of its batch NaN (it was +inf lse with out 0 in C++, NaN out in the reference); a +inf in
    # values makes its channel of out NaN in every row (it was 0 in C++, NaN in the reference)
    x, y = torch.zeros(2, 0), torch.zeros(3, 0)
    cb, v = torch.tensor([0.0, math.inf, 1.0]), torch.ones(3, 2)
    lse, out = hp.pairwise_lse(x, y, metric=metric, col_bias=cb, values=v, backend=backend)
    assert torch.isnan(lse).all() and torch.isnan(out).all()
    v[1, 0] = math.inf
    lse, out, (_, _, gc, gv) = _lse_and_grads(backend, x, y, cb.clamp(max=0), v, metric=metric)
    assert torch.isfinite(lse).all() and torch.isnan(out[:, 0]).all() and torch.isfinite(out[:, 1]).all()
    assert torch.isnan(gc).all() and torch.isnan(gv[:, 0]).all() and torch.isfinite(gv[:, 1]).all()


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_nan_rule_overflowing_score(backend):
    # finite inputs whose score overflows to +inf: lse = +inf, softmax weights 0 (out = 0, no
    # gradient through that row) -- the C++ backward had inf - inf = NaN there
    x = torch.tensor([[1e30], [1.0]])
    y = torch.tensor([[1e30], [2.0]])
    lse, out, (gx, gy, gv) = _lse_and_grads(backend, x, y, None, torch.ones(2, 1))
    assert lse[0] == math.inf and math.isfinite(lse[1]) and out[0, 0] == 0
    assert gx[0] == 0 and torch.isfinite(gx).all() and torch.isfinite(gy).all() and torch.isfinite(gv).all()


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu", "triton"]))
def test_huge_scores_column_pass_has_no_nan(backend):
    # scores ~ 1e31: the C++ column pass rounds score - lse in another order than the forward
    # and landed ulps of the score (1e24) above 0: exp -> inf, NaN gradients for y
    x = torch.tensor([[-1.0000000150474662e+30, -1.4607607126235962, -0.10703733563423157],
                      [-1.0606842041015625, -1.6868053674697876, -2.022517681121826],
                      [-2.8406617641448975, -2.6058027744293213, 2.1340818405151367]])
    y = torch.tensor([[2.8203179836273193, -0.24370233714580536, 0.8701447248458862],
                      [1.2469191551208496, 2.5244860649108887, 1.7468873262405396]])
    cb = torch.tensor([0.15272843837738037, 1.319448709487915])
    lse, _, grads = _lse_and_grads(backend, x, y, cb, scale=10.0)
    assert torch.isfinite(lse).all() and all(torch.isfinite(g).all() for g in grads)


def test_noncontiguous_expanded_half_inputs():
    x, y, cb, v = _inputs(0, 20, 30, 6, 2, torch.float32)
    xt = torch.randn(6, 20).t()               # non-contiguous
    ye = y[:1].expand(30, 6)                  # expanded (stride 0)
    lse = hp.pairwise_lse(xt, ye, scale=0.3)
    assert_close(lse, _ref(xt, ye, 0.3, "dot")[0], torch.float32)
    lse16 = hp.pairwise_lse(x.bfloat16(), y.bfloat16(), scale=0.3)
    assert lse16.dtype == torch.float32
    assert_close(lse16, _ref(x.bfloat16(), y.bfloat16(), 0.3, "dot")[0], torch.float32)
    # broadcasting a 2-D y against a batched x
    xb = torch.randn(3, 5, 6)
    lse = hp.pairwise_lse(xb, y, scale=0.3, col_bias=cb)
    for b in range(3):
        assert_close(lse[b], _ref(xb[b], y, 0.3, "dot", cb)[0], torch.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_opcheck(metric):
    x, y, cb, v = _inputs(2, 5, 7, 3, 2, torch.float32)
    torch.library.opcheck(ops.pairwise_lse_fwd.overload, (x, y, cb, v, 0.5, metric))
    torch.library.opcheck(ops.pairwise_lse_fwd.overload, (x, y, None, None, 0.5, metric))
    lse, out = ops.pairwise_lse_fwd(x, y, cb, v, 0.5, metric)
    for need_rows, need_cols in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(ops.pairwise_lse_bwd.overload, (x, y, cb, v, lse, out, torch.ones_like(lse),
                                                     torch.ones_like(out), 0.5, metric, need_rows, need_cols))


def test_torch_compile():
    x, y, cb, v = _inputs(2, 5, 7, 3, 2, torch.float32)
    f = torch.compile(lambda x, y: hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean"), backend="eager", fullgraph=False)
    assert_close(f(x, y), _ref(x, y, 0.5, "sqeuclidean")[0], torch.float32)


def test_bad_input():
    x, y, cb, v = _inputs(0, 4, 6, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="feature dimension"):
        hp.pairwise_lse(x, torch.randn(6, 4))
    with pytest.raises(ValueError, match="batch size"):
        hp.pairwise_lse(torch.randn(2, 4, 3), torch.randn(3, 6, 3))
    with pytest.raises(ValueError, match="x must be 2-D or 3-D"):
        hp.pairwise_lse(torch.randn(4), y)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        hp.pairwise_lse(torch.ones(4, 3, dtype=torch.int64), y)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        hp.pairwise_lse(x, [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="scale must be > 0"):
        hp.pairwise_lse(x, y, metric="sqeuclidean", scale=0.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        hp.pairwise_lse(x, y, scale=float("nan"))
    with pytest.raises(ValueError, match="values must have shape"):
        hp.pairwise_lse(x, y, values=torch.randn(5, 2))
    with pytest.raises(ValueError, match="col_bias must have shape"):
        hp.pairwise_lse(x, y, col_bias=torch.randn(5))
    with pytest.raises(ValueError, match="metric must be one of"):
        hp.pairwise_lse(x, y, metric="cosine")
    with pytest.raises(ValueError, match="backend must be one of"):
        hp.pairwise_lse(x, y, backend="gpu")
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET|needs CUDA"):
        import os
        old = os.environ.pop("TRITON_INTERPRET", None)
        try:
            hp.pairwise_lse(x, y, backend="triton")
        finally:
            if old is not None:
                os.environ["TRITON_INTERPRET"] = old
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            hp.pairwise_lse(x, y.cuda())


def test_info_reports_build():
    s = hp.info()
    assert "cpp_extension" in s and "threads" in s
    assert hp.info(as_dict=True)["cpp_extension"].startswith(("built", "missing"))


def test_deterministic_across_thread_counts():
    x, y, cb, v = _inputs(2, 70, 300, 5, 3, torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = hp.pairwise_lse(x, y, col_bias=cb, values=v, backend="cpu")
        torch.set_num_threads(max(2, old))
        many = hp.pairwise_lse(x, y, col_bias=cb, values=v, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_missing_extension_falls_back_with_one_warning():
    import subprocess
    import sys
    code = ("import warnings, torch\nwarnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import hotpath as hp\n"
            "    x = torch.randn(5, 3)\n"
            "    a = hp.pairwise_lse(x, x)\n    b = hp.pairwise_lse(x, x)\n"
            "    print(sum('C++ extension unavailable' in str(m.message) for m in w), 'missing' in hp.info())\n")
    env = dict(__import__("os").environ, HOTPATH_DISABLE_CPP="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"], out.stdout + out.stderr
