"""Custom ops of the 1-D Wasserstein family: wasserstein_1d, sliced Wasserstein, histogram W1.

The ops are "fused forward + backward": besides the values they return the gradients the caller
asked for (empty tensors otherwise), computed in the same pass over the sorted data. The autograd
wrappers (hotpath.ot.wasserstein1d / hotpath.ot.sliced) save them and only scale them by the
incoming gradient, so nothing is sorted twice.
"""
from contextlib import nullcontext as _nullcontext
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from .._triton import kernels
from ..reference import wasserstein1d as ref


def _empty(x):
    return x.new_zeros(0)


def _ref_grads(fn, inputs, wanted):
    """Values of fn(*inputs) and the gradients of their sum w.r.t. inputs[k] for k in wanted.

    A custom op body runs below the autograd dispatch keys; the reference's gradients are taken by
    autograd, so the keys are re-enabled for this block (the include set is kept as it is)."""
    guard = torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), torch._C.DispatchKeySet(
        torch._C.DispatchKey.ADInplaceOrView).remove(torch._C.DispatchKey.ADInplaceOrView)) if wanted else None
    with guard if guard is not None else _nullcontext(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(k in wanted) if t is not None else None for k, t in enumerate(inputs)]
        out = fn(*leaves)
        want = [leaves[k] for k in sorted(wanted) if leaves[k] is not None]
        grads = torch.autograd.grad(out.sum(), want, allow_unused=True) if want else []
    res = {}
    for k, g in zip([k for k in sorted(wanted) if leaves[k] is not None], grads):
        res[k] = g if g is not None else torch.zeros_like(leaves[k])
    return out.detach(), res


# ---------------------------------------------------------------------------- wasserstein_1d
@torch.library.custom_op("hotpath::wasserstein1d_fwd", mutates_args=())
def wasserstein1d_fwd(u: Tensor, v: Tensor, u_weights: Optional[Tensor], v_weights: Optional[Tensor], p: float,
                      presorted: bool, grad_values: bool, grad_weights: bool,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """u (B, n), v (B, m), weights (B, n) / (B, m) or None (uniform; normalized inside) ->
    W_p^p (B,), d/du (B, n), d/dv (B, m), d/du_weights, d/dv_weights (empty when not asked)."""
    which = _backend.resolve(backend, u.device)
    if which == "cpu":
        return tuple(torch.ops.hotpath_cpu.wasserstein1d_fwd(u, v, u_weights, v_weights, p, presorted,
                                                             grad_values, grad_weights))
    if which == "triton":
        return tuple(kernels("wasserstein1d").wasserstein1d(u, v, u_weights, v_weights, p, presorted,
                                                            grad_values, grad_weights))
    wanted = set()
    if grad_values:
        wanted |= {0, 1}
    if grad_weights:
        wanted |= {k for k, w in ((2, u_weights), (3, v_weights)) if w is not None}
    cost, g = _ref_grads(lambda a, b, c, d: ref.wasserstein_1d(a, b, c, d, p, presorted),
                         [u, v, u_weights, v_weights], wanted)
    return (cost, g.get(0, _empty(u)), g.get(1, _empty(u)), g.get(2, _empty(u)), g.get(3, _empty(u)))


@wasserstein1d_fwd.register_fake
def _(u, v, u_weights, v_weights, p, presorted, grad_values, grad_weights, backend):
    e = u.new_empty
    return (u.new_empty(u.shape[0]), torch.empty_like(u) if grad_values else e(0),
            torch.empty_like(v) if grad_values else e(0),
            torch.empty_like(u) if grad_weights and u_weights is not None else e(0),
            torch.empty_like(v) if grad_weights and v_weights is not None else e(0))


# ---------------------------------------------------------------------------- sliced
def _sliced_via_rows(x, y, a, b, theta, p, need, row_solver):
    """Sliced Wasserstein through a batched 1-D solver on (B*L, N) projection rows (Triton path)."""
    B, N, M, L = x.shape[0], x.shape[1], y.shape[1], theta.shape[1]
    tt = theta.t().unsqueeze(0)
    px = torch.matmul(tt, x.transpose(1, 2)).reshape(B * L, N).contiguous()
    py = torch.matmul(tt, y.transpose(1, 2)).reshape(B * L, M).contiguous()
    aa = None if a is None else a.repeat_interleave(L, 0)
    bb = None if b is None else b.repeat_interleave(L, 0)
    need_gx, need_gy, need_ga, need_gb, need_gt = need
    vals = need_gx or need_gy or need_gt
    cost, gpx, gpy, ga, gb = row_solver(px, py, aa, bb, p, False, vals, need_ga or need_gb)
    gx, gy, gA, gB, gt = (_empty(x) for _ in range(5))
    if vals:
        gpx, gpy = gpx.reshape(B, L, N), gpy.reshape(B, L, M)
        if need_gx:
            gx = torch.matmul(gpx.transpose(1, 2), tt)
        if need_gy:
            gy = torch.matmul(gpy.transpose(1, 2), tt)
        if need_gt:
            gt = (torch.matmul(gpx, x) + torch.matmul(gpy, y)).transpose(1, 2).contiguous()
    if need_ga and a is not None:
        gA = ga.reshape(B, L, N).sum(1)
    if need_gb and b is not None:
        gB = gb.reshape(B, L, M).sum(1)
    return cost.reshape(B, L), gx, gy, gA, gB, gt


@torch.library.custom_op("hotpath::sliced_wasserstein_fwd", mutates_args=())
def sliced_wasserstein_fwd(x: Tensor, y: Tensor, a: Optional[Tensor], b: Optional[Tensor], theta: Tensor, p: float,
                           need_gx: bool, need_gy: bool, need_ga: bool, need_gb: bool, need_gtheta: bool,
                           backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x (B, N, D), y (B, M, D), a (B, N) / b (B, M) or None, theta (D, L) -> per-direction W_p^p
    (B, L) and the gradients of their sum over directions w.r.t. x, y, a, b and theta (per batch
    entry: (B, D, L)); empty when not asked."""
    which = _backend.resolve(backend, x.device)
    need = (need_gx, need_gy, need_ga, need_gb, need_gtheta)
    if which == "cpu":
        return tuple(torch.ops.hotpath_cpu.sliced_wasserstein_fwd(x, y, a, b, theta, p, *need))
    if which == "triton":
        return _sliced_via_rows(x, y, a, b, theta, p, need, kernels("wasserstein1d").wasserstein1d)

    def costs(x_, y_, a_, b_, t_):
        B, L = x_.shape[0], t_.shape[-1]
        px = torch.matmul(x_, t_).transpose(1, 2).reshape(B * L, -1)
        py = torch.matmul(y_, t_).transpose(1, 2).reshape(B * L, -1)
        aa = None if a_ is None else a_.repeat_interleave(L, 0)
        bb = None if b_ is None else b_.repeat_interleave(L, 0)
        return ref.wasserstein_1d(px, py, aa, bb, p).reshape(B, L)

    wanted = {k for k, f in enumerate(need) if f}
    # one copy of theta per batch entry, so its gradient comes out per entry (B, D, L)
    cost, g = _ref_grads(costs, [x, y, a, b, theta.unsqueeze(0).repeat(x.shape[0], 1, 1)], wanted)
    e = _empty
    return (cost, g.get(0, e(x)), g.get(1, e(x)), g.get(2, e(x)) if a is not None else e(x),
            g.get(3, e(x)) if b is not None else e(x), g.get(4, e(x)))


@sliced_wasserstein_fwd.register_fake
def _(x, y, a, b, theta, p, need_gx, need_gy, need_ga, need_gb, need_gtheta, backend):
    e = x.new_empty
    return (x.new_empty(x.shape[0], theta.shape[1]), torch.empty_like(x) if need_gx else e(0),
            torch.empty_like(y) if need_gy else e(0),
            torch.empty_like(a) if need_ga and a is not None else e(0),
            torch.empty_like(b) if need_gb and b is not None else e(0),
            theta.new_empty(x.shape[0], *theta.shape) if need_gtheta else e(0))


# ---------------------------------------------------------------------------- histogram W1
@torch.library.custom_op("hotpath::histogram_w1_fwd", mutates_args=())
def histogram_w1_fwd(p: Tensor, q: Tensor, support: Tensor, need_gp: bool, need_gq: bool,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """p, q (B, K) (normalized inside), support (1, K) or (B, K) increasing -> W1 (B,), d/dp and
    d/dq (each an empty tensor unless asked for), stats (B, 4) = (min p, sum p, min q, sum q) per
    row (read in the same pass, for validation)."""
    which = _backend.resolve(backend, p.device)
    if which == "cpu":
        return tuple(torch.ops.hotpath_cpu.histogram_w1_fwd(p, q, support, need_gp, need_gq))
    if which == "triton":
        cost, gp, gq, stats = kernels("wasserstein1d").histogram_w1(p, q, support, need_gp or need_gq)
        return cost, (gp if need_gp else _empty(p)), (gq if need_gq else _empty(p)), stats
    want = ({0} if need_gp else set()) | ({1} if need_gq else set())
    cost, g = _ref_grads(lambda a, b, s: ref.histogram_wasserstein(a, b, s.expand_as(a), 1), [p, q, support], want)
    stats = torch.stack([p.amin(-1), p.sum(-1), q.amin(-1), q.sum(-1)], -1) if p.shape[0] else p.new_zeros(0, 4)
    return cost, g.get(0, _empty(p)), g.get(1, _empty(p)), stats


@histogram_w1_fwd.register_fake
def _(p, q, support, need_gp, need_gq, backend):
    e = p.new_empty
    return (p.new_empty(p.shape[0]), torch.empty_like(p) if need_gp else e(0),
            torch.empty_like(q) if need_gq else e(0), p.new_empty(p.shape[0], 4))
