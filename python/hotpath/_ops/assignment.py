"""Ops of the exact assignment / transport family (hotpath::lsa_solve, hotpath::emd_solve).

Kernels: C++ (csrc/cpu/assignment.cpp); the default kernel is the reference
(reference/assignment.py), which also runs for tensors on other devices.
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import assignment as ref


def _lsa_fake(C, maximize):
    k = min(C.shape[1], C.shape[2])
    return C.new_empty(C.shape[0], k, dtype=torch.int64), C.new_empty(C.shape[0], k, dtype=torch.int64)


@backends.op("lsa_solve", fake=_lsa_fake, triton="assignment.lsa_solve")
def lsa_solve(C: Tensor, maximize: bool) -> Tuple[Tensor, Tensor]:
    """C (B, n, m) float32/float64 -> (rows (B, k), cols (B, k)) int64, k = min(n, m), rows ascending.
    +inf (-inf when maximizing) marks a forbidden pair; NaN or the opposite infinity, or no
    complete matching, raises ValueError."""
    return ref.lsa_solve(C, maximize)


def _emd_fake(a, b, M, max_iter):
    B, n, m = M.shape
    f = M.new_empty
    return (f(B, n, m, dtype=torch.float64), f(B, dtype=torch.float64), f(B, n, dtype=torch.float64),
            f(B, m, dtype=torch.float64), f(B, dtype=torch.int64))


@backends.op("emd_solve", fake=_emd_fake)
def emd_solve(a: Tensor, b: Tensor, M: Tensor, max_iter: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """a (B, n), b (B, m) (same mass), M (B, n, m) finite -> plan (B, n, m), cost (B,), u (B, n),
    v (B, m), all float64, and the pivots / augmentations used (B,) int64 (== max_iter: stopped
    early). The plan is exact; the duals satisfy u_i + v_j <= M_ij, tight where the plan is positive."""
    return ref.emd_solve(a, b, M, max_iter)
