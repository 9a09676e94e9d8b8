"""The Triton kernels of the pairwise engine, the contrastive family and OT, called directly
(launcher = op kernel) against the float64 references; the precision policy; the shared-memory
estimate of every tile config. On CPU they run through the interpreter (small odd shapes); in GPU
mode (conftest) the same tests run compiled on CUDA tensors."""
import contextlib
import math

import pytest
import torch

from conftest import GPU_MODE, HAS_TRITON, assert_close

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")

if HAS_TRITON:
    from hotpath.backends.triton import contrastive as TC
    from hotpath.backends.triton import ot as TO
    from hotpath.backends.triton import pairwise as TP
from hotpath._ops import contrastive as OC
from hotpath.reference import contrastive as RC
from hotpath.reference import ot as RO
from hotpath.reference import pairwise as RP

DEV = "cuda" if GPU_MODE else "cpu"
KB99 = 99 * 1024


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _close(got, want, dtype, mag=1.0, extra=1.0):
    """Tolerance of the compute dtype, scaled by the magnitude of the quantity."""
    assert_close(got.cpu(), want.cpu(), dtype, scale=extra * max(1.0, mag))


# -- pairwise engine -----------------------------------------------------------------------------------

# d, k <= 4 in float32 / float64 run the rank-1 update path (SMALL_D / SMALL_K), 5 the tl.dot one
PW_SHAPES = [(1, 1, 3, 1, 0), (3, 17, 33, 3, 2), (1, 33, 17, 64, 3), (3, 3, 17, 33, 1), (1, 17, 1, 16, 0),
             (2, 9, 21, 4, 4), (1, 9, 21, 5, 5)]


@pytest.mark.parametrize("metric", ["dot", "sqeuclidean"])
@pytest.mark.parametrize("B,n,m,d,k", PW_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_fwd_bwd(metric, B, n, m, d, k, dtype):
    x, y, cb = _rand(B, n, d, seed=1), _rand(B, m, d, seed=2), _rand(B, m, seed=3)
    cb[:, ::3] = -math.inf                    # masked columns, including the only one at m = 1
    v = _rand(B, m, k, seed=4) if k else None
    scale = 0.5 / math.sqrt(d)
    rl, ro = RP.pairwise_lse_fwd(x, y, cb, v, scale, metric)
    to = lambda t: None if t is None else t.to(DEV, dtype)  # noqa: E731
    lse, out = TP.pairwise_lse_fwd(to(x), to(y), to(cb), to(v), scale, metric)
    mag = rl[torch.isfinite(rl)].abs().max().item() if torch.isfinite(rl).any() else 1.0
    _close(lse, rl, dtype, mag)
    if k:
        _close(out, torch.nan_to_num(ro), dtype, extra=4.0)
    gl, go = _rand(B, n, seed=5), (_rand(B, n, k, seed=6) if k else None)
    want = RP.pairwise_lse_bwd(x, y, cb, v, rl, ro, gl, go, scale, metric)
    got = TP.pairwise_lse_bwd(to(x), to(y), to(cb), to(v), to(rl), to(ro), to(gl), to(go), scale, metric)
    for g, w in zip(got, want):
        if w is not None:
            _close(g, torch.nan_to_num(w), dtype, mag, extra=20.0)


def test_pairwise_skips_passes():
    x, y = _rand(2, 5, 3).to(DEV, torch.float32), _rand(2, 7, 3, seed=1).to(DEV, torch.float32)
    lse, _ = TP.pairwise_lse_fwd(x, y, None, None, 1.0, "dot")
    gl = torch.ones_like(lse)
    gx, gy, _, _ = TP.pairwise_lse_bwd(x, y, None, None, lse, None, gl, None, 1.0, "dot", True, False)
    assert (gy == 0).all() and (gx != 0).any()
    gx, gy, _, _ = TP.pairwise_lse_bwd(x, y, None, None, lse, None, gl, None, 1.0, "dot", False, True)
    assert (gx == 0).all() and (gy != 0).any()


@pytest.mark.parametrize("scale", [1e-4, 50.0])
def test_pairwise_extreme_scale(scale):
    x, y = _rand(1, 17, 3), _rand(1, 33, 3, seed=1)
    for metric in ("dot", "sqeuclidean"):
        rl, _ = RP.pairwise_lse_fwd(x, y, None, None, scale, metric)
        lse, _ = TP.pairwise_lse_fwd(x.to(DEV), y.to(DEV), None, None, scale, metric)
        _close(lse, rl, torch.float64, rl.abs().max().item())
        lse32, _ = TP.pairwise_lse_fwd(x.to(DEV, torch.float32), y.to(DEV, torch.float32), None, None, scale, metric)
        _close(lse32, rl, torch.float32, rl.abs().max().item())


def test_pairwise_nan_and_inf_rows():
    x, y = _rand(1, 4, 3), _rand(1, 6, 3, seed=1)
    x[0, 1, 0] = math.nan
    cb = torch.zeros(1, 6, dtype=torch.float64)
    cb[0, 2] = math.inf
    lse, out = TP.pairwise_lse_fwd(x.to(DEV), y.to(DEV), cb.to(DEV), y.to(DEV), 1.0, "dot")
    assert torch.isnan(lse[0, 1]) and torch.isnan(out[0, 1]).all()
    assert torch.isposinf(lse[0, [0, 2, 3]]).all() and (out[0, [0, 2, 3]] == 0).all()


@pytest.mark.parametrize("metric", ["dot", "sqeuclidean"])
def test_pairwise_bf16_inputs(metric):
    """bf16 tiles on the tensor cores, float32 statistics and outputs. Scores are exact products
    of the bf16 values summed in float32, so lse is within float32 tolerance of float64 on the
    same (rounded) inputs, relative to the score magnitude; out's second dot reads the softmax
    weights rounded to bf16 (as FlashAttention rounds P), so it is within bf16 tolerance."""
    x, y, cb = _rand(2, 17, 33), _rand(2, 33, 33, seed=1), _rand(2, 33, seed=2)
    cb[:, 1] = -math.inf
    xb, yb = x.to(torch.bfloat16), y.to(torch.bfloat16)
    v = _rand(2, 33, 2, seed=3)
    rl, ro = RP.pairwise_lse_fwd(xb.double(), yb.double(), cb, v.to(torch.bfloat16).double(), 0.2, metric)
    lse, out = TP.pairwise_lse_fwd(xb.to(DEV), yb.to(DEV), cb.float().to(DEV), v.to(DEV, torch.bfloat16), 0.2, metric)
    assert lse.dtype == out.dtype == torch.float32
    _close(lse, rl, torch.float32, 10 * rl.abs().max().item())
    _close(out, ro, torch.bfloat16, extra=2.0)


def test_narrow_widths_take_rank1_updates_outside_tensor_cores(monkeypatch):
    assert TP._small(3, torch.float32) == (3, 4) and TP._small(4, torch.float64) == (4, 4)
    assert TP._small(5, torch.float32) == (0, 16) and TP._small(0, torch.float32) == (0, 16)
    assert TP._small(3, torch.bfloat16) == (0, 16)        # tensor cores take 16-bit tiles
    monkeypatch.setattr(TP, "dot_precision", lambda dtype: "tf32x3")
    assert TP._small(3, torch.float32) == (3, 4)          # 3 FMAs a pair beat three padded MMAs
    monkeypatch.setattr(TP, "dot_precision", lambda dtype: "tf32")
    assert TP._small(3, torch.float32) == (0, 16)         # TF32 tiles take the tensor cores


def test_precision_policy(monkeypatch):
    assert TP.dot_precision(torch.float64) == "ieee"
    assert TP.dot_precision(torch.bfloat16) == "ieee"   # 16-bit tiles use the tensor cores anyway
    if not GPU_MODE:
        assert TP.dot_precision(torch.float32) == "ieee"   # the interpreter's only fp32 mode
    monkeypatch.setattr(TP, "interpreting", lambda: False)
    arch = [(9, 0)]
    monkeypatch.setattr(TP, "capability", lambda device: arch[0])
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert TP.dot_precision(torch.float32) == "tf32x3"   # float32-accurate, on Hopper's tensor cores
        arch[0] = (8, 0)
        assert TP.dot_precision(torch.float32) == "ieee"     # mma.sync GPUs: FMA dots (3xTF32 tiles spill)
        arch[0] = (9, 0)
        monkeypatch.setenv("HOTPATH_FP32_DOT", "ieee")
        assert TP.dot_precision(torch.float32) == "ieee"     # the opt-out: FMA dots
        torch.set_float32_matmul_precision("high")
        assert TP.dot_precision(torch.float32) == "tf32"
    finally:
        torch.set_float32_matmul_precision(old)


def _tf32(x):
    """float32 -> the nearest TF32 value (10 stored mantissa bits, ties away from zero: cvt.rna)."""
    return ((x.contiguous().view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("B,d,scale,unit", [(512, 512, 100.0, True), (1024, 64, 0.5, False)])
def test_3xtf32_keeps_float32_accuracy(B, d, scale, unit):
    """Why full precision maps to "tf32x3" on Hopper: each float32 operand split into a TF32 high
    part and a TF32 remainder, three tensor-core products (exact in fp32) summed in fp32, gives log-sum-exps
    within the float32 tolerance of the float64 reference (a CLIP batch at logit scale 100, a
    d = 64 kernel), where one TF32 product is ~500x off. Emulated here; the GPU test mode runs the
    kernels themselves."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, d, generator=g, dtype=torch.float64), torch.randn(B, d, generator=g, dtype=torch.float64)
    if unit:
        x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    want = torch.logsumexp(scale * (x @ y.T), 1)
    xf, yf = x.float(), y.float()
    xh, yh = _tf32(xf), _tf32(yf)
    three = (xh @ _tf32(yf - yh).T + _tf32(xf - xh) @ yh.T) + xh @ yh.T

    def err(s):
        return (torch.logsumexp(scale * s.double(), 1) - want).abs().max().item()

    mag = want.abs().max().item()
    _close(torch.logsumexp(scale * three.double(), 1), want, torch.float32, mag)
    assert err(three) <= 4 * err(xf @ yf.T)
    assert err(xh @ yh.T) > 100 * err(three)


def test_scalars_keep_float64():
    hi, lo = TP.split(1 / 3)
    assert abs((hi + lo) - 1 / 3) < 1e-15
    assert TP.split(math.inf) == (math.inf, 0.0)


def test_tile_configs_fit_shared_memory():
    """Every autotune list keeps at least one config within 99 KB (consumer GPUs) by the by-hand
    estimate for 16- and 32-bit inputs, and the pruning (by the device limit, before launch) keeps
    only those; float64 keeps its smallest config at worst."""
    for nbytes in (2, 4, 8):
        for d in (1, 3, 16, 33, 64, 128, 129, 512, 1024):
            BD, one_d = TP._width(d)
            for k in (0, 3, 64):
                kw = {"BLOCK_D": BD, "BLOCK_K": TP.pow2(k), "HAS_V": k > 0, "ONE_D": one_d}
                bwd = lambda c: TP.smem_need(c.kwargs["BLOCK_R"], c.kwargs["BLOCK_C"], BD,  # noqa: E731
                                             kw["BLOCK_K"] if k else 0, c.num_stages, nbytes, one_d)
                fwd = lambda c: TP._fwd_need(c, nbytes, kw)  # noqa: E731
                for cfgs, need in ((TP._CONFIGS_NARROW, fwd), (TP._CONFIGS_WIDE, fwd),
                                   (TP._BWD_CONFIGS_NARROW, bwd), (TP._BWD_CONFIGS_WIDE, bwd)):
                    if (cfgs in (TP._CONFIGS_NARROW, TP._BWD_CONFIGS_NARROW)) != (d <= 16):
                        continue
                    kept = TP.prune(cfgs, need, KB99)
                    assert kept
                    if nbytes <= 4:
                        assert all(need(c) <= KB99 for c in kept), (nbytes, d, k)
            kept = TP.prune(TC._CONFIGS, lambda c: TC._need(c, nbytes, 0), KB99)
            assert kept and (nbytes == 8 or all(TC._need(c, nbytes, 0) <= KB99 for c in kept))
            if nbytes <= 4:
                # the accumulating kernels: some config fits registers and shared memory, on a
                # 99 KB GPU and on Hopper's 227 KB, with every span of up to ACC_N chunks
                D = TP.pow2(d)
                chunk, top = (D, 1) if D <= TC.ACC_CHUNK else (TC.ACC_CHUNK, min(TC.ACC_N, -(-d // TC.ACC_CHUNK)))
                for limit in (KB99, 227 * 1024):
                    assert TC._fitting(nbytes, chunk, 1, limit), (nbytes, d, limit)
                # 4-byte (TF32) operands: half as many accumulators per program
                assert TC._fitting(nbytes, chunk, top if nbytes == 2 else -(-top // 2), 227 * 1024), (nbytes, d)
    for dt in (torch.bfloat16, torch.float32):   # top-k: registers of the merge buffer, 99 KB
        for k in (1, 10, 64):
            kp = max(16, TP.pow2(k))
            kept = TC._early_prune(TC._TOPK_CONFIGS, {"Q": torch.empty(0, dtype=dt)}, KTOP=k, K_PAD=kp)
            assert kept and all(TC._need(c, dt.itemsize, 0) <= KB99 for c in kept)
            assert all(c.kwargs["BLOCK_M"] * (c.kwargs["BLOCK_N"] + 3 * kp) <= TC._ACC_PER_WARP * c.num_warps
                       for c in kept)


def test_flattened_candidates_only_where_nothing_accumulates():
    """FLAT (one flattened, pipelined loop over column blocks and feature chunks) sits in the
    log-sum-exp, SigLIP forward and top-k autotuners' lists, never in an accumulating launch's:
    compiled for sm_90 those need more shared memory than Hopper has (docs/gpu.md)."""
    flat = [c for c in TC._CONFIGS + TC._FLAT if c.kwargs["FLAT"]]
    assert flat and all(c in TC._lse_rows_tuned.configs for c in flat)
    assert any(c.kwargs["FLAT"] for c in TC._ROWCOL_CONFIGS) and any(c.kwargs["FLAT"] for c in TC._topk_tuned.configs)
    for dt in (torch.bfloat16, torch.float32):
        x = {"X": torch.empty(0, dtype=dt)}
        lse = TC._early_prune(TC._lse_rows_tuned.configs, x, EXCL=False, COLS=False, BLOCK_DO=0)
        assert any(c.kwargs["FLAT"] for c in lse) == (dt == torch.bfloat16 or not TC.fma(dt))
        fwd = TC._early_prune(TC._siglip_tuned.configs, x, GRAD=False, NACC=1, BLOCK_DO=16)
        assert any(c.kwargs["FLAT"] for c in fwd) == (dt == torch.bfloat16 or not TC.fma(dt))
        for kw in (dict(GRAD=True, NACC=4, BLOCK_DO=128), dict(HAS_R=True, HAS_C=True, NACC=4, BLOCK_DO=128)):
            acc = TC._early_prune(TC._siglip_tuned.configs, x, **kw)
            assert acc and not any(c.kwargs["FLAT"] for c in acc), kw
    # top-k: 16-bit operands only (float32 and the int8 search's codes spill flattened)
    for dt in (torch.bfloat16, torch.float16, torch.float32, torch.int8):
        kept = TC._early_prune(TC._topk_tuned.configs, {"Q": torch.empty(0, dtype=dt)}, KTOP=10, K_PAD=16)
        assert kept and any(c.kwargs["FLAT"] for c in kept) == (dt in (torch.bfloat16, torch.float16)), dt


# -- contrastive ---------------------------------------------------------------------------------------

CT_SHAPES = [(1, 3, 1), (17, 33, 16), (33, 17, 3), (3, 1, 64)]


@pytest.mark.parametrize("n,m,d", CT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contrastive_kernels(n, m, d, dtype):
    x, y = _rand(n, d), _rand(m, d, seed=1)
    X, Y = x.to(DEV, dtype), y.to(DEV, dtype)
    for excl in (False, True):
        a, b = TC.lse_sweep(X, Y, 2.5, True, excl)
        ra, rb = OC.lse_sweep.default(x, y, 2.5, True, excl)
        _close(a, ra, dtype, 10.0)
        _close(b, rb, dtype, 10.0)
        g, gc = _rand(n, seed=2), _rand(m, seed=3)
        if n == m or not excl:
            acc = TC.softmax_acc(X, Y, 2.5, g.to(DEV, dtype), ra.to(DEV, dtype), None, None, excl)
            _close(acc, OC.softmax_acc.default(x, y, 2.5, g, ra, None, None, excl), dtype, extra=10.0)
        acc = TC.softmax_acc(Y, X, 2.5, None, None, g.to(DEV, dtype), ra.to(DEV, dtype), False)
        _close(acc, OC.softmax_acc.default(y, x, 2.5, None, None, g, ra, False), dtype, extra=10.0)
    rs = TC.siglip_rows(X, Y, 3.0, -2.0)
    want = RC.siglip_rows(x, y, 3.0, -2.0)
    _close(rs, want, dtype, want.abs().max().item())
    acc, rsum = TC.siglip_acc(X, Y, 3.0, -2.0)
    wa, wr = RC.siglip_rows_bwd(x, y, 3.0, -2.0)
    _close(acc, wa, dtype, extra=10.0)
    _close(rsum, wr, dtype, extra=10.0)
    labels = torch.arange(n) % 3
    pi, ni = TC.hard_mine(X, labels.to(DEV))
    rpi, rni = RC.hard_mine(x, labels)
    assert torch.equal(pi.cpu(), rpi) and torch.equal(ni.cpu(), rni)
    k = min(5, m)   # k <= m, as topk_similarity requires
    v, i = TC.topk(X, Y, k)
    rv, ri = RC.topk_chunked(x, y, k)
    assert torch.equal(i.cpu(), ri)
    _close(torch.where(ri >= 0, v.cpu().double(), 0.0), torch.where(ri >= 0, rv, 0.0), dtype, 10.0)


def test_contrastive_rowcol_sweep_matches_two_sweeps(monkeypatch):
    """The fused sweep's merged column partials equal a second sweep over the swapped pair,
    with ragged row blocks, excluded diagonals, +-inf and NaN scores and an all-masked column;
    past ROWCOL_MAX_BYTES lse_sweep takes the two sweeps."""
    x, y = _rand(37, 20), _rand(37, 20, seed=1)
    y[5, 0] = math.inf       # column 5: +inf and -inf scores
    x[7, 2] = math.nan       # row 7 and every column: NaN
    for xs, ys, excl in ((x[:8], y[:1], False), (x[8:], y[8:], True), (x[8:], y, False), (x, y, True)):
        X, Y = xs.to(DEV, torch.float32), ys.to(DEV, torch.float32)
        r, c = TC.lse_rowcol(X, Y, 1.5, excl)
        torch.testing.assert_close(r, TC.lse_rows(X, Y, 1.5, excl), equal_nan=True)
        torch.testing.assert_close(c, TC.lse_rows(Y, X, 1.5, excl), equal_nan=True, rtol=1e-5, atol=1e-5)
    calls = []
    monkeypatch.setattr(TC, "lse_rowcol", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(TC, "ROWCOL_MAX_BYTES", 0)
    TC.lse_sweep(X, Y, 1.5, True, False)
    assert not calls


@pytest.mark.parametrize("d,interp_split", [(37, (3, 1)), (64, (4, 1)), (100, (4, 2)), (165, (4, 3)), (600, (4, 10))])
def test_contrastive_wide_features_in_register_spans(d, interp_split):
    """Wide features: up to ACC_N register accumulators per program, and more than that in spans
    along grid axis 1 (interp_split: (accumulators, spans) with the interpreter's 16-wide chunks;
    on a GPU 128-wide chunks, so d = 165 runs two accumulators and d = 600 two spans)."""
    if not GPU_MODE:
        assert TC._acc_width(d)[1:] == interp_split
    x, y = _rand(17, d) / 8, _rand(33, d, seed=1) / 8
    X, Y = x.to(DEV, torch.float32), y.to(DEV, torch.float32)
    ra, _ = OC.lse_sweep.default(x, y, 1.0, False, False)
    g = _rand(17, seed=2)
    acc = TC.softmax_acc(X, Y, 1.0, g.to(DEV, torch.float32), ra.to(DEV, torch.float32), None, None, False)
    _close(acc, OC.softmax_acc.default(x, y, 1.0, g, ra, None, None, False), torch.float32, extra=10.0)
    acc, rsum = TC.siglip_acc(X, Y, 2.0, 0.5)
    wa, wr = RC.siglip_rows_bwd(x, y, 2.0, 0.5)
    _close(acc, wa, torch.float32, extra=10.0)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_contrastive_half_inputs(half):
    """16-bit operands go to tl.dot as they are; every output is float32. Scores are products of
    16-bit values, exact in float32, so the statistics equal the float64 result on the same 16-bit
    values to float32 accuracy. The accumulators' weights are rounded to the operand dtype for
    the second dot (as FlashAttention rounds P): those are good to the 16-bit tolerance."""
    x, y = _rand(17, 64) / 4, _rand(33, 64, seed=1) / 4
    xb, yb = x.to(half), y.to(half)
    X, Y = xb.double(), yb.double()
    a, b = TC.lse_sweep(xb.to(DEV), yb.to(DEV), 4.0, True, False)
    ra, rb = OC.lse_sweep.default(X, Y, 4.0, True, False)
    assert a.dtype == b.dtype == torch.float32
    _close(a, ra, torch.float32, ra.abs().max().item())
    _close(b, rb, torch.float32, rb.abs().max().item())
    g = _rand(17, seed=2)
    acc = TC.softmax_acc(xb.to(DEV), yb.to(DEV), 4.0, g.to(DEV, torch.float32), ra.to(DEV, torch.float32),
                         None, None, False)
    assert acc.dtype == torch.float32
    _close(acc, OC.softmax_acc.default(X, Y, 4.0, g, ra, None, None, False), half)
    rows = TC.siglip_rows(xb.to(DEV), yb.to(DEV), 2.0, -1.0)
    sa, sr = TC.siglip_acc(xb.to(DEV), yb.to(DEV), 2.0, -1.0)
    assert rows.dtype == sa.dtype == sr.dtype == torch.float32
    _close(rows, OC.siglip_rows.default(X, Y, 2.0, -1.0), torch.float32, 33.0)
    ws, wr = OC.siglip_acc.default(X, Y, 2.0, -1.0)
    _close(sa, ws, half, 33.0)
    _close(sr, wr, torch.float32, 33.0)
    v, i = TC.topk(xb.to(DEV), yb.to(DEV), 3)
    rv, ri = RC.topk_chunked(X, Y, 3)
    assert v.dtype == torch.float32
    _close(v, rv, torch.float32, rv.abs().max().item())
    # the reference kernels take 16-bit operands too, with the same float32 outputs
    ha, hb = OC.lse_sweep.default(xb, yb, 4.0, True, False)
    assert ha.dtype == torch.float32
    _close(ha, ra, torch.float32, ra.abs().max().item())


# -- optimal transport ---------------------------------------------------------------------------------

OT_SHAPES = [(1, 1, 3, 1), (3, 17, 33, 3), (1, 33, 17, 16)]


@pytest.mark.parametrize("B,n,m,d", OT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ot_softmins(B, n, m, d, dtype):
    x, y = _rand(B, n, d), _rand(B, m, d, seed=1)
    C = RO.cost_matrix(x, y, 2)
    h, h1 = _rand(B, m, seed=2), _rand(B, n, seed=3)
    h[:, ::4] = -math.inf
    for eps in (0.05, 3.0):
        want = RO.softmin_dense(C, h, eps, 2)
        _close(TO.softmin_dense(C.to(DEV, dtype), h.to(DEV, dtype), eps, 2), want, dtype, want.abs().max().item())
        want = RO.softmin_dense(C, h1, eps, 1)
        _close(TO.softmin_dense(C.to(DEV, dtype), h1.to(DEV, dtype), eps, 1), want, dtype, want.abs().max().item())
        for p in (1, 2):
            f, U = TO.softmin_points(x.to(DEV, dtype), y.to(DEV, dtype), h.to(DEV, dtype), eps, p, True)
            rf, rU = RO.softmin_points(x, y, h, eps, p, True)
            _close(f, rf, dtype, rf.abs().max().item())
            _close(U, rU, dtype, extra=10.0 / eps)


@pytest.mark.parametrize("B,n,m", [(1, 1, 3), (3, 17, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rho", [0.0, 2.0])
def test_sinkhorn_alternating(B, n, m, dtype, rho):
    x, y = _rand(B, n, 2), _rand(B, m, 2, seed=1)
    C = RO.cost_matrix(x, y, 2)
    a = _rand(B, n, seed=2).log_softmax(1)   # probability weights: balanced problems converge
    b = _rand(B, m, seed=3)
    b[:, 1] = -math.inf                        # a zero weight
    b = b.log_softmax(1)
    f0 = _rand(B, n, seed=4)
    rr = (rho if rho > 0 else None, 1.5 * rho if rho > 0 else None)
    # balanced 3 x 17 x 33 stops at 17, 26, 16 iterations (tol 1e-4), per problem; rho = 2 never does
    # (8, 0, 3): iteration 0, two replayed blocks of 3 (checks at 3 and 6), one unchecked tail
    # iteration; (2, 0, 5): iteration 0 and a tail, no block (tol 0: nothing stops)
    runs = ((30, 1e-4, 1), (30, 1e-2, 3), (0, 1e-3, 1)) if rho == 0 else ((12, 1e-4, 1), (12, 1e-2, 5), (0, 1e-3, 1))
    runs += ((8, 0.0, 3), (2, 0.0, 5), (1, 0.0, 1))
    for max_iter, tol, every in runs:
        got = TO.sinkhorn_alternating(C.to(DEV, dtype), a.to(DEV, dtype), b.to(DEV, dtype), 0.5, rho, 1.5 * rho,
                                      max_iter, tol, every, f0.to(DEV, dtype))
        want = RO.sinkhorn_alternating(C, a, b, 0.5, rr[0], rr[1], max_iter, tol, every, f0)
        assert got[2].dtype == torch.int64 and got[2].shape == (B,) and got[3].shape == (B,)
        assert torch.equal(got[2].cpu(), want[2])
        _close(got[0], want[0], dtype, extra=5.0)
        _close(got[1], want[1], dtype, extra=5.0)
        if max_iter:
            _close(got[3], want[3], dtype, extra=5.0)
        else:
            assert torch.isposinf(got[3]).all()
    if GPU_MODE:   # the blocks ran as captured CUDA graphs, not through the fallback
        assert not TO._GRAPHS_BROKEN, TO._GRAPHS_BROKEN


def test_sinkhorn_alternating_replays_one_capture(monkeypatch):
    """The CUDA-graph runner: one capture, then replays; a failed capture (here: no CUDA at all,
    or a GPU without graphs) warns once and runs the steps directly, with nothing lost."""
    calls = []
    fn = lambda: calls.append(1)  # noqa: E731

    class FakeGraph:
        def replay(self):
            fn()

    monkeypatch.setattr(TO, "interpreting", lambda: False)
    monkeypatch.setattr(TO, "_GRAPHS_BROKEN", [])
    captures = []
    monkeypatch.setattr(TO._Replayed, "_capture", lambda self: captures.append(1) or FakeGraph())
    if not torch.cuda.is_available():   # the replay's device guard needs a CUDA build
        monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    run = TO._Replayed(fn, torch.device("cuda"))
    for _ in range(3):
        run()
    assert len(captures) == 1 and len(calls) == 3
    assert not TO._Replayed(fn, torch.device("cpu")).on
    monkeypatch.setenv("HOTPATH_CUDA_GRAPHS", "0")
    assert not TO._Replayed(fn, torch.device("cuda")).on
    if not torch.cuda.is_available():
        monkeypatch.undo()
        monkeypatch.setattr(TO, "interpreting", lambda: False)
        monkeypatch.setattr(TO, "_GRAPHS_BROKEN", [])
        calls.clear()
        run = TO._Replayed(fn, torch.device("cuda"))
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
            run()
        run()
        assert len(calls) == 2 and run.graph is None and TO._GRAPHS_BROKEN


@pytest.mark.parametrize("B,n,m", [(1, 1, 3), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("debias", [False, True])
@pytest.mark.parametrize("rho", [0.0, 2.0])
def test_sinkhorn_symmetric_fused(B, n, m, dtype, debias, rho):
    x, y = _rand(B, n, 2), _rand(B, m, 2, seed=1)
    Cxy, Cxx, Cyy = RO.cost_matrix(x, y, 2), RO.cost_matrix(x, x, 2), RO.cost_matrix(y, y, 2)
    a = _rand(B, n, seed=2).log_softmax(1)
    b = _rand(B, m, seed=3)
    b[:, 1] = -math.inf                        # a zero weight
    b = b.log_softmax(1)
    el = torch.tensor([2.0, 1.0, 0.5, 0.25] + [0.25] * 8, dtype=torch.float64)
    rr = rho if rho > 0 else None
    for tol, every in ((0.0, 1), (1e-3, 1), (1e-2, 3)):   # per-problem stops inside the launch
        got = TO.sinkhorn_symmetric(Cxy.to(DEV, dtype), Cxx.to(DEV, dtype), Cyy.to(DEV, dtype), a.to(DEV, dtype),
                                    b.to(DEV, dtype), el, rho, rho, debias, tol, every)
        want = RO.sinkhorn_symmetric(Cxy, Cxx, Cyy, a, b, el.tolist(), rr, rr, debias, tol, every)
        assert torch.equal(got[4].cpu(), want[4])
        for g_, w_ in zip(got[:4], want[:4]):
            assert g_.shape == w_.shape
            if w_.numel():
                _close(g_, w_, dtype, w_.abs().max().item(), extra=5.0)


def test_sinkhorn_symmetric_fused_nan_stops_and_large_falls_back():
    x, y = _rand(2, 4, 2), _rand(2, 5, 2, seed=1)
    C = RO.cost_matrix(x, y, 2)
    C[0, 1, 2] = math.nan
    a, b = torch.full((2, 4), -math.log(4.0)), torch.full((2, 5), -math.log(5.0))
    el = torch.tensor([0.5] * 20, dtype=torch.float64)
    empty = C.new_zeros(0)
    f, g, _, _, it = TO.sinkhorn_symmetric(C.to(DEV), empty.to(DEV), empty.to(DEV), a.double().to(DEV),
                                           b.double().to(DEV), el, -1.0, -1.0, False, 1e-6, 1)
    want = RO.sinkhorn_symmetric(C, empty, empty, a.double(), b.double(), el.tolist(), None, None, False, 1e-6, 1)
    assert torch.equal(it.cpu(), want[4]) and int(it[0]) == 1   # the NaN problem stops at its first check
    assert torch.equal(torch.isnan(f.cpu()), torch.isnan(want[0]))
    assert torch.equal(torch.isnan(g.cpu()), torch.isnan(want[1]))
    # past the register tile the launcher runs the reference loop instead
    assert TO._symmetric_blocks(200, 200, True)[2] > TO.SYMMETRIC_MAX_TILE
