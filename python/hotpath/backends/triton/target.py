"""What the launch code knows of the GPU it compiles for: whether the interpreter runs instead,
the shared memory a block may opt into, the SM count and the compute capability.

Every launcher asks here and nowhere else, so that `python -m hotpath compilecheck` can stand a
described GPU (a `Target`) in for a real one: the launchers then pick the configurations they
would pick on that GPU, and the kernels are compiled for it without a device (see
hotpath/_compilecheck.py). This module imports no Triton, so the front ends may use `on_gpu`.
"""
import contextlib
import dataclasses
import os

import torch

DEFAULT_SMEM = 99 * 1024   # consumer GPUs (sm_86 / sm_89 / sm_120: 99 / 100 KB opt-in); interpreter


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU described by the facts the launchers read."""
    name: str
    arch: int        # compute capability as major * 10 + minor: 90 for sm_90
    sms: int
    smem: int        # opt-in shared memory per block, bytes


# the GPUs `hotpath compilecheck` compiles for: the issues' H200 / H100, an A100, a consumer Ada
# card (the 99 KB shared-memory bound) and a consumer Blackwell card
TARGETS = {
    "h200": Target("H200 (sm_90)", 90, 132, 232448),
    "a100": Target("A100 (sm_80)", 80, 108, 166912),
    "l4": Target("L4 / RTX 40xx (sm_89)", 89, 58, 101376),
    "rtx5090": Target("RTX 5090 (sm_120)", 120, 170, 101376),
}

_STAND_IN = None   # a Target while compilecheck runs


def local_target(device=0):
    """The Target of this machine's CUDA device: what `compilecheck --warm` compiles for."""
    p = torch.cuda.get_device_properties(device)
    smem = getattr(p, "shared_memory_per_block_optin", None) or getattr(p, "shared_memory_per_block", None)
    return Target(f"{p.name} (sm_{p.major}{p.minor})", p.major * 10 + p.minor, p.multi_processor_count,
                  int(smem) if smem else DEFAULT_SMEM)


@contextlib.contextmanager
def stand_in(target):
    """Launchers see `target` (CPU tensors stand for tensors on it) inside the block."""
    global _STAND_IN
    prev, _STAND_IN = _STAND_IN, target
    try:
        yield target
    finally:
        _STAND_IN = prev


def standing_in():
    return _STAND_IN


def interpreting():
    return _STAND_IN is None and os.environ.get("TRITON_INTERPRET", "0") == "1"


def on_gpu(t):
    """True where a compiled GPU kernel reads tensor t: a CUDA tensor outside the interpreter, or
    any tensor while a Target stands in."""
    return _STAND_IN is not None or (t.is_cuda and not interpreting())


def _cuda_index(device):
    dev = torch.device(device)
    return dev.index if dev.index is not None else torch.cuda.current_device()


_SMEM = {}


def smem_limit(device=None):
    """Opt-in shared memory per block of `device` (bytes); DEFAULT_SMEM off CUDA or when unknown."""
    if _STAND_IN is not None:
        return _STAND_IN.smem
    if device is None or interpreting() or torch.device(device).type != "cuda":
        return DEFAULT_SMEM
    idx = _cuda_index(device)
    if idx not in _SMEM:
        props = torch.cuda.get_device_properties(idx)
        lim = getattr(props, "shared_memory_per_block_optin", None) or getattr(props, "shared_memory_per_block", None)
        _SMEM[idx] = int(lim) if lim else DEFAULT_SMEM
    return _SMEM[idx]


def sm_count(device):
    if _STAND_IN is not None:
        return _STAND_IN.sms
    return torch.cuda.get_device_properties(_cuda_index(device)).multi_processor_count


def capability(device):
    """(major, minor); (0, 0) in the interpreter and off CUDA."""
    if _STAND_IN is not None:
        return divmod(_STAND_IN.arch, 10)
    if interpreting() or torch.device(device).type != "cuda":
        return (0, 0)
    return torch.cuda.get_device_capability(device)
