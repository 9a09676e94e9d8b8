"""Shared test settings: backends to parametrize over, tolerance table, reference comparison.

Triton kernels run through the Triton interpreter on CPU tensors when no GPU is present, so
TRITON_INTERPRET must be set before triton is first imported.
"""
import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hotpath  # noqa: E402
from hotpath._backend import triton_available  # noqa: E402
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
def _seed():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield
