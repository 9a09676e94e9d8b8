"""Custom ops of the optimal transport family (namespace hotpath::ot_*).

Each resolves its backend: C++ (torch.ops.hotpath_cpu.*), Triton (hotpath.kernels.ot) or the
pure-torch reference (hotpath.reference.ot). rho <= 0 means "balanced" (no marginal penalty).
The p = 2 point-cloud softmin is not here: it is the pairwise engine (hotpath::pairwise_lse_fwd).
"""
from typing import Tuple

import torch
from torch import Tensor

from .. import _backend
from .._triton import kernels
from ..reference import ot as ref


def _rho(r):
    return None if r <= 0 else r


@torch.library.custom_op("hotpath::ot_softmin_dense", mutates_args=())
def ot_softmin_dense(C: Tensor, h: Tensor, eps: float, dim: int, backend: str) -> Tensor:
    """C (B, n, m); dim=2: f_i = -eps LSE_j[h_j - C_ij/eps] (h (B, m)); dim=1: over i (h (B, n))."""
    which = _backend.resolve(backend, C.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_softmin_dense(C, h, eps, dim)
    if which == "triton":
        return kernels("ot").softmin_dense(C, h, eps, dim)
    return ref.softmin_dense(C, h, eps, dim)


@ot_softmin_dense.register_fake
def _(C, h, eps, dim, backend):
    return C.new_empty(C.shape[0], C.shape[1] if dim == 2 else C.shape[2])


@torch.library.custom_op("hotpath::ot_softmin_points", mutates_args=())
def ot_softmin_points(x: Tensor, y: Tensor, h: Tensor, eps: float, p: int, want_grad: bool,
                      backend: str) -> Tuple[Tensor, Tensor]:
    """Streamed softmin f (B, n) over C = |x - y| (p=1) or |x - y|^2/2 (p=2), and with want_grad
    U (B, n, d) = sum_j S_ij dC_ij/dx_i (else an empty tensor)."""
    which = _backend.resolve(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_softmin_points(x, y, h, eps, p, want_grad)
    if which == "triton":
        f, U = kernels("ot").softmin_points(x, y, h, eps, p, want_grad)
    else:
        f, U = ref.softmin_points(x, y, h, eps, p, want_grad)
    return f, (U if U is not None else x.new_zeros(0))


@ot_softmin_points.register_fake
def _(x, y, h, eps, p, want_grad, backend):
    U = x.new_empty(x.shape) if want_grad else x.new_empty(0)
    return x.new_empty(x.shape[0], x.shape[1]), U


@torch.library.custom_op("hotpath::ot_sinkhorn_alternating", mutates_args=())
def ot_sinkhorn_alternating(C: Tensor, a_log: Tensor, b_log: Tensor, eps: float, rho_x: float, rho_y: float,
                            max_iter: int, tol: float, check_every: int, f0: Tensor,
                            backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """POT-order log-domain Sinkhorn on a dense cost: (f, g, n_iter (B,) int64, err (B,))."""
    which = _backend.resolve(backend, C.device, has_triton_kernel=False)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_sinkhorn_alternating(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol,
                                                             check_every, f0)
    if which == "triton":  # pragma: no cover - resolve() never returns it here
        raise AssertionError
    return ref.sinkhorn_alternating(C, a_log, b_log, eps, _rho(rho_x), _rho(rho_y), max_iter, tol, check_every, f0)


@ot_sinkhorn_alternating.register_fake
def _(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol, check_every, f0, backend):
    B = C.shape[0]
    return (torch.empty_like(a_log), torch.empty_like(b_log), C.new_empty(B, dtype=torch.int64), C.new_empty(B))


@torch.library.custom_op("hotpath::ot_dense_plan", mutates_args=())
def ot_dense_plan(C: Tensor, a_log: Tensor, b_log: Tensor, f: Tensor, g: Tensor, eps: float, with_plan: bool,
                  backend: str) -> Tuple[Tensor, Tensor]:
    """(<P, C> (B,), P (B, n, m) or an empty tensor) for the entropic plan of potentials f, g."""
    which = _backend.resolve(backend, C.device, has_triton_kernel=False)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_dense_plan(C, a_log, b_log, f, g, eps, with_plan)
    primal, P = ref.dense_plan(C, a_log, b_log, f, g, eps)
    return primal, (P if with_plan else C.new_zeros(0))


@ot_dense_plan.register_fake
def _(C, a_log, b_log, f, g, eps, with_plan, backend):
    return C.new_empty(C.shape[0]), (torch.empty_like(C) if with_plan else C.new_empty(0))


@torch.library.custom_op("hotpath::ot_sinkhorn_symmetric", mutates_args=())
def ot_sinkhorn_symmetric(Cxy: Tensor, Cxx: Tensor, Cyy: Tensor, a_log: Tensor, b_log: Tensor, eps_list: Tensor,
                          rho_x: float, rho_y: float, debias: bool, tol: float, check_every: int,
                          backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GeomLoss symmetric loop on dense costs, all iterations in one call: (f_ba, g_ab, f_aa, g_bb, n_iter).
    eps_list: (K,) float64 CPU tensor. Cxx/Cyy unused (may be empty) without debias."""
    which = _backend.resolve(backend, Cxy.device, has_triton_kernel=False)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps_list, rho_x, rho_y,
                                                           debias, tol, check_every)
    return ref.sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps_list.tolist(), _rho(rho_x), _rho(rho_y),
                                  debias, tol, check_every)


@ot_sinkhorn_symmetric.register_fake
def _(Cxy, Cxx, Cyy, a_log, b_log, eps_list, rho_x, rho_y, debias, tol, check_every, backend):
    fa = torch.empty_like(a_log) if debias else a_log.new_empty(0)
    gb = torch.empty_like(b_log) if debias else b_log.new_empty(0)
    return (torch.empty_like(a_log), torch.empty_like(b_log), fa, gb,
            Cxy.new_empty(Cxy.shape[0], dtype=torch.int64))


@torch.library.custom_op("hotpath::ot_cost_matrix", mutates_args=())
def ot_cost_matrix(x: Tensor, y: Tensor, p: int, backend: str) -> Tensor:
    """C (B, n, m) = |x_i - y_j|^2 / 2 (p = 2) or |x_i - y_j| (p = 1) for x (B, n, d), y (B, m, d)."""
    which = _backend.resolve(backend, x.device, has_triton_kernel=False)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ot_cost_matrix(x, y, p)
    return ref.cost_matrix(x, y, p)


@ot_cost_matrix.register_fake
def _(x, y, p, backend):
    return x.new_empty(x.shape[0], x.shape[1], y.shape[1])
