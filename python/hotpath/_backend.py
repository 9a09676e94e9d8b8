"""Choosing the kernel that runs an op: C++ on CPU tensors, Triton on CUDA tensors, else the
reference. `backend=` (or HOTPATH_BACKEND) forces a path; "triton" on CPU tensors needs
TRITON_INTERPRET=1 (the Triton interpreter), which is how Triton kernels are tested without a GPU.
"""
import os
import warnings

import torch

from ._ext import load_extension

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
_warned = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def triton_available():
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(backend):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(backend, device, *, has_cuda_kernel=False, has_cpu_kernel=True, has_triton_kernel=True):
    """The concrete backend ("reference" | "cpu" | "triton" | "cuda") for tensors on `device`."""
    check_backend(backend)
    if backend == "auto":
        backend = os.environ.get("HOTPATH_BACKEND", "auto") or "auto"
        check_backend(backend)
    device = torch.device(device)
    if backend == "reference":
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if not has_cpu_kernel:
            return "reference"
        if not load_extension():
            return "reference"
        return "cpu"
    if backend == "triton":
        if not has_triton_kernel:
            return "reference"
        if device.type == "cpu" and not triton_interpreting():
            raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (the Triton interpreter)")
        if not triton_available():
            raise ValueError("backend='triton' requested but triton is not installed")
        return "triton"
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if has_cuda_kernel:
            return "cuda"
        backend = "auto"
    # auto
    if device.type == "cpu":
        if has_cpu_kernel and load_extension():
            return "cpu"
        return "reference"
    if device.type == "cuda":
        if has_cuda_kernel:
            return "cuda"
        if has_triton_kernel and triton_available():
            return "triton"
        if has_triton_kernel:
            _warn_once("triton", "hotpath: triton is not installed; CUDA ops fall back to the pure-torch reference")
        return "reference"
    return "reference"
