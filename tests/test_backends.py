"""How a call finds its kernel: ops declared once without a backend argument, C++ kernels
registered by dispatch key, one context-local preference that backward keeps."""
import os
import threading
import time

import pytest
import torch

import hotpath as hp
from hotpath import backends
from hotpath._ext import load_extension

from conftest import HAS_CPP, assert_close

# ops without a C++ CPU kernel: the CUDA-only narrow kernel, and FP8 dynamic, whose CPU path is
# the reference (per-token FP8 rounding emulated in float32)
NO_CPU_KERNEL = {"pairwise_lse_fwd_narrow", "fp8_dynamic_linear"}
CPU_OPS = sorted(n for n in backends.OPS if n not in NO_CPU_KERNEL)


def test_no_schema_has_a_backend_argument():
    import hotpath.backends.cuda.pairwise  # noqa: F401  (declares the CUDA-only op too)
    assert len(backends.OPS) >= 29
    for name, op in backends.OPS.items():
        args = [a.name for a in op.overload._schema.arguments]
        assert "backend" not in args, name


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("name", CPU_OPS)
def test_cpu_kernels_are_found_by_the_dispatcher(name):
    load_extension()
    # A test may ask the dispatcher directly; the library itself never does.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hotpath::{name}", "CPU"), name
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hotpath::{name}", "CompositeExplicitAutograd"), name


def test_preference_is_context_local_and_nests():
    assert backends.current() == "auto"
    with backends.prefer("reference"):
        assert backends.current() == "reference"
        with backends.prefer("auto"):  # a public function's default keeps the caller's choice
            assert backends.current() == "reference"
        with backends.prefer("cpu"):
            assert backends.current() == "cpu"
        assert backends.current() == "reference"
    assert backends.current() == "auto"
    seen = []
    with backends.prefer("reference"):
        t = threading.Thread(target=lambda: seen.append(backends.current()))
        t.start()
        t.join()
    assert seen == ["auto"]  # other threads keep their own


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("HOTPATH_BACKEND", "reference")
    assert backends.current() == "reference"
    monkeypatch.setenv("HOTPATH_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.current()


def test_bad_backend_names_the_argument():
    with pytest.raises(ValueError, match="backend must be one of"):
        hp.pairwise_lse(torch.randn(3, 2), torch.randn(4, 2), backend="gpu")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        hp.pairwise_lse(torch.randn(3, 2), torch.randn(4, 2), backend="cuda")


def test_reference_preference_runs_the_default_kernel(monkeypatch):
    op = backends.OPS["pairwise_lse_fwd"]
    calls = []
    default = op.default
    monkeypatch.setattr(op, "default", lambda *a: calls.append(1) or default(*a))
    x, y = torch.randn(5, 3), torch.randn(7, 3)
    want = hp.pairwise_lse(x.double(), y.double())
    got = hp.pairwise_lse(x, y, backend="reference")
    assert calls, "backend='reference' did not reach the default kernel"
    assert_close(got, want, torch.float32)


def test_backward_runs_under_the_forward_preference(monkeypatch):
    op = backends.OPS["pairwise_lse_bwd"]
    seen = []
    default = op.default
    monkeypatch.setattr(op, "default", lambda *a: seen.append(backends.current()) or default(*a))
    x = torch.randn(4, 3, requires_grad=True)
    lse = hp.pairwise_lse(x, torch.randn(6, 3), backend="reference")
    lse.sum().backward()  # outside the forward's context
    assert seen == ["reference"]


def test_float32_reference_gradients_are_float32_accurate():
    """The reference's gradients are explicit (no autograd, no autocast inside an op): float32
    equals float64 to float32 accuracy (it once came out of bfloat16 matmuls: 0.2754 vs 0.2774)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 3, generator=g), torch.randn(120, 3, generator=g)
    theta = hp.ot.random_projections(3, 64, generator=g)
    grads = {}
    for dt in (torch.float32, torch.float64):
        xd = x.detach().to(dt).requires_grad_(True)
        val = hp.ot.sliced_wasserstein(xd, y.to(dt), projections=theta.to(dt), backend="reference")
        val.backward()
        grads[dt] = (val.detach(), xd.grad)
    assert_close(grads[torch.float32][0], grads[torch.float64][0], torch.float32)
    assert_close(grads[torch.float32][1], grads[torch.float64][1], torch.float32)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file locks")
def test_interrupted_build_leaves_no_hang(tmp_path):
    """A build killed part way leaves torch's `lock` file; the next build removes it instead of
    waiting for it forever, and two builders in one directory take turns."""
    import subprocess
    import sys
    from hotpath._ext import _build_dir_lock
    (tmp_path / "lock").touch()
    with pytest.warns(RuntimeWarning, match="interrupted build"):
        with _build_dir_lock(str(tmp_path)):
            assert not (tmp_path / "lock").exists()
    # while this process holds the directory, another one waits for it
    holder = ("import sys, time; sys.path.insert(0, %r); from hotpath._ext import _build_dir_lock\n"
              "with _build_dir_lock(%r):\n    print('held', flush=True); time.sleep(1.5)\n"
              % (os.path.dirname(hp.__path__[0]), str(tmp_path)))
    with subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with _build_dir_lock(str(tmp_path)):
            waited = time.perf_counter() - t0
        proc.wait(timeout=30)
    assert waited > 0.5, waited


def test_takes_backend_reads_the_argument_wherever_it_is_passed():
    """backend= by keyword, by position or by default; checked before the body runs; the body
    runs under it (a public function's default "auto" keeps the caller's preference)."""
    from hotpath import backends as B

    @B.takes_backend
    def f(x, scale=1.0, backend="auto"):
        return B.current()

    @B.takes_backend
    def g(x, *, backend="reference"):
        return B.current()

    assert f(0) == "auto" and f(0, 2.0, "reference") == "reference" and f(0, backend="cpu") == "cpu"
    assert g(0) == "reference" and g(0, backend="auto") == "auto"
    with B.prefer("reference"):
        assert f(0) == "reference"
    for bad in (None, "gpu", 3):
        with pytest.raises(ValueError, match="backend must be one of"):
            f(0, backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        f(0, 1.0, "gpu")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_plain_cpu_calls_skip_the_dispatcher_layers_but_not_modes_or_autograd():
    """Plain CPU tensors needing no gradient go straight to the CPU kernel (Op.__call__): the same
    result as the full dispatch. A dispatch mode still sees the call, and an input that needs a
    gradient still meets the autograd layer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    cfg = hp.quant.Int8WeightOnly()
    q = cfg.quantize_weight(torch.randn(24, 32))
    x = torch.randn(3, 32)
    op = backends.OPS["int8_weight_only_linear"]
    assert backends._plain((x, q["qweight"], q["scale"], None))
    y = op(x, q["qweight"], q["scale"], None)
    assert torch.equal(y, op.overload(x, q["qweight"], q["scale"], None))
    with Seen() as mode:
        assert not backends._plain((x,))
        assert torch.equal(op(x, q["qweight"], q["scale"], None), y)
    assert any("hotpath.int8_weight_only_linear" in o for o in mode.ops), mode.ops
    with torch.device("cpu"):   # a torch function mode
        assert not backends._plain((x,))
    xg = x.clone().requires_grad_(True)
    assert not backends._plain((xg,))
    with torch.no_grad():
        assert backends._plain((xg, torch.nn.Parameter(x)))
    assert not backends._plain((torch.nn.Parameter(x),))   # requires grad by default


def test_quantized_module_keeps_the_nan_row_rule_on_the_fast_path():
    """QuantLinear reads one finite/non-finite flag for the whole input before the per-row flags:
    finite rows stay exact, a row holding NaN or inf becomes a NaN row, for 1-D, 2-D and 3-D input."""
    lin = torch.nn.Linear(32, 16)
    q = hp.quant.QuantLinear.from_linear(lin, hp.quant.Int8WeightOnly())
    x = torch.randn(2, 3, 32)
    y = q(x)
    assert y.shape == (2, 3, 16) and torch.isfinite(y).all()
    assert q(x[0, 0]).shape == (16,)
    torch.testing.assert_close(q(x[0, 0]), y[0, 0])   # one row takes the GEMV kernel: last bits may differ
    bad = x.clone()
    bad[1, 2, 5] = float("inf")
    bad[0, 1, 7] = float("nan")
    yb = q(bad)
    assert torch.isnan(yb[1, 2]).all() and torch.isnan(yb[0, 1]).all()
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[1, 2] = keep[0, 1] = False
    assert torch.equal(yb[keep], y[keep])
    assert q(torch.empty(0, 32)).shape == (0, 16)
    assert q(x.double()).dtype == torch.float64
