"""Low-bit float / ternary formats: bit-exact format tables, block formats, Hadamard
transform, kernels vs dequantize-then-matmul, NaN / inf behaviour, QAT, bad input."""
import math

import pytest
import torch

from conftest import HAS_CPP, backend_param

from hotpath.quant import _minifloat as mf
from hotpath.quant import lowbit as L
from hotpath.quant._base import config_from_dict
from hotpath.reference import quant_lowbit as ref

NAN, INF = float("nan"), float("inf")

# ---------------------------------------------------------------- hand-worked tables

E4M3_TABLE = [  # value -> OCP E4M3 code (round to nearest even, saturating)
    (0.0, 0x00), (-0.0, 0x80), (2.0 ** -9, 0x01), (2.0 ** -10, 0x00), (1.5 * 2.0 ** -9, 0x02),
    (2.5 * 2.0 ** -9, 0x02), (7 * 2.0 ** -9, 0x07), (2.0 ** -6, 0x08), (0.5, 0x30), (1.0, 0x38),
    (1.0625, 0x38), (1.1875, 0x3A), (-1.0, 0xB8), (240.0, 0x77), (448.0, 0x7E), (-448.0, 0xFE),
    (464.0, 0x7E), (500.0, 0x7E), (1e9, 0x7E), (INF, 0x7E), (-INF, 0xFE), (NAN, 0x7F),
]
E5M2_TABLE = [
    (0.0, 0x00), (2.0 ** -16, 0x01), (2.0 ** -17, 0x00), (3 * 2.0 ** -17, 0x02), (2.0 ** -14, 0x04),
    (1.0, 0x3C), (1.125, 0x3C), (1.375, 0x3E), (-2.0, 0xC0), (57344.0, 0x7B), (-57344.0, 0xFB),
    (61440.0, 0x7B), (1e9, 0x7B), (INF, 0x7C), (-INF, 0xFC), (NAN, 0x7F),
]
E2M1_TABLE = [
    (0.0, 0), (0.5, 1), (1.0, 2), (1.5, 3), (2.0, 4), (3.0, 5), (4.0, 6), (6.0, 7),
    (0.25, 0), (0.26, 1), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6), (7.0, 7),
    (100.0, 7), (-0.5, 9), (-5.0, 14), (-6.0, 15), (-0.0, 8),
]


@pytest.mark.parametrize("fmt,table", [("e4m3", E4M3_TABLE), ("e5m2", E5M2_TABLE)])
def test_fp8_table_bit_exact(fmt, table):
    x = torch.tensor([v for v, _ in table], dtype=torch.float32)
    codes = L.encode_fp8(x, fmt)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [c for _, c in table]


def test_fp4_table_bit_exact():
    x = torch.tensor([v for v, _ in E2M1_TABLE])
    assert L.encode_fp4(x).tolist() == [c for _, c in E2M1_TABLE]
    assert L.decode_fp4(torch.arange(8, dtype=torch.uint8)).tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6]
    assert L.decode_fp4(torch.arange(8, 16, dtype=torch.uint8)).tolist() == [-0.0, -.5, -1, -1.5, -2, -3, -4, -6]


def test_fp8_decode_table_constants():
    t = L.decode_table("e4m3")
    assert t[0x7E] == 448 and t[0x01] == 2.0 ** -9 and t[0x08] == 2.0 ** -6 and math.isnan(t[0x7F]) and math.isnan(t[0xFF])
    t = L.decode_table("e5m2")
    assert t[0x7B] == 57344 and t[0x01] == 2.0 ** -16 and t[0x7C] == INF and t[0xFC] == -INF and math.isnan(t[0x7D])


@pytest.mark.parametrize("fmt,dt", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_matches_torch_dtypes(fmt, dt):
    """torch's float8 casts round to nearest even too (but do not saturate): compare inside the range."""
    x = torch.randn(200000) * torch.exp(torch.randn(200000) * 4)
    fmax = mf.FORMATS[fmt].max
    x = x.clamp(-fmax, fmax)
    assert torch.equal(L.encode_fp8(x, fmt), x.to(dt).view(torch.uint8))
    codes = torch.arange(256, dtype=torch.uint8)
    a, b = L.decode_fp8(codes, fmt), codes.view(dt).float()
    assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1"])
def test_encode_decode_roundtrip_all_codes(fmt):
    f = mf.FORMATS[fmt]
    codes = torch.arange(1 << f.width, dtype=torch.uint8)
    vals = mf.decode(codes, f)
    ok = torch.isfinite(vals) if not f.has_inf else ~torch.isnan(vals)
    back = mf.encode(vals[ok], f)
    assert torch.equal(back, codes[ok])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1"])
def test_stochastic_rounding_unbiased_and_seeded(fmt):
    f = mf.FORMATS[fmt]
    x = torch.tensor([0.3, 1.1, -2.7, 0.01, 5.2 if fmt == "e2m1" else 300.0]) * (1.0 if fmt != "e5m2" else 3.0)
    outs = torch.stack([mf.round_to_format(x, f, "stochastic", seed=s) for s in range(4000)])
    lo = mf.round_to_format(x, f)
    # every sample is one of the two neighbours; the mean is x (unbiased) within sampling error
    grid = mf.decode(torch.arange(1 << f.width, dtype=torch.uint8), f)
    grid = grid[torch.isfinite(grid)]
    below = torch.stack([grid[grid <= v].max() for v in x])
    above = torch.stack([grid[grid >= v].min() for v in x])
    assert bool(((outs == below) | (outs == above)).all())
    spread = (above - below).clamp_min(1e-30)
    assert bool(((outs.double().mean(0) - x.double()).abs() <= 4 * spread / math.sqrt(4000) + 1e-12).all())
    assert torch.equal(mf.round_to_format(x, f, "stochastic", seed=7), mf.round_to_format(x, f, "stochastic", seed=7))
    assert lo.shape == x.shape


def test_stochastic_codes_api():
    x = torch.randn(1000)
    a = L.encode_fp8(x, "e4m3", rounding="stochastic", seed=3)
    b = L.encode_fp8(x, "e4m3", rounding="stochastic", seed=3)
    c = L.encode_fp8(x, "e4m3", rounding="stochastic", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- block formats

def test_mxfp4_hand_worked():
    w = torch.zeros(2, 64)
    w[0, :32] = torch.linspace(-5, 5, 32)          # amax 5: X = 2^(2 - 2) = 1
    w[0, 32:] = 0.3 * torch.linspace(-1, 1, 32)    # amax .3: X = 2^(-2 - 2) = 1/16
    codes, sc = L.mx_quantize(w)
    assert sc.tolist() == [[127, 123], [0, 0]]      # zero blocks: smallest scale, zero codes
    assert codes[1].eq(0).all()
    assert L.decode_fp4(codes[0, 31:32]).item() == 4.0   # 5 / 1 -> 4 (nearest of {4, 6})
    assert L.decode_fp4(codes[0, 63:64]).item() == 4.0   # 0.3 * 16 = 4.8 -> 4
    assert L.decode_fp4(codes[0, 32:33]).item() == -4.0
    deq = L.mx_dequantize(codes, sc)
    assert deq[0, 63].item() == 0.25


def test_nvfp4_hand_worked():
    w = torch.zeros(1, 32)
    w[0, :16] = torch.tensor([12.0] + [0.0] * 15)   # tensor amax 12
    w[0, 16:] = torch.tensor([3.0, -1.5] + [0.0] * 14)
    codes, sc, g = L.nv_quantize(w)
    assert g.item() == pytest.approx(12.0 / 2688.0)
    assert sc[0, 0].item() == 0x7E                  # amax_b / (6 g) = 448 -> E4M3 0x7E
    assert L.decode_fp4(codes[0, :1]).item() == 6.0
    # block 2: 3 / (6 g) = 112 exactly in E4M3 -> element 3 / (112 g) = 6, -1.5 -> -3
    assert mf.decode(sc[:, 1:2], "e4m3").item() == 112.0
    assert L.decode_fp4(codes[0, 16:18]).tolist() == [6.0, -3.0]
    torch.testing.assert_close(L.nv_dequantize(codes, sc, g), w, rtol=1e-6, atol=1e-6)


def test_block_roundtrip_error_bounds():
    w = torch.randn(64, 256) * torch.exp(torch.randn(64, 1))
    codes, sc = L.mx_quantize(w)
    X = mf.e8m0_decode(sc).repeat_interleave(32, 1)
    assert bool(((L.mx_dequantize(codes, sc) - w).abs() <= 2 * X + 1e-12).all())  # saturation at 6 of up to 8X
    codes, sc, g = L.nv_quantize(w)
    s = mf.decode(sc, "e4m3").repeat_interleave(16, 1) * g
    assert bool(((L.nv_dequantize(codes, sc, g) - w).abs() <= 1.0 * s * 1.0001).all())  # half the top step (2) of E2M1
    cfg = L.FP8WeightOnly()
    q = cfg.quantize_weight(w)
    err = (cfg.dequantize_weight(q) - w).abs()
    assert bool((err <= w.abs() * 2.0 ** -4 + q["scales"][:, None] * 2.0 ** -10 + 1e-12).all())


# ---------------------------------------------------------------- Hadamard

@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
def test_hadamard_orthogonal_and_invertible(backend, block):
    if backend == "triton" and block > 64:
        pytest.skip("interpreter: keep it small")
    K = block * (2 if block <= 64 else 1)
    eye = torch.eye(K, dtype=torch.float64)
    R = L.random_hadamard(eye, block, seed=5, backend=backend)       # rows: T(e_i) = columns of R
    torch.testing.assert_close(R @ R.T, eye, atol=1e-12, rtol=0)
    x = torch.randn(7, K, dtype=torch.float64)
    y = L.random_hadamard(x, block, seed=5, backend=backend)
    torch.testing.assert_close(L.random_hadamard(y, block, seed=5, inverse=True, backend=backend), x, atol=1e-12, rtol=0)
    # the signs on x's device (hadamard_signs draws them on the CPU unless told a device)
    torch.testing.assert_close(y, ref.fwht(x, L.hadamard_signs(K, 5, torch.float64, x.device), block, False),
                               atol=1e-12, rtol=0)
    w = torch.randn(5, K, dtype=torch.float64)
    wt = L.random_hadamard(w, block, seed=5, backend=backend)
    torch.testing.assert_close(y @ wt.T, x @ w.T, atol=1e-11, rtol=0)   # matmul unchanged
    if backend != "reference":
        xf = x.float()
        torch.testing.assert_close(L.random_hadamard(xf, block, seed=5, backend=backend),
                                   y.float(), atol=2e-6, rtol=2e-6)


def test_hadamard_gradcheck():
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: L.random_hadamard(t, 16, seed=1, backend="cpu" if HAS_CPP else "reference"), (x,))


def test_hadamard_bad_input():
    x = torch.randn(2, 48)
    with pytest.raises(ValueError, match="block.*power of two"):
        L.random_hadamard(x, 24)
    with pytest.raises(ValueError, match="block.*between 16 and 256"):
        L.random_hadamard(torch.randn(2, 1024), 512)
    with pytest.raises(ValueError, match="block.*must divide"):
        L.random_hadamard(x, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        L.random_hadamard(torch.randn(2, 40))
    with pytest.raises(ValueError, match="signs"):
        L.random_hadamard(x, 16, signs=torch.ones(5))


def _sqnr(cfg, w):
    q = cfg.quantize_weight(w)
    return 10 * math.log10(w.pow(2).sum() / (w - cfg.dequantize_weight(q)).pow(2).sum())


def test_hadamard_lowers_error_on_outlier_weights():
    """Heavy-tailed weights (Student-t, scattered 10x outliers): the rotation spreads each outlier
    over its Hadamard block, so the shared MX power-of-two scale fits the rest of the block."""
    torch.manual_seed(1)
    heavy = [torch.distributions.StudentT(3.0).sample((64, 256)),
             torch.randn(64, 256) * torch.where(torch.rand(64, 256) < 0.01, 10.0, 1.0)]
    for w in heavy:
        plain, rot = _sqnr(L.MXFP4(hadamard=False), w), _sqnr(L.MXFP4(hadamard=True, hadamard_mode="always"), w)
        assert rot > plain + 1.0, (plain, rot)


@pytest.mark.parametrize("cls", [L.MXFP4, L.NVFP4])
def test_hadamard_auto_never_worse(cls):
    torch.manual_seed(2)
    for w in (torch.randn(32, 128), torch.distributions.StudentT(3.0).sample((32, 128)),
              torch.distributions.Laplace(0.0, 1.0).sample((32, 128))):
        plain = _sqnr(cls(hadamard=False), w)
        cfg = cls(hadamard=True)
        q = cfg.quantize_weight(w)
        assert _sqnr(cfg, w) >= plain - 1e-9
        assert int(q["had_block"][0]) in (0, 128)
        x = torch.randn(3, 128)
        torch.testing.assert_close(cfg.linear(x, q, None), x @ cfg.dequantize_weight(q).T, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- kernels vs reference

CONFIGS = [L.FP8WeightOnly(), L.FP8WeightOnly(fmt="e5m2"), L.MXFP4(), L.MXFP4(hadamard=True, hadamard_mode="always"),
           L.NVFP4(hadamard_mode="always"), L.NVFP4(hadamard=False), L.Ternary()]
IDS = ["fp8", "fp8e5m2", "mxfp4", "mxfp4-had", "nvfp4-had", "nvfp4", "ternary"]


@pytest.mark.parametrize("backend", backend_param(["cpu", "triton"]))
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("M,N,K", [(1, 33, 96), (3, 59, 64), (7, 16, 160), (129, 33, 96), (1, 97, 1024)])
def test_linear_matches_reference(backend, cfg, M, N, K):
    if isinstance(cfg, L.MXFP4) and K % 32:
        pytest.skip("MXFP4 needs K % 32 == 0")
    if backend == "triton" and (M > 7 or K > 160):
        pytest.skip("interpreter: tiny shapes only")
    w = torch.randn(N, K)
    q = cfg.quantize_weight(w)
    x, b = torch.randn(M, K), torch.randn(N)
    y = cfg.linear(x, q, b, backend=backend)
    yr = cfg.linear(x, q, b, backend="reference")
    assert y.shape == (M, N) and y.dtype == torch.float32
    if isinstance(cfg, L.Ternary) and backend == "cpu":
        assert torch.equal(y, yr)          # exact int32 sums, same float epilogue
    else:
        torch.testing.assert_close(y, yr, atol=1e-4 * math.sqrt(K), rtol=1e-4)
    # the reference itself is dequantize-then-matmul
    yd = x.double() @ cfg.dequantize_weight(q).double().T + b.double()
    if not isinstance(cfg, L.Ternary):
        torch.testing.assert_close(yr.double(), yd, atol=1e-4 * math.sqrt(K), rtol=1e-4)


def test_ternary_reference_is_integer_exact():
    cfg = L.Ternary()
    w = torch.randn(40, 300)
    q = cfg.quantize_weight(w)
    x = torch.randn(5, 300) * 3
    x[0, 7] = 1e4                                   # outlier: int8 step grows, sums stay exact
    xq, step = ref.quantize_act_int8(x)
    t = ref.ternary_weight(q["pos"], q["neg"], 300).to(torch.int64)
    acc = xq.to(torch.int64) @ t.T
    expect = acc.float() * (step[:, None] * q["wscale"])
    assert torch.equal(cfg.linear(x, q, None, backend="reference"), expect)
    if HAS_CPP:
        assert torch.equal(cfg.linear(x, q, None, backend="cpu"), expect)
    assert set(t.unique().tolist()) <= {-1, 0, 1}
    assert q["pos"].dtype == torch.int32 and q["pos"].shape == (40, 10)   # 2 bits per weight


def test_ternary_absmean():
    w = torch.tensor([[0.1, -0.2, 0.05, 0.9, -0.01, 0.0, 0.3, -0.4]])
    t, gamma = L.ternarize(w)
    assert gamma.item() == pytest.approx(w.abs().mean().item())
    assert t.tolist() == [[0, -1, 0, 1, 0, 0, 1, -1]]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_low_precision_activations(cfg):
    w = torch.randn(16, 64)
    q = cfg.quantize_weight(w)
    x = torch.randn(3, 64)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        y = cfg.linear(x.to(dt), q, None)
        assert y.dtype == dt
        torch.testing.assert_close(y.float(), cfg.linear(x.to(dt).float(), q, None), atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------- NaN / inf

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_nonfinite_weight_rejected(cfg):
    w = torch.randn(8, 64)
    w[3, 5] = NAN
    with pytest.raises(ValueError, match=r"weight holds a non-finite value at \(3, 5\)"):
        cfg.quantize_weight(w)
    w[3, 5] = INF
    with pytest.raises(ValueError, match="non-finite"):
        cfg.quantize_weight(w)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_fake_quantize_nan_stays_in_its_element(cfg):
    w = torch.randn(8, 64)
    w0 = w.clone()
    w0[2, 9] = 0.0
    w[2, 9] = NAN
    fq, fq0 = cfg.fake_quantize(w), cfg.fake_quantize(w0)
    assert math.isnan(fq[2, 9].item())
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[2, 9] = False
    assert bool(torch.isfinite(fq[mask]).all())
    torch.testing.assert_close(fq[mask], fq0[mask], atol=1e-6, rtol=0)
    w[2, 9] = INF
    assert cfg.fake_quantize(w)[2, 9].item() == INF


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_nan_activation_propagates_to_its_row(backend, cfg):
    q = cfg.quantize_weight(torch.randn(16, 64))
    x = torch.randn(3, 64)
    x[1, 4] = NAN
    y = cfg.linear(x, q, None, backend=backend)
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[[0, 2]]).all())


def test_fp4_encoder_nan_is_error():
    with pytest.raises(ValueError, match="no NaN"):
        L.encode_fp4(torch.tensor([1.0, NAN]))


# ---------------------------------------------------------------- QAT / configs / bad input

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_fake_quantize_equals_dequantize_and_ste(cfg):
    w = torch.randn(24, 128, requires_grad=True)
    fq = cfg.fake_quantize(w)
    torch.testing.assert_close(fq.detach(), cfg.dequantize_weight(cfg.quantize_weight(w.detach())), atol=1e-6, rtol=1e-6)
    fq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_fake_quantize_act_int8():
    x = torch.randn(4, 32, requires_grad=True)
    y = L.fake_quantize_act_int8(x)
    assert (y - x).abs().max() <= x.abs().amax() / 127 / 2 + 1e-6
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("cfg", CONFIGS + [L.NVFP4(hadamard_block=32, seed=3), L.MXFP4(rounding="stochastic", seed=2)])
def test_config_dict_roundtrip(cfg):
    assert config_from_dict(cfg.to_dict()) == cfg


def test_stochastic_config_is_seeded():
    w = torch.randn(16, 64)
    a = L.MXFP4(rounding="stochastic", seed=1).quantize_weight(w)
    b = L.MXFP4(rounding="stochastic", seed=1).quantize_weight(w)
    c = L.MXFP4(rounding="stochastic", seed=2).quantize_weight(w)
    assert torch.equal(a["packed"], b["packed"]) and not torch.equal(a["packed"], c["packed"])


def test_bad_configs_and_shapes():
    with pytest.raises(ValueError, match="fmt"):
        L.FP8WeightOnly(fmt="e3m4")
    with pytest.raises(ValueError, match="rounding"):
        L.MXFP4(rounding="up")
    with pytest.raises(ValueError, match="hadamard_block.*power of two"):
        L.NVFP4(hadamard_block=24)
    with pytest.raises(TypeError, match="hadamard"):
        L.NVFP4(hadamard="yes")
    with pytest.raises(ValueError, match="hadamard_mode"):
        L.NVFP4(hadamard_mode="sometimes")
    with pytest.raises(ValueError, match="eps"):
        L.Ternary(eps=0.0)
    with pytest.raises(ValueError, match="in_features=48 must be a multiple of the block size 32"):
        L.MXFP4().quantize_weight(torch.randn(4, 48))
    with pytest.raises(ValueError, match="multiple of the block size 16"):
        L.NVFP4().quantize_weight(torch.randn(4, 40))
    with pytest.raises(ValueError, match="hadamard_block=64 must divide in_features=96"):
        L.NVFP4(hadamard_block=64).quantize_weight(torch.randn(4, 96))
    for cfg in CONFIGS:
        q = cfg.quantize_weight(torch.randn(4, 64))
        with pytest.raises(ValueError, match="x must have 64 features"):
            cfg.linear(torch.randn(2, 32), q, None)
        with pytest.raises(ValueError, match="bias"):
            cfg.linear(torch.randn(2, 64), q, torch.randn(3))
        with pytest.raises(TypeError, match="weight"):
            cfg.quantize_weight(torch.ones(4, 64, dtype=torch.int32))


def test_all_zero_weight_rows():
    for cfg in CONFIGS:
        w = torch.zeros(4, 64)
        w[1] = torch.randn(64)
        q = cfg.quantize_weight(w)
        d = cfg.dequantize_weight(q)
        assert bool(torch.isfinite(d).all()) and d[0].eq(0).all()


# ---------------------------------------------------------------- opcheck

@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_opcheck():
    from hotpath._ops import quant_lowbit as ops
    x = torch.randn(3, 64)
    for cfg in (L.MXFP4(), L.NVFP4(hadamard=False)):
        q = cfg.quantize_weight(torch.randn(16, 64))
        torch.library.opcheck(ops.fp4_linear.overload, (x, q["packed"], q["scales"], cfg.scale_kind, cfg.block, q["tensor_scale"], None))
        torch.library.opcheck(ops.fp4_dequantize.overload, (q["packed"], q["scales"], cfg.scale_kind, cfg.block, q["tensor_scale"], 64))
    q = L.FP8WeightOnly().quantize_weight(torch.randn(16, 64))
    torch.library.opcheck(ops.fp8_linear.overload, (x, q["codes"], q["scales"], "e4m3", torch.randn(16)))
    q = L.Ternary().quantize_weight(torch.randn(16, 64))
    torch.library.opcheck(ops.ternary_linear.overload, (x, q["pos"], q["neg"], q["wscale"], None))
    torch.library.opcheck(ops.fwht.overload, (x, L.hadamard_signs(64), 32, False))
