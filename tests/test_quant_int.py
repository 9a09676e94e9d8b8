"""Integer quantized linear layers: kernels vs references (bit-exact integer paths), QuantLinear,
quantize_, serialization, QAT, torch.compile, bad input."""
import io
import copy

import pytest
import torch
import torch.nn as nn
from torch import Tensor

from conftest import GPU_MODE, HAS_CPP, HAS_TRITON, backend_param
import hotpath as hp
from hotpath.quant import (Int4Dynamic, Int4WeightOnly, Int8Dynamic, Int8WeightOnly, QuantLinear, convert_qat,
                           fake_quantize, prepare_qat, quantize_)
from hotpath.quant import packing
from hotpath.reference import quant_int as ref
import hotpath._ops.quant_int  # noqa: F401  (registers the custom ops)

FORMATS = [
    pytest.param(Int8WeightOnly(), id="int8wo"),
    pytest.param(Int8Dynamic(), id="int8dyn"),
    pytest.param(Int4WeightOnly(group_size=32), id="int4wo-g32-asym"),
    pytest.param(Int4WeightOnly(group_size=32, symmetric=True, scale_method="rtn"), id="int4wo-g32-sym"),
    pytest.param(Int4Dynamic(group_size=32), id="int4dyn-g32-asym"),
    pytest.param(Int4Dynamic(group_size=96, symmetric=True), id="int4dyn-g96-sym"),
]
SHAPES = [(1, 96, 33), (7, 96, 33), (129, 96, 33), (3, 256, 64), (2, 192, 17)]


def _layer(cfg, K, N, bias=True):
    lin = nn.Linear(K, N, bias=bias)
    return lin, QuantLinear.from_linear(lin, cfg)


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("cfg", FORMATS)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_matches_reference(cfg, M, K, N, backend):
    try:
        cfg.validate_shape(N, K)
    except ValueError:
        pytest.skip("shape not valid for this group size")
    if backend == "triton" and M > 7:
        pytest.skip("keep interpreter shapes tiny")
    lin, q = _layer(cfg, K, N)
    x = torch.randn(M, K)
    y = cfg.linear(x, q.qbuffers(), q.bias, backend)
    y_ref = cfg.linear(x, q.qbuffers(), q.bias, "reference")
    assert y.shape == (M, N) and y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=2e-5 * K ** 0.5, rtol=1e-5)
    # weight-only formats: reference = dequantize then matmul
    if not isinstance(cfg, (Int8Dynamic, Int4Dynamic)):
        w = cfg.dequantize_weight(q.qbuffers())
        torch.testing.assert_close(y, (x.double() @ w.double().t() + q.bias.double()).float(), atol=2e-5 * K ** 0.5, rtol=1e-5)
    # quantization error stays small relative to the float layer
    rel = (y - lin(x).detach()).norm() / lin(x).detach().norm()
    assert rel < (0.03 if "Int8" in type(cfg).__name__ else 0.25)


def _unit_scale_buffers(cfg, codes):
    """Buffers of cfg encoding integer `codes` with scale 1 (zero point from the format)."""
    N, K = codes.shape
    q = cfg.quantize_weight(codes.float())  # integer weights quantize to themselves at scale 1 only by luck:
    if isinstance(cfg, Int8Dynamic):
        c8 = codes.to(torch.int8)
        return {"qweight": packing.pack_int8_vnni(c8), "scale": torch.ones(N), "colsum": c8.int().sum(1, dtype=torch.int32),
                "k": torch.tensor(K)}
    ng = K // cfg.group_size
    zero = torch.full((N, ng), 8, dtype=torch.uint8)
    u = (codes + 8).to(torch.uint8)
    del q
    return {"qweight": packing.pack_int4_vnni(u), "scale": torch.ones(ng, N), "zero": zero.t().contiguous()}


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("cfg", [Int8Dynamic(), Int4Dynamic(group_size=32)], ids=["int8dyn", "int4dyn"])
# (40, 128, 40) and (129, 192, 33): K % 64 == 0 and M >= 8 take the AMX path where the CPU has it
@pytest.mark.parametrize("M,K,N", [(1, 96, 33), (7, 96, 33), (129, 96, 33), (5, 1024, 100), (40, 128, 40),
                                   (129, 192, 33)])
def test_integer_paths_bit_exact(cfg, M, K, N, backend):
    """With unit scales and integer activations whose row max is 127 (so sx = 1) the float
    epilogue is exact, so outputs must equal the integer matmul bit for bit."""
    if backend == "triton" and (M > 7 or K > 96):
        pytest.skip("keep interpreter shapes tiny")
    lim = 127 if isinstance(cfg, Int8Dynamic) else 7
    codes = torch.randint(-lim, lim + 1, (N, K))
    if isinstance(cfg, Int4Dynamic):
        codes = codes.clamp(-8, 7)
    qx = torch.randint(-127, 128, (M, K))
    qx[:, 0] = 127
    y = cfg.linear(qx.float(), _unit_scale_buffers(cfg, codes), None, backend)
    # on the CPU: CUDA has no int64 matmul
    exact = (qx.cpu().long() @ codes.cpu().long().t()).float()  # |acc| < 2**24: exact in float32
    assert torch.equal(y.cpu(), exact)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("M", [2, 16])  # 16 rows: the AMX path where the CPU has it
def test_int8_dynamic_no_overflow_at_max_k(backend, M):
    K = 65536
    codes = torch.full((16, K), 127, dtype=torch.int64)
    codes[1] = -127
    cfg = Int8Dynamic()
    x = torch.full((M, K), 1e4)
    x[1::2] = -1e4
    y = cfg.linear(x, _unit_scale_buffers(cfg, codes), None, backend)
    # sx = 1e4 / 127 per row: y = 127 * 127 * K * sx (sign by row and channel)
    big = 127.0 * 127.0 * K
    sx = torch.tensor(1e4) / 127
    expect = (torch.tensor([[big, -big], [-big, big]]) * sx).repeat(M // 2, 1)
    torch.testing.assert_close(y[:, :2], expect, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("cfg", [Int8Dynamic(), Int4Dynamic(group_size=32)], ids=["int8dyn", "int4dyn"])
def test_outliers_match_integer_reference(cfg, backend):
    torch.manual_seed(1)
    K, N = 256, 40
    lin, q = _layer(cfg, K, N)
    x = torch.randn(9, K)
    x[0, 5] = 1e4
    x[3, 100] = -1e4
    x[4] *= 1e4
    y = cfg.linear(x, q.qbuffers(), q.bias, backend)
    if isinstance(cfg, Int8Dynamic):
        acc, sx = ref.int8_dynamic_accumulate(x, q.qweight, N)
        expect = acc.double() * sx.double()[:, None] * q.scale.double()[None] + q.bias.double()
    else:
        acc, sx = ref.int4_dynamic_group_accumulate(x, q.qweight, q.scale, q.zero)
        expect = (acc.double() * q.scale.t().double()[None]).sum(-1) * sx.double()[:, None] + q.bias.double()
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-4 * expect.abs().max().item())


@pytest.mark.parametrize("cfg", FORMATS)
def test_zero_rows_and_nan(cfg):
    K, N = 64 if "g96" not in str(cfg) else 96, 20
    if isinstance(cfg, (Int4WeightOnly, Int4Dynamic)) and K % cfg.group_size:
        K = cfg.group_size * 2
    w = torch.randn(N, K)
    w[3] = 0
    w[5, :32] = 0
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(w)
    q = QuantLinear.from_linear(lin, cfg)
    wd = q.dequantize().weight
    assert torch.isfinite(wd).all() and (wd[3] == 0).all() and (wd[5, :32] == 0).all()
    for b in ["reference"] + (["cpu"] if HAS_CPP else []) + (["triton"] if HAS_TRITON else []):
        # compiled Triton (a GPU machine: no interpreter) takes CUDA tensors: its leg runs there
        dev = "cuda" if b == "triton" and GPU_MODE else "cpu"
        qb = q if dev == "cpu" else copy.deepcopy(q).to(dev)
        qb.backend = b
        x = torch.randn(4, K)
        x[1, 2] = float("nan")
        x[2] = 0
        y = qb(x.to(dev))
        assert torch.isnan(y[1]).all()
        assert torch.isfinite(y[[0, 2, 3]]).all()
        torch.testing.assert_close(y[2], qb.bias.detach())


def test_packing_round_trip():
    c8 = torch.randint(-127, 128, (33, 97), dtype=torch.int8)
    assert torch.equal(ref.unpack_int8_vnni(packing.pack_int8_vnni(c8), 33, 97), c8)
    c4 = torch.randint(0, 16, (33, 96), dtype=torch.uint8)
    assert torch.equal(ref.unpack_int4_rows(packing.pack_int4_rows(c4), 96), c4)
    assert torch.equal(ref.unpack_int4_vnni(packing.pack_int4_vnni(c4), 33, 96), c4)


@pytest.mark.parametrize("cfg", FORMATS)
def test_quant_linear_batch_dims_dtypes(cfg):
    K = 96
    lin, q = _layer(cfg, K, 33)
    x = torch.randn(2, 3, K)
    y = q(x)
    assert y.shape == (2, 3, 33)
    torch.testing.assert_close(y, q(x.reshape(6, K)).reshape(2, 3, 33))
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), q(x.bfloat16().float()), atol=2e-2, rtol=2e-2)
    # dequantize() gives an nn.Linear computing the same function (up to float rounding / act. quant)
    d = q.dequantize()
    assert isinstance(d, nn.Linear)
    tol = 0.05 if isinstance(cfg, (Int8Dynamic, Int4Dynamic)) else 1e-4
    torch.testing.assert_close(d(x), y, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="in_features"):
        q(torch.randn(4, K + 1))
    with pytest.raises(TypeError, match="input"):
        q(torch.randint(0, 3, (4, K)))


def test_no_bias():
    lin, q = _layer(Int8Dynamic(), 96, 33, bias=False)
    assert q.bias is None
    x = torch.randn(5, 96)
    torch.testing.assert_close(q(x), q.config.linear(x, q.qbuffers(), None, "reference"), atol=1e-4, rtol=1e-5)


def _mlp():
    return nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))


@pytest.mark.parametrize("cfg", FORMATS)
def test_state_dict_round_trip_bit_exact(cfg, tmp_path):
    model = _mlp()
    if isinstance(cfg, Int4Dynamic) and cfg.group_size == 96:
        cfg = Int4Dynamic(group_size=32, symmetric=True)
    quantize_(model, cfg)
    x = torch.randn(5, 96)
    y = model(x)
    sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = quantize_(_mlp(), cfg)  # different float weights, same format
    fresh.load_state_dict(torch.load(buf))
    for k, v in sd.items():
        if isinstance(v, Tensor):
            assert torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(fresh(x), y)
    # whole-module pickling
    path = tmp_path / "m.pt"
    torch.save(model, path)
    again = torch.load(path, weights_only=False)
    assert torch.equal(again(x), y)


def test_load_state_dict_changes_format():
    model = quantize_(_mlp(), Int4WeightOnly(group_size=32))
    other = quantize_(_mlp(), Int8WeightOnly())
    other.load_state_dict(model.state_dict())
    x = torch.randn(3, 96)
    assert isinstance(other[0].config, Int4WeightOnly)
    assert torch.equal(other(x), model(x))


def test_quantize_filter_fn():
    model = _mlp()
    quantize_(model, Int8WeightOnly(), filter_fn=lambda m, fqn: fqn != "4")
    assert isinstance(model[0], QuantLinear) and isinstance(model[2], QuantLinear)
    assert type(model[4]) is nn.Linear
    single = quantize_(nn.Linear(32, 8), Int8Dynamic())
    assert isinstance(single, QuantLinear)


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        Int4WeightOnly(bits=5)
    with pytest.raises(ValueError, match="bits"):
        Int8WeightOnly(bits=1)
    with pytest.raises(ValueError, match="group_size"):
        Int4WeightOnly(group_size=48)
    with pytest.raises(ValueError, match="scale_method"):
        Int4Dynamic(scale_method="bogus")
    with pytest.raises(ValueError, match="group_size"):
        quantize_(nn.Linear(96, 8), Int4WeightOnly(group_size=64))
    with pytest.raises(TypeError, match="config"):
        quantize_(_mlp(), "int8")
    with pytest.raises(TypeError, match="model"):
        quantize_(torch.randn(3), Int8WeightOnly())
    with pytest.raises(ValueError, match="backend"):
        quantize_(_mlp(), Int8WeightOnly(), backend="gpu")
    with pytest.raises(ValueError, match="Int8Dynamic supports in_features"):
        Int8Dynamic().validate_shape(4, 70000)
    with pytest.raises(TypeError, match="weight"):
        Int8WeightOnly().quantize_weight(torch.randint(0, 3, (4, 4)))


@pytest.mark.parametrize("bits", [2, 3])
def test_lower_bits_same_kernels(bits):
    cfg = Int4WeightOnly(group_size=32, bits=bits)
    lin, q = _layer(cfg, 64, 16)
    assert int(ref.unpack_int4_rows(q.qweight, 64).max()) < 2 ** bits
    x = torch.randn(3, 64)
    torch.testing.assert_close(q(x), cfg.linear(x, q.qbuffers(), q.bias, "reference"), atol=1e-4, rtol=1e-5)


def test_mse_scale_search_lowers_error():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    w[:, ::37] *= 4  # heavy tails: clipping pays off
    errs = {}
    for m in ("rtn", "mse"):
        cfg = Int4WeightOnly(group_size=128, scale_method=m)
        errs[m] = (cfg.dequantize_weight(cfg.quantize_weight(w)) - w).pow(2).sum()
    assert errs["mse"] < 0.95 * errs["rtn"]


@pytest.mark.parametrize("cfg", FORMATS)
def test_fake_quantize_values_and_ste(cfg):
    K = 96
    w = torch.randn(33, K, requires_grad=True)
    fq = fake_quantize(w, cfg)
    assert torch.equal(fq.detach(), cfg.dequantize_weight(cfg.quantize_weight(w.detach())))
    fq.sum().backward()
    # straight-through: gradient 1 inside the clipping range, 0 for clipped entries
    assert set(w.grad.unique().tolist()) <= {0.0, 1.0}
    assert w.grad.mean() > 0.9


def test_lsq_scale_gradient():
    cfg = Int4WeightOnly(group_size=32, symmetric=True, scale_method="rtn")
    w = torch.randn(4, 64, dtype=torch.float64)
    qp = cfg.qat_params(w.float())
    s = (qp["scale"].double() * 0.8).requires_grad_(True)
    out = fake_quantize(w, cfg, {"scale": s, "zero": qp["zero"].double()})
    g = torch.randn_like(out)
    (out * g).sum().backward()
    v = (w / s.detach().repeat_interleave(32, dim=1))
    q = v.round() + 8
    inside = (q >= 0) & (q <= 15)
    d = torch.where(inside, v.round() - v, q.clamp(0, 15) - 8)
    expect = (g * d).view(4, 2, 32).sum(-1) / (32 * 7) ** 0.5
    torch.testing.assert_close(s.grad, expect)


@pytest.mark.parametrize("cfg", FORMATS)
def test_qat_prepare_train_convert(cfg):
    torch.manual_seed(0)
    if isinstance(cfg, Int4Dynamic) and cfg.group_size == 96:
        cfg = Int4Dynamic(group_size=32)
    model = prepare_qat(_mlp(), cfg)
    params = [p for n, p in model.named_parameters()]
    assert any(n.endswith("qat_scale") for n, _ in model.named_parameters())
    opt = torch.optim.SGD(params, lr=1e-2)
    x, t = torch.randn(16, 96), torch.randn(16, 10)
    for _ in range(3):
        loss = (model(x) - t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert model[0].qat_scale.grad is not None and model[0].qat_scale.grad.abs().sum() > 0
        opt.step()
    with torch.no_grad():
        y_fake = model(x)
    convert_qat(model)
    assert isinstance(model[0], QuantLinear)
    with torch.no_grad():
        y_q = model(x)
    torch.testing.assert_close(y_q, y_fake, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [Int8Dynamic(), Int4WeightOnly(group_size=32)], ids=["int8dyn", "int4wo"])
def test_torch_compile(cfg):
    model = quantize_(_mlp(), cfg)
    x = torch.randn(4, 96)
    y = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), y)


@pytest.mark.parametrize("cfg", FORMATS)
def test_opcheck(cfg):
    K = 96
    lin, q = _layer(cfg, K, 33)
    x = torch.randn(3, K)
    op = {Int8WeightOnly: torch.ops.hotpath.int8_weight_only_linear, Int8Dynamic: torch.ops.hotpath.int8_dynamic_linear,
          Int4WeightOnly: torch.ops.hotpath.int4_weight_only_linear, Int4Dynamic: torch.ops.hotpath.int4_dynamic_linear}[type(cfg)]
    bufs = q.qbuffers()
    args = [bufs["qweight"], bufs["scale"]] + ([bufs["colsum"]] if "colsum" in bufs else []) + \
        ([bufs["zero"]] if "zero" in bufs else [])
    torch.library.opcheck(op, (x, *args, q.bias.detach()))
    torch.library.opcheck(op, (x, *args, None))
