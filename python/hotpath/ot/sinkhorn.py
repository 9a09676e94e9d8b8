"""Log-domain Sinkhorn on point clouds (GeomLoss conventions) with analytic gradients.

Conventions (GeomLoss): cost |x - y|^2 / 2 for p = 2, |x - y| for p = 1; eps = blur^p;
rho = reach^p; epsilon-scaling from diameter^p down to blur^p by factors scaling^p; symmetric
(averaged) updates; one last "extrapolation" step; debiased divergence
S(a, b) = OT(a, b) - OT(a, a)/2 - OT(b, b)/2.

p = 2 softmins stream through the pairwise engine (hotpath::pairwise_lse_fwd, scale 1/(2 eps),
col_bias log b + g/eps); p = 1 through hotpath::ot_softmin_points. Small problems (n, m <= 256)
run the whole loop inside one call (hotpath::ot_sinkhorn_symmetric, parallel over the batch).
Gradients are analytic (envelope theorem) from the last extrapolation step:
  d/dx_i = w_i * sum_j S_ij dC(x_i, y_j)/dx_i  - (debias) w'_i * sum_j S'_ij dC(x_i, x_j)/dx_i
with S the row softmax of the last update, w_i = a_i (balanced) or a_i exp(-f_i / rho) (KL
marginals: the (rho + eps) factor of the exact gradient, not GeomLoss's rho + eps/2).
"""
import math
import numbers
from typing import NamedTuple, Optional

import numpy as np
import torch

from .. import _validate as V
from .. import backends
from .._ops import pairwise as pairwise_ops
from .._ops import ot as ops

SMALL = 256  # n, m at most this: fused dense loop (costs materialized, B * n * m memory)


class ResolutionWarning(RuntimeWarning):
    """eps is below the rounding error of the costs that carry the plan, in the dtype the solver
    runs in: the potentials are then known only to about |C| * ulp (noise above eps), and the
    plan exp((f + g - C) / eps), what is computed from it (sinkhorn2's <P, C>), the gradients and
    the iteration counts are not resolved: they may differ between backends and runs. Dual values
    (SamplesLoss, sinkhorn, sinkhorn_dense) stay accurate to |C| * ulp. Checked after the solve,
    on the potentials' magnitude, so a huge unused cost (a 'forbidden pair' marker) is silent."""


def potential_scale(f, g):
    """max |f| + max |g| over finite entries: the magnitude of f_i + g_j - C_ij wherever the plan
    has mass (a huge but unused cost, a 'forbidden pair' marker, does not count)."""
    def m(t):
        t = t.detach()
        if not t.numel():
            return t.new_zeros(())
        return torch.where(torch.isfinite(t), t.abs(), torch.zeros((), dtype=t.dtype)).amax()
    return float(m(f).to(torch.float64) + m(g).to(torch.float64))  # one host read for both


def _user_stacklevel():
    """The stacklevel of the first frame outside the hotpath package (the user's call)."""
    import os
    import sys
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 2, sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def warn_resolution(cmax, eps, dtype):
    """Warn (ResolutionWarning) when potentials of magnitude cmax cannot resolve eps in dtype."""
    noise = cmax * torch.finfo(dtype).eps
    if noise > eps / 8:  # the plan's exponent carries noise / eps: beyond 1/8, factors of e^(1/8) and up
        import warnings
        w = ResolutionWarning(f"eps = {eps:.3g} is below the resolution of costs ~{cmax:.3g} in {dtype} "
                              f"(rounding ~{noise:.3g}): potentials are accurate to ~{noise:.3g} only; the plan, "
                              "primal values and gradients are not resolved; rescale the inputs or raise blur / eps")
        w.cmax = cmax  # the cost scale, for callers that compare results at it
        warnings.warn(w, stacklevel=_user_stacklevel())


class SinkhornResult(NamedTuple):
    loss: torch.Tensor            # (B,) or () ; differentiable wrt x, y, a, b
    f: torch.Tensor               # potential on x of the (a, b) problem, (B, n) or (n,)
    g: torch.Tensor               # potential on y, (B, m) or (m,)
    n_iter: torch.Tensor          # (B,) int64 iterations run (excluding the final extrapolation)
    marginal_error: torch.Tensor  # (B,) sum_i |(P 1)_i - a_i| of the returned (f, g)
    eps: float = 0.0
    p: int = 2
    rho_x: Optional[float] = None
    rho_y: Optional[float] = None
    a: Optional[torch.Tensor] = None   # weights used (B, n) / (B, m)
    b: Optional[torch.Tensor] = None


def epsilon_schedule(p, diameter, blur, scaling):
    """GeomLoss's schedule: [diameter^p] + exp(arange(p log diam, p log blur, p log scaling)) + [blur^p]."""
    return ([diameter ** p]
            + [float(np.exp(e)) for e in np.arange(p * np.log(diameter), p * np.log(blur), p * np.log(scaling))]
            + [blur ** p])


def _damp(eps, rho):
    return 1.0 if rho is None else 1.0 / (1.0 + eps / rho)


def _log_w(w):
    return torch.where(w > 0, torch.log(torch.where(w > 0, w, 1.0)), -math.inf)


def softmin_points(x, y, h, eps, p, want_grad):
    """f_i = -eps LSE_j[h_j - C(x_i, y_j)/eps] (B, n) and U_i = sum_j S_ij dC/dx_i (or None)."""
    if p == 2:
        lse, out = pairwise_ops.pairwise_lse_fwd(x, y, h, y if want_grad else None, 1.0 / (2 * eps), "sqeuclidean")
        return -eps * lse, (x - out if want_grad else None)
    f, U = ops.ot_softmin_points(x, y, h, eps, p, want_grad)
    return f, (U if want_grad else None)


def _check_weights(name, w, B, n, like, batched):
    if w is None:
        return like.new_full((B, n), 1.0 / max(n, 1))
    V.tensor(name, w, ndims=(1, 2, 3) if batched else (1, 2))
    if batched:
        if w.dim() == 3 and w.shape[2] == 1:
            w = w[..., 0]
        if w.dim() != 2 or tuple(w.shape) != (B, n):
            raise ValueError(f"{name} must have shape ({B}, {n}) to match the points, got {tuple(w.shape)}")
    else:
        if w.dim() == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.dim() != 1 or w.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},) to match the points, got {tuple(w.shape)}")
        w = w[None]
    wd = w.detach()
    if bool((wd < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    if bool(torch.isinf(wd).any()):
        raise ValueError(f"{name} must be finite")
    return w


def prepare(x, y, a, b, *, names=("x", "y", "a", "b")):
    """Validate and batch: returns x (B,n,d), y (B,m,d), a (B,n), b (B,m) of one dtype, batched flag."""
    nx_, ny_, na_, nb_ = names
    V.tensor(nx_, x, ndims=(2, 3))
    V.tensor(ny_, y, ndims=(2, 3))
    if x.dim() != y.dim():
        raise ValueError(f"{nx_} and {ny_} must both be (N, D) or both (B, N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"{nx_} and {ny_} must have the same feature dimension, got {x.shape[-1]} and {y.shape[-1]}")
    if x.shape[-1] == 0:
        raise ValueError(f"{nx_} and {ny_} must have at least one feature (D >= 1), got shape {tuple(x.shape)}")
    # +-inf coordinates have no transport cost (NaN propagates as NaN, the library's rule)
    if bool(torch.isinf(x.detach()).any() | torch.isinf(y.detach()).any()):
        nm = nx_ if bool(torch.isinf(x.detach()).any()) else ny_
        raise ValueError(f"{nm} must have finite coordinates, got an infinite value")
    batched = x.dim() == 3
    if batched and x.shape[0] != y.shape[0]:
        raise ValueError(f"{nx_} and {ny_} must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    V.same_device(**{nx_: x, ny_: y, na_: a, nb_: b})
    dtype = V.compute_dtype(x, y, a, b)
    if a is not None and a.dtype != dtype and a.dtype in (torch.float32, torch.float64):
        pass  # weights are cast below; mixed float32/float64 computes in float64
    B = x.shape[0] if batched else 1
    X = x.to(dtype) if batched else x.to(dtype)[None]
    Y = y.to(dtype) if batched else y.to(dtype)[None]
    A = _check_weights(na_, a, B, X.shape[1], X, batched).to(dtype)
    Bw = _check_weights(nb_, b, B, Y.shape[1], X, batched).to(dtype)
    return X, Y, A, Bw, batched


def _span(X, Y):
    """Diagonal of the bounding box of both (centred) clouds: a bound on every |x - y|."""
    if X.shape[1] == 0 or Y.shape[1] == 0 or X.shape[0] == 0:
        return 0.0
    X, Y = X.detach(), Y.detach()
    lo_hi = torch.stack([torch.minimum(X.amin((0, 1)), Y.amin((0, 1))),
                         torch.maximum(X.amax((0, 1)), Y.amax((0, 1)))])
    return float((lo_hi[1] - lo_hi[0]).norm())


def _diameter(X, Y, va, vb):
    D = X.shape[-1]
    pts = torch.cat([X[va].reshape(-1, D), Y[vb].reshape(-1, D)]).detach()
    if pts.shape[0] == 0:
        return 0.0
    return float((pts.max(0)[0] - pts.min(0)[0]).norm().item())


class _Config(NamedTuple):
    p: int
    blur: float
    rho_x: Optional[float]
    rho_y: Optional[float]
    diameter: Optional[float]
    scaling: float
    debias: bool
    max_iter: Optional[int]
    tol: Optional[float]
    want_marginal: bool


def _side_terms(w, f_ab, f_self, rho, eps, debias, valid):
    """Per-point loss term, its weight gradient, and the coefficients of U (cross, self)."""
    z = torch.zeros((), dtype=f_ab.dtype, device=f_ab.device)
    f_ab = torch.where(valid, f_ab, z)
    if debias:
        f_self = torch.where(valid, f_self, z)
    if rho is None:
        term = f_ab - f_self if debias else f_ab
        grad_w = term
        cx, cs = w, (w if debias else None)
    else:
        # expm1: 1 - exp(-f/rho) and exp(-f_s/rho) - exp(-f/rho) are pure rounding in float32
        # once f << rho (reach = 1e4 returned 0.0)
        e_ab = torch.exp(-f_ab / rho)
        if debias:
            e_s = torch.exp(-f_self / rho)
            diff = -e_s * torch.expm1(-(f_ab - f_self) / rho)  # e_s - e_ab without cancellation
            term = (rho + eps / 2) * diff
            grad_w = (rho + eps) * diff
            cs = w * e_s
        else:
            one_minus = -torch.expm1(-f_ab / rho)
            term = (rho + eps / 2) * one_minus
            grad_w = (rho + eps) * one_minus - eps / 2  # exact derivative of this value
            cs = None
        cx = w * e_ab
    term = torch.where(valid, term, z)
    return term, grad_w, cx, cs


def solve(X, Y, A, Bw, cfg: _Config, want_grad: bool):
    """No-grad core. Returns dict with loss (B,), f, g, (f_aa, g_bb), grads, n_iter, marginal error."""
    p, debias = cfg.p, cfg.debias
    rho_x, rho_y = cfg.rho_x, cfg.rho_y
    B, n, d = X.shape
    m = Y.shape[1]
    va, vb = A > 0, Bw > 0
    empty = ~(va.any(1) & vb.any(1))
    if bool(empty.any()):  # solve a harmless stand-in, zero everything at the end
        A = torch.where(empty[:, None], torch.ones_like(A) / max(n, 1), A)
        Bw = torch.where(empty[:, None], torch.ones_like(Bw) / max(m, 1), Bw)
        va, vb = A > 0, Bw > 0
    # before centering; the fixed-eps mode (max_iter / tol) never uses it
    diam = cfg.diameter if cfg.diameter is not None or cfg.max_iter is not None else _diameter(X, Y, va, vb)
    out_dtype = X.dtype
    # padded points sit at the centre: they never produce huge or NaN scores
    cnt = va.sum(1, keepdim=True) + vb.sum(1, keepdim=True)
    center = ((X * va[..., None]).sum(1) + (Y * vb[..., None]).sum(1)) / cnt.clamp_min(1)
    center = center[:, None, :]
    X = torch.where(va[..., None], X - center, torch.zeros((), dtype=X.dtype))
    Y = torch.where(vb[..., None], Y - center, torch.zeros((), dtype=X.dtype))
    span = diam
    if X.dtype == torch.float32:
        # float32 holds potentials ~ eps log n next to costs ~ diameter^p only when eps is not far
        # above the costs (blur = 1000 gave 1.28 for 0.172), nor can it resolve clouds whose
        # diameter is near its underflow: such problems run in float64, results cast back.
        # After centering the padded points sit at the mean of the valid ones, inside their
        # bounding box, so the unmasked box of X and Y is the valid points' one.
        if span is None and (X.shape[1] == 0 or Y.shape[1] == 0):
            span = 0.0  # an empty side: the loss is 0 whatever runs
        if span is None:
            span = _span(X, Y)
        if not span ** p * 16.0 >= cfg.blur ** p or span < 1e-15:
            X, Y, A, Bw, center = X.double(), Y.double(), A.double(), Bw.double(), center.double()
    X, Y = X.contiguous(), Y.contiguous()
    a_log, b_log = _log_w(A), _log_w(Bw)

    eps = cfg.blur ** p
    if cfg.max_iter is None:
        if not diam > 0:
            diam = cfg.blur  # identical clouds / single points: start at the target temperature
        eps_list = epsilon_schedule(p, diam, cfg.blur, cfg.scaling)
        tol = 0.0
    else:
        eps_list = [eps] * max(int(cfg.max_iter), 1)
        tol = float(cfg.tol or 0.0)
    check_every = 10

    small = n <= SMALL and m <= SMALL
    if small:
        Cxy = ops.ot_cost_matrix(X, Y, p).contiguous()
        Cxx = ops.ot_cost_matrix(X, X, p).contiguous() if debias else X.new_zeros(0)
        Cyy = ops.ot_cost_matrix(Y, Y, p).contiguous() if debias else X.new_zeros(0)
        f_ba, g_ab, f_aa, g_bb, n_iter = ops.ot_sinkhorn_symmetric(
            Cxy, Cxx, Cyy, a_log.contiguous(), b_log.contiguous(),
            torch.tensor(eps_list, dtype=torch.float64), rho_x or -1.0, rho_y or -1.0, debias, tol, check_every)
    else:
        Cxy = Cxx = Cyy = None
        f_ba, g_ab, f_aa, g_bb, n_iter, Ux, Uy, Uxx, Uyy, pre = _streamed(
            X, Y, a_log, b_log, eps_list, rho_x, rho_y, debias, p, tol, check_every, want_grad)
    warn_resolution(potential_scale(f_ba, g_ab), eps_list[-1], X.dtype)

    def final_softmin(P, Q, h, C, dim):
        # small problems without gradients: one pass over the cost already materialized
        if small and not want_grad:
            return ops.ot_softmin_dense(C, h.contiguous(), e, dim), None
        return softmin_points(P, Q, h.contiguous(), e, p, want_grad)

    e = eps_list[-1]
    if small:
        pre = (f_ba, g_ab, f_aa, g_bb)
        # last extrapolation, with the gradient terms of the envelope theorem
        dx, dy = _damp(e, rho_x), _damp(e, rho_y)
        f_new, Ux = final_softmin(X, Y, b_log + g_ab / e, Cxy if small else None, 2)
        g_new, Uy = final_softmin(Y, X, a_log + f_ba / e, Cxy if small else None, 1)
        f_ba, g_ab = dx * f_new, dy * g_new
        Uxx = Uyy = None
        if debias:
            fa, Uxx = final_softmin(X, X, a_log + f_aa / e, Cxx if small else None, 2)
            gb, Uyy = final_softmin(Y, Y, b_log + g_bb / e, Cyy if small else None, 2)
            f_aa, g_bb = dx * fa, dy * gb

    term_a, grad_a, cx, cxx = _side_terms(A, f_ba, f_aa, rho_x, e, debias, va)
    term_b, grad_b, cy, cyy = _side_terms(Bw, g_ab, g_bb, rho_y, e, debias, vb)
    loss = (A * term_a).sum(1) + (Bw * term_b).sum(1)
    out = {"loss": loss, "f": f_ba, "g": g_ab, "f_aa": f_aa, "g_bb": g_bb, "n_iter": n_iter,
           "grad_a": grad_a, "grad_b": grad_b, "eps": e, "A": A, "B": Bw,
           "pre": pre, "center": center, "empty": empty}  # what a differentiable backward rebuilds the last step from
    if want_grad:
        gx = cx[..., None] * Ux
        gy = cy[..., None] * Uy
        if debias:
            gx = gx - cxx[..., None] * Uxx
            gy = gy - cyy[..., None] * Uyy
        z = torch.zeros((), dtype=X.dtype, device=X.device)
        out["grad_x"] = torch.where(va[..., None], gx, z)
        out["grad_y"] = torch.where(vb[..., None], gy, z)
    if cfg.want_marginal:
        # row marginal of P = a b exp((f + g - C)/eps): (P 1)_i = a_i exp((f_i - T(g)_i)/eps).
        # f and T(g) are both ~ the cost, so their difference is evaluated in float64 (the float32
        # difference of two values ~ 1e6 is rounding, and exp of it meaningless), and the error
        # as a_i |expm1(.)| (relative to a_i, no cancellation against a_i)
        # (float32 is enough while the costs stay below ~1e3 eps: its rounding of f - T(g) is
        # then < 1e-4 eps)
        wd = X.dtype if X.dtype == torch.float64 or (span is not None and span ** p < 1e3 * e) else torch.float64
        hw = (b_log.to(wd) + g_ab.to(wd) / e).contiguous()
        if small:
            Cw = Cxy if Cxy.dtype == wd else ops.ot_cost_matrix(X.to(wd), Y.to(wd), p).contiguous()
            t = ops.ot_softmin_dense(Cw, hw, e, 2)
        else:
            t, _ = softmin_points(X.to(wd).contiguous(), Y.to(wd).contiguous(), hw, e, p, False)
        zw = torch.zeros((), dtype=wd, device=X.device)
        dev = torch.where(va, A.to(wd) * torch.expm1((f_ba.to(wd) - t) / e).abs(), zw)
        out["marginal_error"] = dev.sum(1).to(X.dtype)
    else:
        out["marginal_error"] = loss.new_full((B,), float("nan"))
    if bool(empty.any()):
        zb = empty
        out["loss"] = torch.where(zb, 0.0, out["loss"])
        for k in ("f", "g", "grad_a", "grad_b", "f_aa", "g_bb"):
            if out[k] is not None and out[k].numel():
                out[k] = torch.where(zb[:, None], 0.0, out[k])
        for k in ("grad_x", "grad_y"):
            if k in out:
                out[k] = torch.where(zb[:, None, None], 0.0, out[k])
        out["marginal_error"] = torch.where(zb, 0.0, out["marginal_error"])
        out["A"] = torch.where(zb[:, None], 0.0, out["A"])
        out["B"] = torch.where(zb[:, None], 0.0, out["B"])
    if out_dtype != X.dtype:
        for k, v in list(out.items()):
            if torch.is_tensor(v) and v.is_floating_point():
                out[k] = v.to(out_dtype)
    return out


def _streamed(X, Y, a_log, b_log, eps_list, rho_x, rho_y, debias, p, tol, check_every, want_grad):
    """GeomLoss's symmetric loop plus the final extrapolation, each softmin streamed (no n x m).

    The two (or, with debias, four) softmins of one step, x <- y, y <- x, x <- x, y <- y, are one
    engine call: the problems are stacked along the batch dimension (shorter clouds padded with
    zero-weight points, which are -inf columns), so a step costs one call and a handful of
    element-wise ops on the stacked potentials S = [f_ba, g_ab, f_aa, g_bb] instead of a dozen
    per-side ops. Each stacked problem is computed exactly as it would be alone. With tol > 0:
    stop when the sup-norm change of (f, g) is below tol, checked every check_every iterations
    (one host sync per check). Returns f_ba, g_ab, f_aa, g_bb (damped, after the extrapolation),
    n_iter and the gradient terms Ux, Uy, Uxx, Uyy (None without want_grad / debias)."""
    B, n, d = X.shape
    m = Y.shape[1]
    N = max(n, m)
    inf = math.inf

    def pad(T, fill):
        if T.shape[1] == N:
            return T
        return torch.cat([T, T.new_full((B, N - T.shape[1]) + tuple(T.shape[2:]), fill)], 1)

    Xp, Yp, al, bl = pad(X, 0.0), pad(Y, 0.0), pad(a_log, -inf), pad(b_log, -inf)
    k = 4 if debias else 2
    P = torch.cat([Xp, Yp, Xp, Yp][:k]).contiguous()       # rows of the stacked problems
    Q = torch.cat([Yp, Xp, Xp, Yp][:k]).contiguous()       # their columns
    wq = torch.cat([bl, al, al, bl][:k]).contiguous()      # column log-weights
    perm = torch.tensor([1, 0, 2, 3][:k], device=X.device)  # S (row potentials) -> column potentials

    def damp(eps):
        dx, dy = _damp(eps, rho_x), _damp(eps, rho_y)
        if dx == dy:
            return dx
        return torch.tensor([dx, dy, dx, dy][:k], dtype=X.dtype, device=X.device).repeat_interleave(B)[:, None]

    def softmin(h, eps, grad):
        """-eps LSE_j[h_j - C(P_i, Q_j)/eps] over the stack, and sum_j S_ij dC/dP_i if grad."""
        if p == 2:
            lse, out = pairwise_ops.pairwise_lse_fwd(P, Q, h, Q if grad else None, 1.0 / (2 * eps), "sqeuclidean")
            return lse.mul_(-eps), (P - out if grad else None)
        f, U = ops.ot_softmin_points(P, Q, h, eps, p, grad)
        return f, (U if grad else None)

    def col_pot(S, eps):  # h = column log-weights + column potentials / eps
        Sq = S.view(k, B, N).index_select(0, perm).view(k * B, N)
        return torch.add(wq, Sq, alpha=1.0 / eps)

    eps = eps_list[0]
    S, _ = softmin(wq, eps, False)
    S = S * damp(eps)
    valid = torch.isfinite(torch.cat([al, bl]))  # rows of the (f, g) blocks that count for tol
    n_iter = torch.zeros(B, dtype=torch.int64, device=X.device)
    for it, eps in enumerate(eps_list):
        T, _ = softmin(col_pot(S, eps), eps, False)
        check = tol > 0 and (it + 1) % check_every == 0
        old = S[:2 * B].clone() if check else None
        dm = damp(eps)
        S = S.mul_(0.5).add_(T * dm if torch.is_tensor(dm) else T, alpha=0.5 if torch.is_tensor(dm) else 0.5 * dm)
        n_iter += 1
        if check:
            ch = torch.where(valid, (S[:2 * B] - old).abs(), 0.0).amax()
            if not bool(ch >= tol):  # converged (NaN also stops: never hang)
                break
    # last extrapolation, with the gradient terms of the envelope theorem (values = Q, one pass)
    e = eps_list[-1]
    pre = (S[:B, :n], S[B:2 * B, :m]) + ((S[2 * B:3 * B, :n], S[3 * B:, :m]) if debias else
                                         (X.new_zeros(0), X.new_zeros(0)))
    pre = tuple(t.contiguous() for t in pre)
    F, U = softmin(col_pot(S, e), e, want_grad)
    F = F * damp(e)
    f_ba, g_ab = F[:B, :n], F[B:2 * B, :m]
    f_aa, g_bb = (F[2 * B:3 * B, :n], F[3 * B:, :m]) if debias else (X.new_zeros(0), X.new_zeros(0))
    Us = [None] * 4
    if want_grad:
        Us = [U[:B, :n], U[B:2 * B, :m]] + ([U[2 * B:3 * B, :n], U[3 * B:, :m]] if debias else [None, None])
    return (f_ba.contiguous(), g_ab.contiguous(), f_aa.contiguous(), g_bb.contiguous(), n_iter, *Us, pre)


def _softmin_graph(P, Q, h, eps, p):
    """Dense torch softmin f_i = -eps LSE_j[h_j - C(P_i, Q_j)/eps] and U_i = sum_j S_ij dC/dP_i,
    differentiable (autograd records it); used only to rebuild the last step for create_graph."""
    diff = P[:, :, None, :] - Q[:, None, :, :]
    sq = (diff * diff).sum(-1)
    if p == 2:
        C = sq / 2
    else:
        nz = sq > 0
        C = torch.where(nz, torch.sqrt(torch.where(nz, sq, 1.0)), 0.0)  # no inf gradient at 0
    s = h[:, None, :] - C / eps
    lse = torch.logsumexp(s, 2)
    fin = torch.isfinite(lse)
    S = torch.where(fin[..., None], torch.exp(s - torch.where(fin, lse, 0.0)[..., None]), 0.0)
    if p == 2:
        U = P * S.sum(2, keepdim=True) - S @ Q
    else:
        U = (S[..., None] * torch.where(nz[..., None], diff / torch.where(nz, C, 1.0)[..., None], 0.0)).sum(2)
    return -eps * lse, U


def _graph_grads(x, y, a, b, aux, cfg):
    """The analytic gradients (grad_x, grad_y, grad_a, grad_b) rebuilt in torch ops from the saved
    inputs and the potentials before the last extrapolation (detached), as GeomLoss differentiates
    through its last extrapolation step: with create_graph=True, the gradient is differentiable
    (a gradient penalty sees its dependence on x, y, a, b through that step). Dense: B n m memory."""
    pre, center, empty, e = aux
    wd = pre[0].dtype
    X, Y, A, Bw = (t.to(wd) for t in (x, y, a, b))
    va, vb = A.detach() > 0, Bw.detach() > 0
    z = torch.zeros((), dtype=wd, device=X.device)
    X = torch.where(va[..., None], X - center.to(wd), z)
    Y = torch.where(vb[..., None], Y - center.to(wd), z)
    a_log, b_log = _log_w(A), _log_w(Bw)
    f_ba, g_ab, f_aa, g_bb = (t.detach() for t in pre)
    p, rho_x, rho_y, debias = cfg.p, cfg.rho_x, cfg.rho_y, cfg.debias
    dx, dy = _damp(e, rho_x), _damp(e, rho_y)
    fn, Ux = _softmin_graph(X, Y, b_log + g_ab / e, e, p)
    gn, Uy = _softmin_graph(Y, X, a_log + f_ba / e, e, p)
    fa = gb_ = Uxx = Uyy = None
    if debias:
        fa, Uxx = _softmin_graph(X, X, a_log + f_aa / e, e, p)
        gb_, Uyy = _softmin_graph(Y, Y, b_log + g_bb / e, e, p)
        fa, gb_ = dx * fa, dy * gb_
    _, grad_a, cx, cxx = _side_terms(A, dx * fn, fa, rho_x, e, debias, va)
    _, grad_b, cy, cyy = _side_terms(Bw, dy * gn, gb_, rho_y, e, debias, vb)
    gx = cx[..., None] * Ux
    gy = cy[..., None] * Uy
    if debias:
        gx = gx - cxx[..., None] * Uxx
        gy = gy - cyy[..., None] * Uyy
    keep = ~empty
    gx = torch.where(va[..., None] & keep[:, None, None], gx, z)
    gy = torch.where(vb[..., None] & keep[:, None, None], gy, z)
    grad_a = torch.where(keep[:, None], grad_a, z)
    grad_b = torch.where(keep[:, None], grad_b, z)
    return tuple(t.to(x.dtype) for t in (gx, gy, grad_a, grad_b))


class _SinkhornFn(backends.Function):
    @staticmethod
    def forward(ctx, x, y, a, b, cfg):
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        out = solve(x.detach(), y.detach(), a.detach(), b.detach(), cfg, want)
        ctx.save_for_backward(out.get("grad_x"), out.get("grad_y"), out["grad_a"], out["grad_b"], x, y, a, b)
        ctx.want = want
        ctx.cfg = cfg
        ctx.aux = (tuple(t.detach() for t in out["pre"]), out["center"].detach(), out["empty"], out["eps"])
        res = (out["loss"], out["f"], out["g"], out["f_aa"], out["g_bb"], out["n_iter"], out["marginal_error"],
               out["A"], out["B"])
        ctx.mark_non_differentiable(*res[1:])
        ctx.eps = out["eps"]
        return res

    @staticmethod
    def backward(ctx, gl, *unused):
        gx, gy, ga, gb, x, y, a, b = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: a gradient with a graph, never a detached constant
            gx, gy, ga, gb = _graph_grads(x, y, a, b, ctx.aux, ctx.cfg)
        w = gl[:, None]
        return (w[..., None] * gx if ctx.want and ctx.needs_input_grad[0] else None,
                w[..., None] * gy if ctx.want and ctx.needs_input_grad[1] else None,
                w * ga if ctx.needs_input_grad[2] else None,
                w * gb if ctx.needs_input_grad[3] else None,
                None)


def check_params(blur, p, reach, reach_x, reach_y, scaling, diameter, max_iter, tol):
    V.scalar("blur", blur, positive=True, allow_tensor=False)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2 (an int, or an integral float such as 2.0), got {p!r}")
    for name, r in (("reach", reach), ("reach_x", reach_x), ("reach_y", reach_y)):
        if r is not None:
            V.scalar(name, r, positive=True, allow_tensor=False)
    V.scalar("scaling", scaling, positive=True, allow_tensor=False)
    if not scaling < 1:
        raise ValueError(f"scaling must be in (0, 1), got {scaling}")
    if diameter is not None:
        V.scalar("diameter", diameter, positive=True, allow_tensor=False)
    if max_iter is not None and (not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if tol is not None:
        V.scalar("tol", tol, positive=True, allow_tensor=False)


def run(X, Y, A, Bw, *, p, blur, rho_x, rho_y, diameter, scaling, debias, max_iter, tol, backend, want_marginal):
    cfg = _Config(p, float(blur), rho_x, rho_y, diameter, float(scaling), bool(debias), max_iter, tol, want_marginal)
    with backends.prefer(backend):
        return _SinkhornFn.apply(X, Y, A, Bw, cfg)


def sinkhorn(x, y, a=None, b=None, *, blur=0.05, p=2, reach=None, reach_x=None, reach_y=None, scaling=0.5,
             max_iter=None, tol=None, debias=False, diameter=None, backend="auto"):
    """Entropic OT between point clouds x (N, D) / (B, N, D) and y with weights a, b.

    Default: epsilon-scaling from diameter^p to blur^p (GeomLoss). With max_iter and/or tol:
    fixed eps = blur^p, at most max_iter (default 1000) symmetric iterations, stopping when the
    potentials move less than tol (checked every 10 iterations). reach sets both marginal
    penalties (rho = reach^p, KL); reach_x / reach_y set one side (None on a side = balanced).
    debias=True returns the Sinkhorn divergence. Returns SinkhornResult; loss is differentiable
    wrt x, y, a, b (analytic gradients; with create_graph=True the gradient is rebuilt in torch ops
    through the last extrapolation step, GeomLoss's rule, so gradient penalties work). p: 1 or 2
    (2.0 accepted). float32 problems with blur far above the diameter, or near-coincident clouds,
    are solved in float64 inside (docs/ot.md, "Precision").
    """
    backends.check(backend)
    check_params(blur, p, reach, reach_x, reach_y, scaling, diameter, max_iter, tol)
    p = int(p)
    X, Y, A, Bw, batched = prepare(x, y, a, b)
    rx = reach_x if reach_x is not None else reach
    ry = reach_y if reach_y is not None else reach
    rho_x = None if rx is None else float(rx) ** p
    rho_y = None if ry is None else float(ry) ** p
    if (max_iter is not None or tol is not None) and max_iter is None:
        max_iter = 1000
    loss, f, g, _, _, n_iter, merr, Aw, Bww = run(
        X, Y, A, Bw, p=p, blur=blur, rho_x=rho_x, rho_y=rho_y, diameter=diameter, scaling=scaling, debias=debias,
        max_iter=max_iter, tol=tol, backend=backend, want_marginal=True)
    eps = float(blur) ** p
    if not batched:
        loss, f, g = loss[0], f[0], g[0]
    return SinkhornResult(loss, f, g, n_iter, merr, eps, p, rho_x, rho_y, Aw, Bww)
