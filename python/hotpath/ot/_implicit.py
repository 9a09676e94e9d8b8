"""Exact derivatives of dense Sinkhorn potentials: implicit differentiation of the fixed point.

The solver (C++ loop) returns potentials (f, g) for a cost C (B, n, m) and weights a, b; the plan
is P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps). At the fixed point the residual

    F_f = P 1 - a * phi_x(f),   F_g = P^T 1 - b * phi_y(g)      (phi = 1 balanced, exp(-./rho) KL)

vanishes, so d(f, g) = -J^{-1} dF/dtheta dtheta with J = dF/d(f, g) = H / eps,

    H = [[diag(d_f), P], [P^T, diag(d_g)]],  d_f = P 1 + (eps / rho_x) a exp(-f / rho_x)  (no rho: P 1).

`ImplicitPotentials` passes (f, g) through unchanged and gives them that derivative: any value
written as torch ops of (C, a, b, f, g) -- POT's <P, C>, the dual <a, f> + <b, g> -- then has the
exact gradient of what it returns, not the envelope approximation. The backward is itself written
in differentiable torch ops (a linear solve in float64 on the smaller side's Schur complement), so
with create_graph=True second derivatives are exact too (the saved potentials are this function's
outputs, so autograd differentiates them through the same implicit rule).

Balanced problems: H is singular along (1, -1) (adding t to f and -t to g leaves P unchanged);
the Schur complement is regularized along that direction, which picks the solution orthogonal to
it. Gradients along mass-changing directions of a, b are then those of that gauge (as POT's
autograd, they are defined only up to a constant in the balanced case).
"""
import math

import torch


def _log_w(w):
    return torch.where(w > 0, torch.log(torch.where(w > 0, w, 1.0)), -math.inf)


def _phi(f, rho):
    return torch.exp(-f / rho)


def log_plan(C, A, Bw, f, g, eps):
    """log P (B, n, m); -inf on zero-weight rows / columns (never NaN from log 0)."""
    la, lb = _log_w(A), _log_w(Bw)
    s = (f[:, :, None] + g[:, None, :] - C) / eps
    ok = (A > 0)[:, :, None] & (Bw > 0)[:, None, :]
    return torch.where(ok, la[:, :, None] + lb[:, None, :] + s, -math.inf)


def _solve(P, d1, d2, r1, r2, balanced, va, vb):
    """Solve [[diag d1, P], [P^T, diag d2]] [u; v] = [r1; r2] by the Schur complement on the
    smaller side (float64 in, float64 out)."""
    n, m = P.shape[1], P.shape[2]
    if m > n:  # eliminate the larger side: the dense solve is min(n, m)^3
        v, u = _solve(P.transpose(1, 2), d2, d1, r2, r1, balanced, vb, va)
        return u, v
    Pd = P / d1[:, :, None]
    S = torch.diag_embed(d2) - P.transpose(1, 2) @ Pd
    rhs = r2 - (Pd.transpose(1, 2) @ r1[..., None])[..., 0]
    if balanced:
        # null direction: the valid columns' indicator; adding c e e^T makes S invertible and
        # leaves the solution of the (consistent) singular system unchanged up to the gauge
        e = vb.to(P.dtype)
        c = d2.sum(1, keepdim=True) / e.sum(1, keepdim=True).clamp_min(1.0)
        S = S + c[:, :, None] * e[:, :, None] * e[:, None, :]
    # a NaN problem (NaN / -inf costs, see sinkhorn_dense) is solved as a stand-in, then made NaN:
    # the pseudo-inverse's eigh would raise on it and fail the whole batch
    bad = ~(torch.isfinite(S).flatten(1).all(1) & torch.isfinite(rhs).all(1))
    if bool(bad.any()):
        S = torch.where(bad[:, None, None], torch.eye(S.shape[-1], dtype=S.dtype, device=S.device), S)
        rhs = torch.where(bad[:, None], torch.zeros((), dtype=rhs.dtype, device=rhs.device), rhs)
    v, info = torch.linalg.solve_ex(S, rhs[..., None])
    if bool((info != 0).any()):
        # a plan close to a permutation splits the kernel into blocks, each with its own gauge:
        # S is singular to working precision but the system stays consistent, so the
        # minimum-norm solution is a solution (S is symmetric positive semi-definite)
        v = torch.linalg.pinv(S, hermitian=True) @ rhs[..., None]
    v = torch.where(bad[:, None], torch.full((), float("nan"), dtype=v.dtype, device=v.device), v[..., 0])
    u = (r1 - (P @ v[..., None])[..., 0]) / d1
    return u, v


def implicit_vjp(C, A, Bw, f, g, wf, wg, eps, rho_x, rho_y):
    """Gradients (gC, gA, gB) of <wf, f> + <wg, g> through the fixed point (f, g)(C, A, B).

    Torch ops only: differentiable when grad mode is on (create_graph)."""
    dt = C.dtype
    C, A, Bw, f, g = (t.to(torch.float64) for t in (C, A, Bw, f, g))
    wf = torch.zeros_like(f) if wf is None else wf.to(torch.float64)
    wg = torch.zeros_like(g) if wg is None else wg.to(torch.float64)
    va, vb = A > 0, Bw > 0
    z = torch.zeros((), dtype=torch.float64, device=C.device)
    f = torch.where(va, f, z)
    g = torch.where(vb, g, z)
    P = torch.exp(log_plan(C, A, Bw, f, g, eps))
    d1, d2 = P.sum(2), P.sum(1)
    if rho_x is not None:
        d1 = d1 + (eps / rho_x) * A * _phi(f, rho_x)
    if rho_y is not None:
        d2 = d2 + (eps / rho_y) * Bw * _phi(g, rho_y)
    one = torch.ones((), dtype=torch.float64, device=C.device)
    d1 = torch.where(va, d1, one)
    d2 = torch.where(vb, d2, one)
    r1 = torch.where(va, eps * wf, z)
    r2 = torch.where(vb, eps * wg, z)
    mu_f, mu_g = _solve(P, d1, d2, r1, r2, rho_x is None and rho_y is None, va, vb)
    # residual contracted with mu: sum_ij P_ij (mu_f_i + mu_g_j) - <mu_f, a phi(f)> - <mu_g, b phi(g)>;
    # the gradient wrt theta is minus its partial derivative
    M = mu_f[:, :, None] + mu_g[:, None, :]
    gC = P * M / eps
    # d P_ij / d a_i = P_ij / a_i, written without the division (zero-weight rows included)
    lQa = torch.where(vb[:, None, :], _log_w(Bw)[:, None, :] + (f[:, :, None] + g[:, None, :] - C) / eps, -math.inf)
    lQb = torch.where(va[:, :, None], _log_w(A)[:, :, None] + (f[:, :, None] + g[:, None, :] - C) / eps, -math.inf)
    pa = _phi(f, rho_x) if rho_x is not None else torch.ones_like(f)
    pb = _phi(g, rho_y) if rho_y is not None else torch.ones_like(g)
    gA = -((torch.exp(lQa) * M).sum(2) - mu_f * pa)
    gB = -((torch.exp(lQb) * M).sum(1) - mu_g * pb)
    return gC.to(dt), gA.to(dt), gB.to(dt)


class ImplicitPotentials(torch.autograd.Function):
    """(f, g) = identity on the solver's potentials, differentiable wrt (C, A, B) by the implicit
    function theorem (see the module docstring)."""

    @staticmethod
    def forward(ctx, C, A, Bw, f, g, eps, rho_x, rho_y):
        fo, go = f.detach().clone(), g.detach().clone()
        ctx.save_for_backward(C, A, Bw, fo, go)
        ctx.eps, ctx.rho_x, ctx.rho_y = eps, rho_x, rho_y
        return fo, go

    @staticmethod
    def backward(ctx, wf, wg):
        C, A, Bw, f, g = ctx.saved_tensors
        gC, gA, gB = implicit_vjp(C, A, Bw, f, g, wf, wg, ctx.eps, ctx.rho_x, ctx.rho_y)
        return (gC if ctx.needs_input_grad[0] else None, gA if ctx.needs_input_grad[1] else None,
                gB if ctx.needs_input_grad[2] else None, None, None, None, None, None)


def differentiable_potentials(C, A, Bw, f, g, eps, rho_x=None, rho_y=None):
    return ImplicitPotentials.apply(C, A, Bw, f, g, eps, rho_x, rho_y)
