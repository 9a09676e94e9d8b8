"""The "library" contrastive sweeps (backends/cuda/contrastive.py: torch GEMMs over row chunks),
their strategy switch, and the losses computed through them, against the float64 references.
Each sweep test runs with both chunk epilogues (the `backend` fixture): torch's elementwise
passes ("cpu", on CPU tensors) and the Triton kernels ("triton": through the interpreter here, on
the GPU in GPU mode). In GPU mode the last test also runs the losses on CUDA under both strategies."""
import pytest
import torch

import hotpath as hp
from hotpath._ops import contrastive as ops
from hotpath.backends.cuda import contrastive as L
from hotpath.reference import contrastive as R

from conftest import HAS_TRITON, assert_close, backend_param

C = hp.contrastive
SHAPES = [(1, 1, 2), (5, 1, 3), (37, 29, 11), (64, 64, 130)]


@pytest.fixture(params=["cpu", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton"))])
def backend(request, monkeypatch):
    """The chunk epilogues under test: torch's passes ("cpu") or the Triton kernels ("triton")."""
    if request.param == "triton":
        from hotpath.backends.triton import contrastive_chunks
        monkeypatch.setattr(L, "_chunk_kernels", lambda x: contrastive_chunks)
    else:
        monkeypatch.setattr(L, "_chunk_kernels", lambda x: None)
    return request.param


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows (of float64 scores): every sweep crosses several chunk boundaries."""
    def use(m):
        monkeypatch.setattr(L, "CHUNK_BYTES", 8 * max(m, 1) * 3)
    return use


def _sweep_cases(n, m, d, exclude_diag, dtype=torch.float64):
    g = torch.Generator().manual_seed(n * 1000 + m)  # a CPU generator: draw on the CPU, then move
    x = torch.randn(n, d, dtype=dtype, generator=g, device="cpu").to(torch.get_default_device())
    y = x if exclude_diag else torch.randn(m, d, dtype=dtype, generator=g, device="cpu").to(x.device)
    return x, y


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("exclude_diag", [False, True])
@pytest.mark.parametrize("scale", [1.7, -0.6])
def test_library_sweeps_match_reference(n, m, d, exclude_diag, scale, small_chunks, backend):
    x, y = _sweep_cases(n, m, d, exclude_diag)
    m = y.shape[0]
    small_chunks(m)
    lr, lc = ops.lse_sweep.default(x, y, scale, True, exclude_diag)
    got_r, got_c = L.lse_sweep_library(x, y, scale, True, exclude_diag)
    assert_close(got_r, lr, msg="row lse")
    assert_close(got_c, lc, msg="column lse")
    rows_only = L.lse_sweep_library(x, y, scale, False, exclude_diag)
    assert_close(rows_only[0], lr)
    assert rows_only[1].numel() == 0
    ra = torch.rand(n, dtype=x.dtype) + 0.1
    ca = torch.rand(m, dtype=x.dtype) + 0.1
    for use_r, use_c in [(True, True), (True, False), (False, True), (False, False)]:
        args = (x, y, scale, ra if use_r else None, lr if use_r else None, ca if use_c else None,
                lc if use_c else None, exclude_diag)
        assert_close(L.softmax_acc_library(*args), ops.softmax_acc.default(*args), msg=f"acc r={use_r} c={use_c}")
        for got, want in zip(L.softmax_acc_xy_library(*args), ops.softmax_acc_xy.default(*args)):
            assert_close(got, want, msg=f"acc_xy r={use_r} c={use_c}")
    assert_close(L.siglip_rows_library(x, y, scale, -2.0), ops.siglip_rows.default(x, y, scale, -2.0))
    for got, want in zip(L.siglip_acc_library(x, y, scale, -2.0), ops.siglip_acc.default(x, y, scale, -2.0)):
        assert_close(got, want)
    for want_y in (True, False):
        got, want = L.siglip_grads_library(x, y, scale, -2.0, want_y), ops.siglip_grads.default(x, y, scale, -2.0, want_y)
        assert [t.shape for t in got] == [t.shape for t in want]
        for a, b in zip(got, want):
            assert_close(a, b)


def test_both_sides_score_each_chunk_once(small_chunks, monkeypatch, backend):
    """softmax_acc_xy / siglip_grads: one score GEMM per chunk of rows serves both sides (a
    chunk's weights also accumulate the y side's gradient) and, for SigLIP, the loss too."""
    x, y = _sweep_cases(10, 7, 5, False)
    small_chunks(7)
    calls = []
    gemm = L._gemm
    monkeypatch.setattr(L, "_gemm", lambda *a: calls.append(a[2]) or gemm(*a))
    lr, lc = ops.lse_sweep.default(x, y, 0.9, True, False)
    L.softmax_acc_xy_library(x, y, 0.9, torch.rand(10, dtype=x.dtype), lr, torch.rand(7, dtype=x.dtype), lc, False)
    assert calls == [0, 3, 6, 9]
    calls.clear()
    L.siglip_grads_library(x, y, 0.9, 1.0, True)
    assert calls == [0, 3, 6, 9]


def test_library_sweeps_every_row_masked(backend):
    """One column with the diagonal excluded: every score is masked, the lse is -inf and the
    softmax weights are 0 (not NaN), as in the reference."""
    x = torch.randn(1, 4, dtype=torch.float64)
    lr, lc = L.lse_sweep_library(x, x, 1.0, True, True)
    assert lr.item() == -float("inf") and lc.item() == -float("inf")
    acc = L.softmax_acc_library(x, x, 1.0, torch.ones(1, dtype=x.dtype), lr, torch.ones(1, dtype=x.dtype), lc, True)
    assert torch.equal(acc, torch.zeros_like(acc))


def test_library_column_lse_large_and_far_apart_scores(small_chunks, backend):
    """Column maxima that grow by 1e4 from one chunk to the next, and columns whose first chunks
    are all far below later ones: the running sum rescales without overflow or 0 * inf."""
    n, m, d = 12, 7, 3
    x = torch.randn(n, d, dtype=torch.float64)
    x[:3] *= -1e3
    x[9:] *= 1e3
    y = torch.randn(m, d, dtype=torch.float64)
    small_chunks(m)
    lr, lc = ops.lse_sweep.default(x, y, 10.0, True, False)
    got_r, got_c = L.lse_sweep_library(x, y, 10.0, True, False)
    assert_close(got_r, lr)
    assert_close(got_c, lc)


def test_library_sweeps_nonfinite_rows(small_chunks, backend):
    x, y = _sweep_cases(9, 6, 4, False)
    x[4, 1] = float("nan")
    y[2, 0] = float("inf")
    small_chunks(6)
    for got, want in zip(L.lse_sweep_library(x, y, 0.5, True, False), ops.lse_sweep.default(x, y, 0.5, True, False)):
        torch.testing.assert_close(got, want, equal_nan=True)
    torch.testing.assert_close(L.siglip_rows_library(x, y, 0.5, 1.0), ops.siglip_rows.default(x, y, 0.5, 1.0),
                               equal_nan=True)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_library_16bit_operands(half, backend):
    """16-bit operands are scored with float32 sums of exact products (a 16-bit GEMM output would
    round the scores to 16 bits): float32-accurate statistics. The accumulating GEMMs take the
    weights rounded to 16 bits, as the fused kernels' 16-bit dots do: 16-bit-accurate gradients."""
    x, y = _sweep_cases(17, 13, 8, False, torch.float32)
    x, y = x.to(half), y.to(half)
    lr, lc = L.lse_sweep_library(x, y, 3.0, True, False)
    assert lr.dtype == torch.float32
    want_r, want_c = ops.lse_sweep.default(x.double(), y.double(), 3.0, True, False)
    assert_close(lr, want_r, torch.float32)
    assert_close(lc, want_c, torch.float32)
    acc, rows = L.siglip_acc_library(x, y, 3.0, -1.0)
    want_acc, want_rows = ops.siglip_acc.default(x.double(), y.double(), 3.0, -1.0)
    assert acc.dtype == torch.float32
    assert_close(acc, want_acc, half)
    assert_close(rows, want_rows, torch.float32)
    ra, ca = torch.rand(17, dtype=torch.float64), torch.rand(13, dtype=torch.float64)
    ax, ay = L.softmax_acc_xy_library(x, y, 3.0, ra.float(), want_r.float(), ca.float(), want_c.float(), False)
    wx, wy = ops.softmax_acc_xy.default(x.double(), y.double(), 3.0, ra, want_r, ca, want_c, False)
    assert ax.dtype == ay.dtype == torch.float32
    assert_close(ax, wx, half)
    assert_close(ay, wy, half)


def test_library_empty_operands(backend):
    x = torch.randn(0, 4)
    y = torch.randn(5, 4)
    lr, lc = L.lse_sweep_library(x, y, 1.0, True, False)
    assert lr.shape == (0,) and torch.equal(lc, torch.full((5,), -float("inf")))
    lr, lc = L.lse_sweep_library(y, x, 1.0, True, False)
    assert torch.equal(lr, torch.full((5,), -float("inf"))) and lc.shape == (0,)
    assert L.softmax_acc_library(y, x, 1.0, torch.ones(5), lr, None, None, False).shape == (5, 4)
    acc, rows = L.siglip_acc_library(y, x, 1.0, 0.0)
    assert acc.shape == (5, 4) and torch.equal(rows, torch.zeros(5))
    for a, b in ((x, y), (y, x)):   # the side without rows gets nothing; the other zeros
        ax, ay = L.softmax_acc_xy_library(a, b, 1.0, torch.ones(len(a)), torch.zeros(len(a)), None, None, False)
        assert torch.equal(ax, torch.zeros(len(a), 4)) and torch.equal(ay, torch.zeros(len(b), 4))
        loss, ax, ay, rows = L.siglip_grads_library(a, b, 1.0, 0.0, True)
        assert torch.equal(ax, torch.zeros(len(a), 4)) and torch.equal(ay, torch.zeros(len(b), 4))
        assert torch.equal(rows, torch.zeros(len(a))) and torch.equal(loss, torch.zeros(len(a)))


def test_strategy_choice(monkeypatch):
    x32, x16 = torch.randn(4, 512), torch.randn(4, 512).bfloat16()
    monkeypatch.setenv(L.ENV, "fused")
    assert L.strategy(x32, x32) == "fused"
    monkeypatch.setenv(L.ENV, "library")
    assert L.strategy(x16, x16) == "library"
    monkeypatch.setenv(L.ENV, "cublas")
    with pytest.raises(ValueError, match=L.ENV):
        L.strategy(x32, x32)
    monkeypatch.delenv(L.ENV)
    monkeypatch.setattr(L, "triton_available", lambda: False)
    assert L.strategy(x16, x16) == "library"          # no Triton: the library, not the reference
    monkeypatch.setattr(L, "triton_available", lambda: True)
    from hotpath.backends.triton import contrastive as tc
    monkeypatch.setattr(tc, "_acc_width", lambda d, dtype, device: (32, 4, 4))
    assert L.strategy(x16, x16) == "fused"            # 16-bit tensor-core tiles, whatever the spans
    assert L.strategy(x32, x32) == "library"          # four feature spans: four score passes a side
    assert L.strategy(x32.double(), x32.double()) == "library"
    assert L.strategy(x32[:, :0], x32[:, :0]) == "fused"
    monkeypatch.setattr(tc, "_acc_width", lambda d, dtype, device: (32, 4, 1))
    assert L.strategy(x32, x32) == "fused"            # one span: the scores are computed once


def test_pick_runs_the_chosen_kernel(monkeypatch):
    x, y = _sweep_cases(6, 5, 3, False)
    monkeypatch.setenv(L.ENV, "library")
    called = []
    monkeypatch.setattr(L, "lse_sweep_library", lambda *a: called.append("library") or ops.lse_sweep.default(*a))
    L.lse_sweep(x, y, 1.0, True, False)
    monkeypatch.setenv(L.ENV, "fused")
    monkeypatch.setattr(L, "triton_available", lambda: False)
    want = ops.lse_sweep.default(x, y, 1.0, True, False)
    got = L.lse_sweep(x, y, 1.0, True, False)   # fused without Triton: the reference
    assert called == ["library"] and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.fixture
def library_ops(monkeypatch, small_chunks):
    """The losses' op calls routed to the library sweeps (on CPU the dispatcher would pick the
    C++ kernels)."""
    small_chunks(64)
    for name in ("lse_sweep", "softmax_acc", "softmax_acc_xy", "siglip_rows", "siglip_acc", "siglip_grads"):
        monkeypatch.setattr(ops, name, getattr(L, f"{name}_library"))


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _check(fn, ref, inputs):
    got, want = fn(), ref()
    assert_close(got, want, msg="loss")
    for a, b in zip(_grads(got, inputs), _grads(want, inputs)):
        assert_close(a, b, msg="grad")


def test_losses_through_library_sweeps(library_ops, backend):
    g = torch.Generator().manual_seed(3)
    dev = torch.get_default_device()
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    img, txt = (torch.randn(23, 10, dtype=torch.float64, generator=g, device="cpu").to(dev).requires_grad_()
                for _ in range(2))
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    _check(lambda: C.clip_loss(img, txt, scale), lambda: R.clip_loss(img, txt, scale), [img, txt, scale])
    _check(lambda: C.siglip_loss(img, txt, scale, bias), lambda: R.siglip_loss(img, txt, scale, bias),
           [img, txt, scale, bias])
    _check(lambda: C.info_nce(img, txt, temperature=0.3), lambda: R.info_nce(img, txt, 0.3), [img, txt])
    lab = torch.randint(0, 4, (23,), generator=g, device="cpu").to(dev)
    _check(lambda: C.supcon_loss(img, lab, temperature=0.2), lambda: R.supcon_loss(img, lab, 0.2), [img])
    # gradcheck through the chunked backward (the scale is differentiable too)
    a, b = (t.detach()[:7, :4].clone().requires_grad_() for t in (img, txt))
    s = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, s: C.clip_loss(a, b, s), (a, b, s))
    torch.autograd.gradcheck(lambda a, b, s: C.siglip_loss(a, b, s, -1.0), (a, b, s))


@pytest.mark.parametrize("backend", backend_param(["cuda"]))
@pytest.mark.parametrize("mode", ["fused", "library"])
def test_cuda_strategies_match_reference(backend, mode, monkeypatch):
    """GPU mode: ClipLoss / SigLipLoss at d = 160 (several feature spans of the fused float32
    sweeps) under each strategy, against the float64 reference; opcheck of the CUDA kernels."""
    monkeypatch.setenv(L.ENV, mode)
    g = torch.Generator(device="cuda").manual_seed(0)
    img, txt = (torch.randn(300, 160, device="cuda", generator=g) for _ in range(2))
    img, txt = (t / t.norm(dim=1, keepdim=True) for t in (img, txt))
    leaves = [t.clone().requires_grad_() for t in (img, txt)]
    wide = [t.double().requires_grad_() for t in (img, txt)]
    from hotpath.benchmarks._gpu import tf32
    with tf32(False):
        for ours, ref in ((lambda a, b: C.clip_loss(a, b, 30.0), lambda a, b: R.clip_loss(a, b, 30.0)),
                          (lambda a, b: C.siglip_loss(a, b, 10.0, -10.0), lambda a, b: R.siglip_loss(a, b, 10.0, -10.0))):
            got, want = ours(*leaves), ref(*wide)
            assert_close(got, want, torch.float32, scale=10)
            for a, b in zip(_grads(got, leaves), _grads(want, wide)):
                assert_close(a, b, torch.float32, scale=10)
        x, y = img[:40, :20].contiguous(), txt[:30, :20].contiguous()
        lr, lc = ops.lse_sweep(x, y, 0.7, True, False)
        for op, args in ((ops.lse_sweep, (x, y, 0.7, True, False)),
                         (ops.softmax_acc, (x, y, 0.7, torch.rand_like(lr), lr, torch.rand_like(lc), lc, False)),
                         (ops.softmax_acc_xy, (x, y, 0.7, torch.rand_like(lr), lr, torch.rand_like(lc), lc, False)),
                         (ops.siglip_rows, (x, y, 2.0, -1.0)), (ops.siglip_acc, (x, y, 2.0, -1.0)),
                         (ops.siglip_grads, (x, y, 2.0, -1.0, True))):
            torch.library.opcheck(op.overload, args)


@pytest.mark.parametrize("backend", backend_param(["cuda"]))
@pytest.mark.parametrize("mode", ["fused", "library"])
def test_cuda_strategies_bf16(backend, mode, monkeypatch):
    """GPU mode: bf16 ClipLoss / SigLipLoss under each strategy (the library's out_dtype GEMMs)
    against the float64 reference of the same bf16 values, at bf16 tolerance."""
    monkeypatch.setenv(L.ENV, mode)
    g = torch.Generator(device="cuda").manual_seed(1)
    img, txt = (torch.randn(300, 160, device="cuda", generator=g) for _ in range(2))
    img, txt = ((t / t.norm(dim=1, keepdim=True)).bfloat16() for t in (img, txt))
    leaves = [t.clone().requires_grad_() for t in (img, txt)]
    wide = [t.double().requires_grad_() for t in (img, txt)]
    for ours, ref in ((lambda a, b: C.clip_loss(a, b, 30.0), lambda a, b: R.clip_loss(a, b, 30.0)),
                      (lambda a, b: C.siglip_loss(a, b, 10.0, -10.0), lambda a, b: R.siglip_loss(a, b, 10.0, -10.0))):
        got, want = ours(*leaves), ref(*wide)
        assert got.dtype == torch.bfloat16
        assert_close(got, want, torch.bfloat16)
        for a, b in zip(_grads(got, leaves), _grads(want, wide)):
            assert_close(a, b, torch.bfloat16, scale=2)
