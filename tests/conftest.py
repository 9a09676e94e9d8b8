"""Shared test settings: backends to parametrize over, tolerance table, reference comparison.

GPU test mode: where CUDA is present, tests parametrized with backend "triton" or "cuda" create
their tensors on the GPU (the test body runs under `torch.device("cuda")`) and the Triton
kernels run compiled. Without CUDA (or with HOTPATH_TEST_DEVICE=cpu) the same test bodies run on
CPU tensors, the Triton kernels through the interpreter, so TRITON_INTERPRET is set here, before
triton is first imported.
"""
import os
import warnings

import pytest
import torch

GPU_MODE = torch.cuda.is_available() and os.environ.get("HOTPATH_TEST_DEVICE", "cuda") == "cuda"
if not GPU_MODE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hotpath  # noqa: E402
from hotpath.backends import triton_available  # noqa: E402
from hotpath._ext import load_extension  # noqa: E402

HAS_CPP = load_extension()
HAS_TRITON = triton_available()

# backends testable on this machine
BACKENDS = ["reference", "cpu"] + (["triton"] if HAS_TRITON else [])

# atol/rtol per compute dtype, against the float64 reference
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2),
       torch.float16: (2e-3, 2e-3)}


def backend_param(backends=None):
    """pytest params for backends; triton marked to skip when absent."""
    out = []
    for b in backends or ["reference", "cpu", "triton"]:
        marks = []
        if b == "triton" and not HAS_TRITON:
            marks.append(pytest.mark.skip(reason="triton not installed"))
        if b == "cpu" and not HAS_CPP:
            marks.append(pytest.mark.skip(reason="C++ extension not built"))
        if b == "cuda" and not torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason="no CUDA"))
        out.append(pytest.param(b, marks=marks, id=b))
    return out


def assert_close(actual, expected, dtype=None, *, scale=1.0, msg=""):
    """Compare to a float64 reference with the tolerance of the compute dtype (times scale)."""
    dtype = dtype or actual.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol * scale,
                               equal_nan=True, msg=(lambda m: f"{msg}\n{m}") if msg else None)


@pytest.fixture(autouse=True)
def _device_of_backend(request):
    """GPU mode: a Triton / CUDA test body makes its tensors on the GPU."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if GPU_MODE and params.get("backend") in ("triton", "cuda"):
        with torch.device("cuda"):
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield


def pytest_collection_modifyitems(config, items):
    """HOTPATH_GPU_TESTS_ONLY=1 (what `gpucheck` sets on a GPU): the parametrizations pinned to the
    "reference" or "cpu" backend are deselected (they run on the CPU in CI; on the GPU machine they
    would only take its time). Every other test still runs."""
    if os.environ.get("HOTPATH_GPU_TESTS_ONLY") != "1":
        return
    keep, drop = [], []
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("backend")
        (drop if backend in ("reference", "cpu") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
