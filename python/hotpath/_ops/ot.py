"""Ops of the optimal transport family (hotpath::ot_*).

Kernels: C++ (csrc/cpu/ot_dense.cpp, ot_points.cpp), Triton (backends/triton/ot.py) for the
softmins; the default kernel is the reference (reference/ot.py). rho <= 0 means "balanced" (no
marginal penalty). The p = 2 point-cloud softmin is the pairwise engine (_ops/pairwise.py).
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import ot as ref


def _rho(r):
    return None if r <= 0 else r


@backends.op("ot_softmin_dense", triton="ot.softmin_dense",
             fake=lambda C, h, eps, dim: C.new_empty(C.shape[0], C.shape[1] if dim == 2 else C.shape[2]))
def ot_softmin_dense(C: Tensor, h: Tensor, eps: float, dim: int) -> Tensor:
    """C (B, n, m); dim=2: f_i = -eps LSE_j[h_j - C_ij/eps] (h (B, m)); dim=1: over i (h (B, n))."""
    return ref.softmin_dense(C, h, eps, dim)


def _points_fake(x, y, h, eps, p, want_grad):
    return x.new_empty(x.shape[0], x.shape[1]), (x.new_empty(x.shape) if want_grad else x.new_empty(0))


@backends.op("ot_softmin_points", fake=_points_fake, triton="ot.softmin_points")
def ot_softmin_points(x: Tensor, y: Tensor, h: Tensor, eps: float, p: int, want_grad: bool) -> Tuple[Tensor, Tensor]:
    """Streamed softmin f (B, n) over C = |x - y| (p=1) or |x - y|^2/2 (p=2), and with want_grad
    U (B, n, d) = sum_j S_ij dC_ij/dx_i (else an empty tensor)."""
    f, U = ref.softmin_points(x, y, h, eps, p, want_grad)
    return f, (U if U is not None else x.new_zeros(0))


def _alternating_fake(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol, check_every, f0):
    B = C.shape[0]
    return (a_log.new_empty(a_log.shape), b_log.new_empty(b_log.shape), C.new_empty(B, dtype=torch.int64),
            C.new_empty(B))


@backends.op("ot_sinkhorn_alternating", fake=_alternating_fake, triton="ot.sinkhorn_alternating")
def ot_sinkhorn_alternating(C: Tensor, a_log: Tensor, b_log: Tensor, eps: float, rho_x: float, rho_y: float,
                            max_iter: int, tol: float, check_every: int, f0: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """POT-order log-domain Sinkhorn on a dense cost: (f, g, n_iter (B,) int64, err (B,))."""
    return ref.sinkhorn_alternating(C, a_log, b_log, eps, _rho(rho_x), _rho(rho_y), max_iter, tol, check_every, f0)


def _plan_fake(C, a_log, b_log, f, g, eps, with_plan):
    return C.new_empty(C.shape[0]), (C.new_empty(C.shape) if with_plan else C.new_empty(0))


@backends.op("ot_dense_plan", fake=_plan_fake)
def ot_dense_plan(C: Tensor, a_log: Tensor, b_log: Tensor, f: Tensor, g: Tensor, eps: float,
                  with_plan: bool) -> Tuple[Tensor, Tensor]:
    """(<P, C> (B,), P (B, n, m) or an empty tensor) for the entropic plan of potentials f, g."""
    primal, P = ref.dense_plan(C, a_log, b_log, f, g, eps)
    return primal, (P if with_plan else C.new_zeros(0))


def _symmetric_fake(Cxy, Cxx, Cyy, a_log, b_log, eps_list, rho_x, rho_y, debias, tol, check_every):
    fa = a_log.new_empty(a_log.shape) if debias else a_log.new_empty(0)
    gb = b_log.new_empty(b_log.shape) if debias else b_log.new_empty(0)
    return (a_log.new_empty(a_log.shape), b_log.new_empty(b_log.shape), fa, gb,
            Cxy.new_empty(Cxy.shape[0], dtype=torch.int64))


@backends.op("ot_sinkhorn_symmetric", fake=_symmetric_fake, triton="ot.sinkhorn_symmetric")
def ot_sinkhorn_symmetric(Cxy: Tensor, Cxx: Tensor, Cyy: Tensor, a_log: Tensor, b_log: Tensor, eps_list: Tensor,
                          rho_x: float, rho_y: float, debias: bool, tol: float,
                          check_every: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GeomLoss symmetric loop on dense costs, all iterations in one call: (f_ba, g_ab, f_aa, g_bb, n_iter).
    eps_list: (K,) float64 CPU tensor. Cxx/Cyy unused (may be empty) without debias."""
    return ref.sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps_list.tolist(), _rho(rho_x), _rho(rho_y),
                                  debias, tol, check_every)


@backends.op("ot_cost_matrix", fake=lambda x, y, p: x.new_empty(x.shape[0], x.shape[1], y.shape[1]))
def ot_cost_matrix(x: Tensor, y: Tensor, p: int) -> Tensor:
    """C (B, n, m) = |x_i - y_j|^2 / 2 (p = 2) or |x_i - y_j| (p = 1) for x (B, n, d), y (B, m, d)."""
    return ref.cost_matrix(x, y, p)
