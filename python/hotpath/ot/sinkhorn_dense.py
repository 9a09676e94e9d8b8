"""Sinkhorn on a given dense cost matrix: hp.ot.sinkhorn_dense and POT-compatible hp.ot.sinkhorn2.

Log-domain, POT's update order (g then f), C++ loop with all iterations in one call; the
marginal error |sum_i P_ij - b_j|_2 is checked every 10 iterations (POT's stopping rule).
Gradients (docs/ot.md, "Gradients"): sinkhorn2 / sinkhorn_plan default to the exact derivative
of what they return (implicit differentiation of the fixed point, _implicit.py); the envelope
gradient (dL/dC = P, dL/da = f, dL/db = g) is grad="envelope", and sinkhorn_dense's default,
where it is exact (the dual value is stationary in (f, g)).
"""
import math
import warnings

import torch

from .. import _validate as V
from .. import backends
from .._ops import ot as ops
from . import _pot_io
from ._implicit import differentiable_potentials, log_plan
from .sinkhorn import SinkhornResult, _log_w, potential_scale, warn_resolution


def _prep_dense(C, a, b, names=("C", "a", "b")):
    nC, na, nb = names
    dev = _pot_io.first_device(C, a, b)
    C = _pot_io.as_tensor(nC, C, device=dev)
    like = C.dtype if isinstance(C, torch.Tensor) and C.dtype in (torch.float32, torch.float64) else None

    def weights_in(name, t):
        # POT: lists, numpy arrays and empty vectors (uniform); a list follows the cost's dtype
        was_seq = isinstance(t, (list, tuple))
        t = _pot_io.as_tensor(name, t, device=dev, empty_is_none=True)
        if was_seq and t is not None and like is not None:
            t = t.to(like)
        return t

    a, b = weights_in(na, a), weights_in(nb, b)
    V.tensor(nC, C, ndims=(2, 3))
    batched = C.dim() == 3
    Cb = C if batched else C[None]
    B, n, m = Cb.shape
    V.same_device(**{nC: C, na: a, nb: b})
    dtype = V.compute_dtype(C, a, b)

    def w(name, t, k):
        if t is None or (t.numel() == 0 and k > 0):
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


def _wide_eps(C, eps):
    """float32 cannot hold potentials ~ eps log n next to costs far smaller than eps (the dual value
    cancels to nothing, eps = 1e8 gave -64): such problems run in float64."""
    if C.dtype != torch.float32 or C.numel() == 0:
        return False
    Cd = C.detach()
    big = float(Cd.abs().amax())
    if not math.isfinite(big):  # the largest finite cost, in a second pass only when needed
        big = float(torch.where(torch.isfinite(Cd), Cd.abs(), torch.zeros((), dtype=Cd.dtype)).amax())
    return eps > 16.0 * big


def _nan_problems(C, A, B):
    """(B,) bool: the problems that are NaN on every backend. A NaN cost (the loop's log-sum-exps
    carry it only along its row and column, and how far it spreads depends on when the loop stops),
    a -inf cost (unbounded: no finite potentials), and a point with mass whose costs are all +inf
    (no feasible plan: the potentials are inf - inf)."""
    if bool(torch.isfinite(C).all()):  # the common case: one pass
        return torch.zeros(C.shape[0], dtype=torch.bool, device=C.device)
    nan = (torch.isnan(C) | torch.isneginf(C)).flatten(1).any(1)
    inf = torch.isposinf(C)
    dead_row = (inf.all(2) & (A > 0)).any(1)
    dead_col = (inf.all(1) & (B > 0)).any(1)
    return nan | dead_row | dead_col


def _solve(Cb, A, Bw, eps, rho, max_iter, tol, f0=None):
    """No-grad: potentials from the C++ loop in the working dtype. Returns (f, g, n_iter, err, work)
    with work = (C, A, B) in the dtype the loop ran in (float64 for float32 with a wide eps)."""
    with torch.no_grad():
        C, A_, B_ = Cb.detach(), A.detach(), Bw.detach()
        if _wide_eps(C, eps):
            C, A_, B_ = C.double(), A_.double(), B_.double()
        C = C.contiguous()
        a_log, b_log = _log_w(A_).contiguous(), _log_w(B_).contiguous()
        if f0 is None:
            f0 = torch.where(torch.isfinite(a_log), -eps * a_log, torch.zeros((), dtype=C.dtype))
        f0 = f0.to(C.dtype).contiguous()
        r = -1.0 if rho is None else rho
        f, g, n_iter, err = ops.ot_sinkhorn_alternating(C, a_log, b_log, eps, r, r, max_iter, tol, 10, f0)
        warn_resolution(potential_scale(f, g), eps, C.dtype)
        bad = _nan_problems(C, A_, B_)[:, None]
        f, g = f.masked_fill(bad, float("nan")), g.masked_fill(bad, float("nan"))
    return f, g, n_iter, err, (C, A_, B_)


def _value(kind, C, A, Bw, f, g, eps, rho):
    """The returned value as torch ops of (C, a, b, f, g): POT's <P, C> ("primal") or the dual
    (<a, f> + <b, g>; with KL marginals GeomLoss's (rho + eps/2) <a, 1 - exp(-f/rho)> + ...)."""
    z = torch.zeros((), dtype=C.dtype, device=C.device)
    if kind == "primal":
        P = torch.exp(log_plan(C, A, Bw, f, g, eps))
        return torch.where(P == 0, z, P * C).sum((1, 2))  # 0 * inf is 0 here; a NaN plan stays NaN
    fz, gz = torch.where(A > 0, f, z), torch.where(Bw > 0, g, z)
    if rho is None:
        # <a, f> + <b, g> - eps (sum P - sum a sum b): the last term is 0 for probability vectors
        # at the fixed point, but masses that differ by one rounding (float32 inputs) put
        # eps * 1e-8 there (eps = 1e8: -5.5 for 0.49). (f + t, g - t) is the same solution and
        # changes the linear part by t (sum a - sum b): evaluated in the gauge <a, f> ~ <b, g>,
        # not POT's (f ~ eps log n, g ~ -eps log n).
        with torch.no_grad():
            t = 0.5 * ((A * fz).sum(1) / A.sum(1) - (Bw * gz).sum(1) / Bw.sum(1))
        mass = torch.exp(log_plan(C, A, Bw, f, g, eps)).sum((1, 2))
        return ((A * (fz - t[:, None])).sum(1) + (Bw * (gz + t[:, None])).sum(1)
                - eps * (mass - A.sum(1) * Bw.sum(1)))
    # expm1: 1 - exp(-f/rho) is all rounding once f << rho (reach = 1e4 returned 0)
    return (rho + eps / 2) * ((A * -torch.expm1(-fz / rho)).sum(1) + (Bw * -torch.expm1(-gz / rho)).sum(1))


def _envelope_grads(kind, C, A, Bw, f, g, eps, rho):
    """Envelope-theorem gradients: dL/dC = P; dL/da, dL/db from the potentials (the exact
    derivatives of the dual value at the fixed point; for the primal value, those of the
    entropic objective)."""
    P = torch.exp(log_plan(C, A, Bw, f, g, eps))
    if kind == "primal":
        z = torch.zeros((), dtype=C.dtype, device=C.device)
        return P, torch.where(A > 0, f, z), torch.where(Bw > 0, g, z)
    if rho is None:
        # partial derivatives of the dual above (-eps (P 1 / a - sum b) vanishes at a fixed point
        # with unit masses: then dL/da = f)
        Qa = torch.exp(log_plan(C, torch.ones_like(A), Bw, f, g, eps)).sum(2)
        Qb = torch.exp(log_plan(C, A, torch.ones_like(Bw), f, g, eps)).sum(1)
        return (P, f - eps * (Qa - Bw.sum(1, keepdim=True)), g - eps * (Qb - A.sum(1, keepdim=True)))
    return (P, (rho + eps) * -torch.expm1(-f / rho) - eps / 2, (rho + eps) * -torch.expm1(-g / rho) - eps / 2)


class _EnvelopeFn(backends.Function):
    """The value with the envelope gradient. With create_graph=True the gradient is rebuilt in
    torch ops from potentials differentiated implicitly (ImplicitPotentials), so second
    derivatives are the exact derivatives of that gradient, never a detached constant."""

    @staticmethod
    def forward(ctx, C, A, Bw, loss, f, g, kind, eps, rho):
        ctx.save_for_backward(C, A, Bw, f, g)
        ctx.kind, ctx.eps, ctx.rho = kind, eps, rho
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, gl):
        C, A, Bw, f, g = ctx.saved_tensors
        kind, eps, rho = ctx.kind, ctx.eps, ctx.rho
        dt = C.dtype
        if torch.is_grad_enabled():
            f_, g_ = differentiable_potentials(C, A, Bw, f.to(dt), g.to(dt), eps, rho, rho)
            C_, A_, B_ = C, A, Bw
        else:
            wd = f.dtype  # the dtype the loop ran in (float64 for a wide eps)
            C_, A_, B_, f_, g_ = C.to(wd), A.to(wd), Bw.to(wd), f, g
        gC, gA, gB = _envelope_grads(kind, C_, A_, B_, f_, g_, eps, rho)
        return (gl[:, None, None] * gC.to(dt) if ctx.needs_input_grad[0] else None,
                gl[:, None] * gA.to(dt) if ctx.needs_input_grad[1] else None,
                gl[:, None] * gB.to(dt) if ctx.needs_input_grad[2] else None,
                None, None, None, None, None, None)


GRADS = ("autodiff", "envelope")


def _dense_value(kind, Cb, A, Bw, eps, rho, max_iter, tol, grad, f0=None):
    """(value (B,), f, g, n_iter, err, work) with the gradient mode `grad` attached to value."""
    f, g, n_iter, err, work = _solve(Cb, A, Bw, eps, rho, max_iter, tol, f0)
    Cw, Aw, Bww = work
    with torch.no_grad():
        if kind == "primal":
            loss, _ = ops.ot_dense_plan(Cw, _log_w(Aw).contiguous(), _log_w(Bww).contiguous(), f, g, eps, False)
        else:
            loss = _value(kind, Cw, Aw, Bww, f, g, eps, rho)
    loss = loss.to(Cb.dtype)
    needs = torch.is_grad_enabled() and any(t.requires_grad for t in (Cb, A, Bw))
    if needs:
        if grad == "autodiff":
            wd = Cw.dtype
            C_, A_, B_ = Cb.to(wd), A.to(wd), Bw.to(wd)
            f_, g_ = differentiable_potentials(C_, A_, B_, f, g, eps, rho, rho)
            v = _value(kind, C_, A_, B_, f_, g_, eps, rho).to(Cb.dtype)
            loss = loss + (v - v.detach())  # the solver's value, the derivative of the torch expression
        else:
            loss = _EnvelopeFn.apply(Cb, A, Bw, loss, f, g, kind, eps, rho)
    return loss, f.to(Cb.dtype), g.to(Cb.dtype), n_iter, err.to(Cb.dtype), work


def _check_common(eps, reach, max_iter, tol, names=("eps", "reach", "max_iter", "tol")):
    V.scalar(names[0], eps, positive=True, allow_tensor=False)
    if reach is not None:
        V.scalar(names[1], reach, positive=True, allow_tensor=False)
    if not _pot_io.is_int(max_iter) or max_iter < 1:
        raise ValueError(f"{names[2]} must be a positive int, got {max_iter!r}")
    V.scalar(names[3], tol, minimum=0.0, allow_tensor=False)


def _check_grad(grad):
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS} (POT's ot.solve names), got {grad!r}")


@backends.takes_backend
def sinkhorn_dense(C, a=None, b=None, *, eps, reach=None, max_iter=1000, tol=1e-6, grad="envelope",
                   backend="auto"):
    """Entropic OT on a dense cost C (n, m) or (B, n, m), marginals a, b (uniform if None; lists
    and numpy arrays accepted, numpy in -> numpy fields out).

    reach: KL marginal penalty rho = reach (the cost is given, so no power is applied).
    Returns SinkhornResult(loss = <a, f> + <b, g> (balanced; GeomLoss's value formula when
    unbalanced), f, g, n_iter, marginal_error = |P^T 1 - b|_2); loss is differentiable wrt C, a, b.
    grad="envelope" (default): dL/dC = P, dL/da = f, dL/db = g -- for this dual value the
    envelope theorem gives its exact gradient at the fixed point. grad="autodiff": the same
    derivative through implicit differentiation of the fixed point (costs a dense solve).
    Both are twice differentiable (create_graph=True).
    """
    _check_common(eps, reach, max_iter, tol)
    _check_grad(grad)
    numpy_out = _pot_io.numpy_mode(C, a, b)
    Cb, A, Bw, batched = _prep_dense(C, a, b)
    rho = None if reach is None else float(reach)
    loss, f, g, n_iter, err, _ = _dense_value("dual", Cb, A, Bw, float(eps), rho, int(max_iter), float(tol), grad)
    if not batched:
        loss, f, g = loss[0], f[0], g[0]
    res = SinkhornResult(loss, f, g, n_iter, err, float(eps), 0, rho, rho, A, Bw)
    if numpy_out:
        res = res._replace(**{k: _pot_io.to_numpy(getattr(res, k)) for k in
                              ("loss", "f", "g", "n_iter", "marginal_error", "a", "b")})
    return res


METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized")


def _pot_args(a, b, M, reg, method, numItermax, stopThr, warmstart):
    """POT argument handling shared by sinkhorn2 / sinkhorn_plan: returns Cb, A, Bw, batched,
    n_hists (0: one histogram), numpy_out, f0."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (hotpath runs every one as the log-domain loop), "
                         f"got {method!r}")
    _check_common(reg, None, numItermax, stopThr, names=("reg", "reach", "numItermax", "stopThr"))
    numpy_out = _pot_io.numpy_mode(a, b, M)
    dev = _pot_io.first_device(a, b, M)
    M_ = _pot_io.as_tensor("M", M, device=dev)
    b_ = _pot_io.as_tensor("b", b, device=dev, empty_is_none=True)
    n_hists = 0
    if isinstance(M_, torch.Tensor) and M_.dim() == 2 and isinstance(b_, torch.Tensor) and b_.dim() == 2:
        # POT's multiple histograms: b (m, n_hists), one problem per column, same a and M
        if b_.shape[0] != M_.shape[1]:
            raise ValueError(f"b must have shape ({M_.shape[1]}, n_hists) to match M {tuple(M_.shape)}, "
                             f"got {tuple(b_.shape)}")
        n_hists = b_.shape[1]
        M_ = M_.expand(n_hists, -1, -1)
        b_ = b_.transpose(0, 1)
        a = _pot_io.as_tensor("a", a, device=dev, empty_is_none=True)
        if isinstance(a, torch.Tensor) and a.dim() == 1:
            a = a.expand(n_hists, -1)
    Cb, A, Bw, batched = _prep_dense(M_, a, b_, names=("M", "a", "b"))
    f0 = None
    if warmstart is not None:
        # POT's warmstart = (log u, log v), P = exp(log u + (-M / reg) + log v): f = reg (log u - log a)
        lu = _pot_io.as_tensor("warmstart", warmstart[0], device=dev)
        lu = lu.to(Cb.dtype).reshape(A.shape[1], -1).transpose(0, 1) if n_hists else lu.to(Cb.dtype).reshape(A.shape)
        f0 = torch.where(A > 0, float(reg) * (lu - _log_w(A)), torch.zeros((), dtype=Cb.dtype))
    return Cb, A, Bw, batched, n_hists, numpy_out, f0


def _pot_log(method, f, g, A, Bw, reg, n_iter, err, batched, n_hists):
    log_u = torch.where(A > 0, _log_w(A) + f / reg, -math.inf)
    log_v = torch.where(Bw > 0, _log_w(Bw) + g / reg, -math.inf)
    if n_hists:
        log_u, log_v = log_u.transpose(0, 1), log_v.transpose(0, 1)
    elif not batched:
        log_u, log_v = log_u[0], log_v[0]
    out = {}
    if not n_hists:
        # POT keeps every checked error; hotpath's loop reports the last one (at niter)
        out["err"] = [e for e in (err if batched else err[:1])]
        niter = n_iter - 1
        out["niter"] = int(niter[0]) if not batched else niter
    if method != "sinkhorn" or n_hists:
        out["log_u"], out["log_v"] = log_u, log_v
    out["u"], out["v"] = torch.exp(log_u), torch.exp(log_v)
    return out


def _pot_warn(n_iter, err, numItermax, stopThr, warn, verbose):
    if verbose:
        print("{:5s}|{:12s}".format("It.", "Err") + "\n" + "-" * 19)
        for k, e in zip(n_iter.tolist(), err.tolist()):
            print("{:5d}|{:8e}|".format(k - 1, e))
    if warn and bool(((n_iter >= numItermax) & ~(err < stopThr)).any()):
        warnings.warn("Sinkhorn did not converge. You might want to increase the number of iterations "
                      "`numItermax` or the regularization parameter `reg`.", UserWarning, stacklevel=4)


@backends.takes_backend
def sinkhorn2(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
              warn=False, warmstart=None, *, grad="autodiff", backend="auto"):
    """POT's ot.sinkhorn2: the value <P, M> of the entropic plan, POT's signature and defaults.

    a (n,) / b (m,) (empty or None: uniform; lists and numpy arrays accepted: numpy in -> numpy
    out); b (m, n_hists): one value per histogram (POT's multiple-histograms form); batched
    extension: M (B, n, m) with a (B, n), b (B, m) -> (B,). Same iterations and stopping rule as
    POT (column marginal error every 10 iterations); every `method` runs the log-domain loop.
    log=True returns (value, log) with POT's keys ('err', 'niter', 'log_u' / 'log_v' for
    sinkhorn_log, 'u', 'v'); warn=True warns when numItermax is reached before stopThr.
    grad="autodiff" (default): the exact gradient of the returned value (implicit
    differentiation of the fixed point; matches POT's autograd at convergence). grad="envelope":
    the plan P as dL/dM and the potentials for a, b (the gradient of the entropic objective, as
    POT's ot.solve(grad="envelope")), cheaper but not the derivative of <P, M>.
    """
    _check_grad(grad)
    Cb, A, Bw, batched, n_hists, numpy_out, f0 = _pot_args(a, b, M, reg, method, numItermax, stopThr,
                                                           warmstart)
    loss, f, g, n_iter, err, _ = _dense_value("primal", Cb, A, Bw, float(reg), None, int(numItermax),
                                              float(stopThr), grad, f0)
    _pot_warn(n_iter, err, numItermax, stopThr, warn and not n_hists, verbose)
    out = loss if (batched or n_hists) else loss[0]
    if log:
        out = (out, _pot_log(method.lower(), f, g, A, Bw, float(reg), n_iter, err, batched and not n_hists, n_hists))
    return _pot_io.to_numpy(out) if numpy_out else out


@backends.takes_backend
def sinkhorn_plan(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False,
                  warn=True, warmstart=None, *, backend="auto"):
    """POT's ot.sinkhorn(a, b, M, reg, ...): the entropic plan P (n, m) (batched: (B, n, m)).

    hp.ot.sinkhorn is the point-cloud solver, so POT's plan-returning function lives here under
    this name; arguments, defaults, numpy in -> numpy out and the log dict as sinkhorn2. P is
    differentiable wrt M, a, b (implicit differentiation of the fixed point: exact). With b of
    shape (m, n_hists) it returns the n_hists values, as POT's ot.sinkhorn does.
    """
    Cb, A, Bw, batched, n_hists, numpy_out, f0 = _pot_args(a, b, M, reg, method, numItermax, stopThr,
                                                           warmstart)
    if n_hists:
        # POT's ot.sinkhorn with b (m, n_hists) returns the n_hists values <P_k, M>, not plans
        return sinkhorn2(a, b, M, reg, method, numItermax, stopThr, verbose, log, warn, warmstart)
    eps = float(reg)
    f, g, n_iter, err, work = _solve(Cb, A, Bw, eps, None, int(numItermax), float(stopThr), f0)
    _pot_warn(n_iter, err, numItermax, stopThr, warn, verbose)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (Cb, A, Bw)):
        wd = work[0].dtype
        C_, A_, B_ = Cb.to(wd), A.to(wd), Bw.to(wd)
        f_, g_ = differentiable_potentials(C_, A_, B_, f, g, eps)
        P = torch.exp(log_plan(C_, A_, B_, f_, g_, eps)).to(Cb.dtype)
    else:
        Cw, Aw, Bww = work
        _, P = ops.ot_dense_plan(Cw, _log_w(Aw).contiguous(), _log_w(Bww).contiguous(), f, g, eps, True)
        P = P.to(Cb.dtype)
    out = P if batched else P[0]
    if log:
        out = (out, _pot_log(method.lower(), f.to(Cb.dtype), g.to(Cb.dtype), A, Bw, eps, n_iter, err.to(Cb.dtype),
                             batched, 0))
    return _pot_io.to_numpy(out) if numpy_out else out
