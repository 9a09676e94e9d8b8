"""Sinkhorn on a given dense cost matrix: hp.ot.sinkhorn_dense and POT-compatible hp.ot.sinkhorn2.

Log-domain, POT's update order (g then f), C++ loop with all iterations in one call; the
marginal error |sum_i P_ij - b_j|_2 is checked every 10 iterations (POT's stopping rule).
Gradients: dL/dC = P (envelope theorem); dL/da = f, dL/db = g (balanced) or the exact
derivatives of the unbalanced value (see sinkhorn.py).
"""
import math

import torch

from .. import _validate as V
from .._backend import check_backend
from .._ops import ot as ops
from .sinkhorn import SinkhornResult, _log_w


def _prep_dense(C, a, b, names=("C", "a", "b")):
    nC, na, nb = names
    # POT accepts empty lists for uniform marginals
    a = None if isinstance(a, (list, tuple)) and len(a) == 0 else a
    b = None if isinstance(b, (list, tuple)) and len(b) == 0 else b
    V.tensor(nC, C, ndims=(2, 3))
    batched = C.dim() == 3
    Cb = C if batched else C[None]
    B, n, m = Cb.shape
    V.same_device(**{nC: C, na: a, nb: b})
    dtype = V.compute_dtype(C, a, b)

    def w(name, t, k):
        if t is None or (isinstance(t, (list, tuple)) and len(t) == 0) or (isinstance(t, torch.Tensor) and t.numel() == 0 and k > 0):
            return torch.full((B, k), 1.0 / max(k, 1), dtype=dtype, device=C.device)
        V.tensor(name, t, ndims=(1, 2))
        t = t if t.dim() == 2 else t[None].expand(B, -1)
        if tuple(t.shape) != (B, k):
            raise ValueError(f"{name} must have shape ({k},) or ({B}, {k}) to match {nC} {tuple(C.shape)}, got {tuple(t.shape)}")
        td = t.detach()
        if bool((td < 0).any()):
            raise ValueError(f"{name} must be non-negative")
        if not bool(torch.isfinite(td).all()):
            raise ValueError(f"{name} must be finite")
        if bool((td.sum(1) <= 0).any()):
            raise ValueError(f"{name} must not sum to 0")
        return t.to(dtype)

    A = w(na, a, n)
    Bw = w(nb, b, m)
    return Cb.to(dtype), A, Bw, batched


class _DenseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, A, Bw, eps, rho, max_iter, tol, value, backend):
        Cd = C.detach().contiguous()
        a_log, b_log = _log_w(A.detach()).contiguous(), _log_w(Bw.detach()).contiguous()
        f0 = torch.where(torch.isfinite(a_log), -eps * a_log, torch.zeros((), dtype=C.dtype)).contiguous()
        r = -1.0 if rho is None else rho
        f, g, n_iter, err = ops.ot_sinkhorn_alternating(Cd, a_log, b_log, eps, r, r, max_iter, tol, 10, f0, backend)
        primal, P = ops.ot_dense_plan(Cd, a_log, b_log, f, g, eps, ctx.needs_input_grad[0], backend)
        va, vb = A.detach() > 0, Bw.detach() > 0
        z = torch.zeros((), dtype=C.dtype)
        fz, gz = torch.where(va, f, z), torch.where(vb, g, z)
        if value == "primal":  # POT's sinkhorn2: <P, M>
            loss = primal
            ga, gb = fz, gz
        elif rho is None:
            loss = (A.detach() * fz).sum(1) + (Bw.detach() * gz).sum(1)
            ga, gb = f, g
        else:
            ea, eb = torch.exp(-fz / rho), torch.exp(-gz / rho)
            loss = (rho + eps / 2) * ((A.detach() * (1 - ea)).sum(1) + (Bw.detach() * (1 - eb)).sum(1))
            ga, gb = (rho + eps) * (1 - torch.exp(-f / rho)) - eps / 2, (rho + eps) * (1 - torch.exp(-g / rho)) - eps / 2
        ctx.save_for_backward(P, ga, gb)
        ctx.mark_non_differentiable(f, g, n_iter, err)
        return loss, f, g, n_iter, err

    @staticmethod
    def backward(ctx, gl, *unused):
        P, ga, gb = ctx.saved_tensors
        return (gl[:, None, None] * P if ctx.needs_input_grad[0] else None,
                gl[:, None] * ga if ctx.needs_input_grad[1] else None,
                gl[:, None] * gb if ctx.needs_input_grad[2] else None,
                None, None, None, None, None, None)


def _check_common(eps, reach, max_iter, tol, names=("eps", "reach", "max_iter", "tol")):
    V.scalar(names[0], eps, positive=True, allow_tensor=False)
    if reach is not None:
        V.scalar(names[1], reach, positive=True, allow_tensor=False)
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"{names[2]} must be a positive int, got {max_iter!r}")
    V.scalar(names[3], tol, minimum=0.0, allow_tensor=False)


def sinkhorn_dense(C, a=None, b=None, *, eps, reach=None, max_iter=1000, tol=1e-6, backend="auto"):
    """Entropic OT on a dense cost C (n, m) or (B, n, m), marginals a, b (uniform if None).

    reach: KL marginal penalty rho = reach (the cost is given, so no power is applied).
    Returns SinkhornResult(loss = <a, f> + <b, g> (balanced; GeomLoss's value formula when
    unbalanced), f, g, n_iter, marginal_error = |P^T 1 - b|_2); loss is differentiable wrt C
    (gradient: the plan P), a and b.
    """
    check_backend(backend)
    _check_common(eps, reach, max_iter, tol)
    Cb, A, Bw, batched = _prep_dense(C, a, b)
    rho = None if reach is None else float(reach)
    loss, f, g, n_iter, err = _DenseFn.apply(Cb, A, Bw, float(eps), rho, int(max_iter), float(tol), "dual", backend)
    if not batched:
        loss, f, g = loss[0], f[0], g[0]
    return SinkhornResult(loss, f, g, n_iter, err, float(eps), 0, rho, rho, A, Bw)


def sinkhorn2(a, b, M, reg, numItermax=1000, stopThr=1e-9, backend="auto"):
    """POT's ot.sinkhorn2(a, b, M, reg, method="sinkhorn_log"): the value <P, M> of the entropic plan.

    a (n,) / b (m,) (empty or None: uniform), M (n, m); also batched: M (B, n, m) with a (B, n), b (B, m)
    -> (B,). Same iterations and stopping rule as POT (column marginal error every 10 iterations).
    """
    check_backend(backend)
    _check_common(reg, None, numItermax, stopThr, names=("reg", "reach", "numItermax", "stopThr"))
    Cb, A, Bw, batched = _prep_dense(M, a, b, names=("M", "a", "b"))
    loss, *_ = _DenseFn.apply(Cb, A, Bw, float(reg), None, int(numItermax), float(stopThr), "primal", backend)
    return loss if batched else loss[0]
