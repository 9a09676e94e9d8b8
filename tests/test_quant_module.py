"""QuantLinear as a module in a model: input gradients through the frozen quantized weight
(adapters on a quantized base), module dtype casts, one NaN rule for every format, GPTQ on bad
calibration data, and the package's import structure (no cycles, references import no production
code)."""
import ast
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from hotpath import quant as Q

from conftest import backend_param

PKG = pathlib.Path(__file__).resolve().parents[1] / "python" / "hotpath"


def formats():
    return [Q.Int8WeightOnly(), Q.Int8Dynamic(), Q.Int4WeightOnly(group_size=32), Q.Int4Dynamic(group_size=32),
            Q.Int4WeightOnly(group_size=32, symmetric=True), Q.FP8WeightOnly(), Q.FP8WeightOnly(fmt="e5m2"),
            Q.MXFP4(), Q.NVFP4(), Q.NVFP4(hadamard=True), Q.Ternary()] + \
        ([Q.FP8Dynamic()] if hasattr(Q, "FP8Dynamic") else [])


IDS = [f"{type(c).__name__}-{i}" for i, c in enumerate(formats())]


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16))
    return Q.quantize_(m, cfg)


# -- input gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", formats(), ids=IDS)
def test_input_gradient_is_gemm_with_dequantized_weight(cfg):
    torch.manual_seed(1)
    lin = Q.quantize_(nn.Linear(64, 24), cfg)
    x = torch.randn(2, 5, 64, requires_grad=True)
    gy = torch.randn(2, 5, 24)
    (lin(x) * gy).sum().backward()
    w = lin.dequantize().weight.detach().double()
    expected = gy.double() @ w
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=1e-5)
    assert all(not b.requires_grad for b in lin.buffers())


@pytest.mark.parametrize("backend", backend_param(["cpu", "cuda"]))
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_16bit_input_gradient(backend, half):
    """16-bit activations: on the GPU dy W runs in their dtype (tensor cores, float32
    accumulation), on the CPU in float32; both within 16-bit rounding of the float64 product."""
    from hotpath.quant.linear import input_grad
    torch.manual_seed(3)
    lin = Q.quantize_(nn.Linear(64, 24), Q.Int4WeightOnly(group_size=32))
    if backend == "cuda":
        lin = lin.cuda()
    x = torch.randn(7, 64, dtype=half, device=lin.bias.device, requires_grad=True)
    gy = torch.randn(7, 24, dtype=half, device=x.device)
    (lin(x).float() * gy.float()).sum().backward()
    w = lin.dequantize().weight.detach()
    assert x.grad.dtype == half
    torch.testing.assert_close(x.grad.double(), gy.double() @ w.double(), rtol=2e-2, atol=2e-2)
    if backend == "cuda":
        assert input_grad(gy, w).dtype == half
    else:
        assert torch.equal(input_grad(gy, w), gy.float() @ w)


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("cfg", [Q.Int8Dynamic(), Q.Int4WeightOnly(group_size=32), Q.NVFP4()],
                         ids=["Int8Dynamic", "Int4WeightOnly", "NVFP4"])
def test_lora_on_quantized_base_trains(cfg, backend):
    torch.manual_seed(2)
    base = Q.quantize_(nn.Linear(64, 32), cfg, backend=backend)
    frozen = {k: v.clone() for k, v in base.state_dict().items() if isinstance(v, torch.Tensor)}
    A = nn.Parameter(torch.randn(4, 64) * 0.01)
    B = nn.Parameter(torch.zeros(32, 4))
    opt = torch.optim.SGD([A, B], lr=0.1)
    x, target = torch.randn(16, 64), torch.randn(16, 32)
    x.requires_grad_()
    losses = []
    for _ in range(5):
        y = base(x) + (x @ A.T) @ B.T
        loss = ((y - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] and B.grad is not None and x.grad is not None
    for k, v in base.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, frozen[k]), k


def test_trainable_bias_gets_its_gradient():
    lin = Q.quantize_(nn.Linear(32, 8), Q.Int8WeightOnly())
    lin.bias.requires_grad_(True)
    x = torch.randn(3, 32)
    lin(x).sum().backward()
    torch.testing.assert_close(lin.bias.grad, torch.full((8,), 3.0))


def test_input_gradcheck_float64():
    lin = Q.quantize_(nn.Linear(32, 6), Q.Int4WeightOnly(group_size=32))
    x = torch.randn(2, 32, dtype=torch.float64, requires_grad=True)
    w = lin.dequantize().weight.detach().double()
    # the forward is float32 inside; compare the analytic gradient with the float reference's
    g, = torch.autograd.grad(lin(x).sum(), x)
    torch.testing.assert_close(g, torch.ones(2, 6, dtype=torch.float64) @ w)


# -- module casts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", formats(), ids=IDS)
def test_module_casts_keep_quantized_buffers(cfg):
    x = torch.randn(5, 64)
    y0 = _model(cfg)(x)
    dtypes = {n: b.dtype for n, b in _model(cfg).named_buffers()}
    for cast, dt in ((lambda mm: mm.half(), torch.float16), (lambda mm: mm.to(torch.bfloat16), torch.bfloat16),
                     (lambda mm: mm.double(), torch.float64), (lambda mm: mm.half().float(), torch.float32)):
        m = cast(_model(cfg))
        assert {n: b.dtype for n, b in m.named_buffers()} == dtypes
        assert m[0].bias.dtype == dt
        y = m(x.to(dt))
        assert y.dtype == dt and torch.isfinite(y).all()
        # only the input and the bias are rounded to the new dtype; the quantized weight is untouched
        tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 2e-3}.get(dt, 1e-5)
        torch.testing.assert_close(y.float(), y0, rtol=tol, atol=tol)


def test_cast_state_dict_round_trip():
    m = _model(Q.Int8Dynamic()).half()
    sd = m.state_dict()
    m2 = _model(Q.Int8Dynamic(), seed=5).half()
    m2.load_state_dict(sd)
    x = torch.randn(3, 64).half()
    torch.testing.assert_close(m2(x), m(x))


# -- NaN weights: one rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", formats(), ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_rejected_naming_the_layer(cfg, bad):
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    with torch.no_grad():
        m[2].weight[3, 7] = bad
    with pytest.raises(ValueError, match=r"layer '2'.*weight.*non-finite"):
        Q.quantize_(m, cfg)


@pytest.mark.parametrize("cfg", [Q.Int8WeightOnly(), Q.Int4Dynamic(group_size=32)], ids=["Int8", "Int4"])
def test_int_formats_reject_nan_in_quantize_weight(cfg):
    w = torch.randn(16, 64)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight"):
        cfg.quantize_weight(w)


# -- GPTQ calibration ---------------------------------------------------------------------------------------

def test_gptq_nan_activations_clear_error():
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(32, 16)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*\['0', '2'\]"):
        Q.quantize_(m, Q.Int8WeightOnly(), calibrate=lambda mm: mm(x))


def test_gptq_still_works():
    m = nn.Sequential(nn.Linear(32, 16))
    Q.quantize_(m, Q.Int4WeightOnly(group_size=32), calibrate=lambda mm: mm(torch.randn(64, 32)))
    assert isinstance(m[0], Q.QuantLinear)


# -- import structure ---------------------------------------------------------------------------------------

def _imports(path):
    """Every module name an import statement of the file names (relative ones keep their dots)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            out.update(f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_reference_imports_no_production_code():
    for path in (PKG / "reference").glob("*.py"):
        for mod in _imports(path):
            assert "quant" not in mod.split("."), (path.name, mod)


def test_quant_formats_import_no_reference():
    for path in (PKG / "quant").glob("*.py"):
        assert not any("reference" in m for m in _imports(path)), path.name


def test_no_import_cycles_in_contrastive_and_quant():
    def uses(path, name):
        return any(m.endswith(name) for m in _imports(path))
    assert not uses(PKG / "contrastive" / "distributed.py", "losses")
    assert not uses(PKG / "quant" / "gptq.py", "linear")
    # each module imports on its own, in a fresh interpreter, in either order
    for mods in (["hotpath.contrastive.distributed", "hotpath.contrastive.losses"],
                 ["hotpath.quant.gptq", "hotpath.quant.linear"], ["hotpath.quant.linear", "hotpath.quant.gptq"]):
        code = ";".join(f"import {m}" for m in mods)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONPATH": str(PKG.parent)})
        assert r.returncode == 0, r.stderr[-2000:]


def test_benchmark_helper_outside_quant_package():
    assert not (PKG / "quant" / "minilm.py").exists()
    assert (PKG / "benchmarks" / "minilm.py").exists()
    init = (PKG / "quant" / "__init__.py").read_text()
    assert "importlib" not in init


def test_no_issue_numbers_in_docstrings():
    for sub in ("quant", "contrastive"):
        for path in (PKG / sub).glob("*.py"):
            text = path.read_text()
            assert "(issue" not in text and "issues " not in text, path.name


@pytest.mark.parametrize("cfg", [Q.Int4WeightOnly(group_size=32, symmetric=False), Q.Int8WeightOnly(),
                                 Q.Int8Dynamic(), Q.FP8WeightOnly(), Q.Ternary()], ids=lambda c: type(c).__name__)
def test_nonfinite_input_row_gives_nan_row(cfg):
    # per element, an asymmetric kernel (zero point factored out) gives inf - inf where the plain
    # product gives +-inf: the layer's rule is one NaN row, on every backend
    torch.manual_seed(0)
    lin = nn.Linear(64, 3)
    x = torch.randn(3, 64)
    x[0, 5], x[2, 7] = float("inf"), float("nan")
    for kind in ("reference", "cpu"):
        model = nn.Sequential(nn.Linear(64, 3))
        model[0].load_state_dict(lin.state_dict())
        Q.quantize_(model, cfg, backend=kind)
        with torch.no_grad():
            y = model(x)
        assert bool(torch.isnan(y[0]).all()) and bool(torch.isnan(y[2]).all()), (kind, y)
        assert bool(torch.isfinite(y[1]).all()), (kind, y)
