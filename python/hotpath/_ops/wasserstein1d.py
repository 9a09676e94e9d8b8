"""Ops of the 1-D Wasserstein family: wasserstein_1d, sliced Wasserstein, histogram W1.

The ops are "fused forward + backward": besides the values they return the gradients the caller
asked for (empty tensors otherwise), computed in the same pass over the sorted data. The autograd
wrappers (hotpath.ot.wasserstein1d / hotpath.ot.sliced) save them and only scale them by the
incoming gradient, so nothing is sorted twice. Kernels: C++ (csrc/cpu/wasserstein1d.cpp), Triton
(backends/triton/wasserstein1d.py); the default kernel is the reference with its explicit
gradients (reference/wasserstein1d.py), so no kernel runs autograd inside an op.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import wasserstein1d as ref


def _w1d_fake(u, v, u_weights, v_weights, p, presorted, grad_values, grad_weights):
    e = u.new_empty
    return (e(u.shape[0]), e(u.shape) if grad_values else e(0), e(v.shape) if grad_values else e(0),
            e(u.shape) if grad_weights and u_weights is not None else e(0),
            e(v.shape) if grad_weights and v_weights is not None else e(0))


@backends.op("wasserstein1d_fwd", fake=_w1d_fake, triton="wasserstein1d.wasserstein1d")
def wasserstein1d_fwd(u: Tensor, v: Tensor, u_weights: Optional[Tensor], v_weights: Optional[Tensor], p: float,
                      presorted: bool, grad_values: bool,
                      grad_weights: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """u (B, n), v (B, m), weights (B, n) / (B, m) or None (uniform; normalized inside) ->
    W_p^p (B,), d/du (B, n), d/dv (B, m), d/du_weights, d/dv_weights (empty when not asked)."""
    return ref.wasserstein_1d_grads(u, v, u_weights, v_weights, p, presorted, grad_values, grad_weights)


# Elements of projected rows (B * Lb * (N + M)) one block of directions may hold: the projections,
# their sort and their gradients then stay near 1 GB in float32 whatever L is (the whole
# (B * L, N) projection of N = M = 1M points over L = 256 directions is 1 GB per cloud, before
# the sort's copies and the gradients).
SLICED_BLOCK_ELEMENTS = 1 << 26


def sliced_via_rows(x, y, a, b, theta, p, need, row_solver, block_elements=None):
    """Sliced Wasserstein through a batched 1-D solver on the projection rows, in blocks of
    directions: the per-direction costs (B, L) and the gradients in `need` = (x, y, a, b, theta)
    chained back through the projections (empty tensors for the others)."""
    B, N, M, L = x.shape[0], x.shape[1], y.shape[1], theta.shape[1]
    per_dir = max(B * (N + M), 1)
    Lb = max(1, min(L, (block_elements or SLICED_BLOCK_ELEMENTS) // per_dir))
    need_gx, need_gy, need_ga, need_gb, need_gt = need
    vals = need_gx or need_gy or need_gt
    gx = torch.zeros_like(x) if need_gx else x.new_zeros(0)
    gy = torch.zeros_like(y) if need_gy else x.new_zeros(0)
    gA = torch.zeros_like(a) if need_ga and a is not None else x.new_zeros(0)
    gB = torch.zeros_like(b) if need_gb and b is not None else x.new_zeros(0)
    gt = x.new_empty(B, theta.shape[0], L) if need_gt else x.new_zeros(0)
    costs = []
    for l0 in range(0, L, Lb):
        lb = min(Lb, L - l0)
        tt = theta[:, l0:l0 + lb].t().unsqueeze(0)
        px = torch.matmul(tt, x.transpose(1, 2)).reshape(B * lb, N).contiguous()
        py = torch.matmul(tt, y.transpose(1, 2)).reshape(B * lb, M).contiguous()
        aa = None if a is None else a.repeat_interleave(lb, 0)
        bb = None if b is None else b.repeat_interleave(lb, 0)
        cost, gpx, gpy, ga, gb = row_solver(px, py, aa, bb, p, False, vals, need_ga or need_gb)
        costs.append(cost.reshape(B, lb))
        if vals:
            gpx, gpy = gpx.reshape(B, lb, N), gpy.reshape(B, lb, M)
            if need_gx:
                gx += torch.matmul(gpx.transpose(1, 2), tt)
            if need_gy:
                gy += torch.matmul(gpy.transpose(1, 2), tt)
            if need_gt:
                gt[:, :, l0:l0 + lb] = (torch.matmul(gpx, x) + torch.matmul(gpy, y)).transpose(1, 2)
        if need_ga and a is not None:
            gA += ga.reshape(B, lb, N).sum(1)
        if need_gb and b is not None:
            gB += gb.reshape(B, lb, M).sum(1)
    cost = torch.cat(costs, 1) if costs else x.new_zeros(B, 0)
    return cost, gx, gy, gA, gB, gt


def _sliced_fake(x, y, a, b, theta, p, need_gx, need_gy, need_ga, need_gb, need_gtheta):
    e = x.new_empty
    return (e(x.shape[0], theta.shape[1]), e(x.shape) if need_gx else e(0), e(y.shape) if need_gy else e(0),
            e(a.shape) if need_ga and a is not None else e(0), e(b.shape) if need_gb and b is not None else e(0),
            e(x.shape[0], *theta.shape) if need_gtheta else e(0))


@backends.op("sliced_wasserstein_fwd", fake=_sliced_fake, triton="wasserstein1d.sliced_wasserstein_fwd")
def sliced_wasserstein_fwd(x: Tensor, y: Tensor, a: Optional[Tensor], b: Optional[Tensor], theta: Tensor, p: float,
                           need_gx: bool, need_gy: bool, need_ga: bool, need_gb: bool,
                           need_gtheta: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (B, N, D), y (B, M, D), a (B, N) / b (B, M) or None, theta (D, L) -> per-direction W_p^p
    (B, L) and the gradients of their sum over directions w.r.t. x, y, a, b and theta (per batch
    entry: (B, D, L)); empty when not asked."""
    need = (need_gx, need_gy, need_ga, need_gb, need_gtheta)
    return sliced_via_rows(x, y, a, b, theta, p, need, ref.wasserstein_1d_grads)


def _hist_fake(p, q, support, need_gp, need_gq):
    e = p.new_empty
    return e(p.shape[0]), e(p.shape) if need_gp else e(0), e(q.shape) if need_gq else e(0), e(p.shape[0], 4)


def _min_skip_nan(x):
    # the kernels' row minimum skips NaN, so a -inf mass beside a NaN one is still seen as negative
    return torch.where(x != x, torch.full_like(x, float("inf")), x).amin(-1)


@backends.op("histogram_w1_fwd", fake=_hist_fake, triton="wasserstein1d.histogram_w1_fwd")
def histogram_w1_fwd(p: Tensor, q: Tensor, support: Tensor, need_gp: bool,
                     need_gq: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """p, q (B, K) (normalized inside), support (1, K) or (B, K) increasing -> W1 (B,), d/dp and
    d/dq (each an empty tensor unless asked for), stats (B, 4) = (min p, sum p, min q, sum q) per
    row (read in the same pass, for validation)."""
    cost, gp, gq = ref.histogram_wasserstein_grads(p, q, support.expand_as(p), need_gp, need_gq)
    stats = torch.stack([_min_skip_nan(p), p.sum(-1), _min_skip_nan(q), q.sum(-1)], -1) if p.shape[0] \
        else p.new_zeros(0, 4)
    return cost, gp, gq, stats
