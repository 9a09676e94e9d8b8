"""Reference (pure torch, dense, log-domain) for the optimal transport kernels.

Materializes the (B, n, m) cost matrix freely; works in any float dtype (tests use float64).
Every custom op in hotpath/_ops/ot.py has its reference here:

- softmin_dense:   f_i = -eps * LSE_j[ h_j - C_ij / eps ]      (rows of C, or its columns)
- softmin_points:  the same with C_ij = |x_i - y_j|^p / (p == 2 ? 2 : 1), plus the
                   softmax-weighted "cost gradient" U_i = sum_j S_ij dC_ij/dx_i
- sinkhorn_alternating: POT-style alternating log-domain Sinkhorn on a dense cost
- sinkhorn_symmetric:   GeomLoss-style symmetric loop (epsilon schedule) on dense costs
"""
import math

import torch


def cost_matrix(x, y, p):
    """C[b, i, j] = |x_i - y_j|^2 / 2 (p=2) or |x_i - y_j| (p=1), computed from differences."""
    d2 = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    return d2 / 2 if p == 2 else d2.sqrt()


def _lse(s, dim):
    # logsumexp that returns -inf (not NaN) for an all -inf slice
    mx = s.amax(dim=dim, keepdim=True) if s.shape[dim] > 0 else None
    if mx is None:
        return s.new_full(s.sum(dim).shape, -math.inf)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    return (s - mx).exp().sum(dim).log() + mx.squeeze(dim)


def softmin_dense(C, h, eps, dim=2):
    """dim=2: f_i = -eps LSE_j[h_j - C_ij/eps] (h: (B, m)); dim=1: g_j = -eps LSE_i[h_i - C_ij/eps]."""
    if dim == 2:
        s = h[:, None, :] - C / eps
    else:
        s = h[:, :, None] - C / eps
    return -eps * _lse(s, dim)


def softmin_points(x, y, h, eps, p, want_grad=False):
    """Softmin over the point-cloud cost; with want_grad also U_i = sum_j S_ij dC(x_i, y_j)/dx_i,
    S the row softmax of h_j - C_ij/eps (dC/dx = x - y for p=2, (x - y)/|x - y| for p=1, 0 at 0)."""
    C = cost_matrix(x, y, p)
    s = h[:, None, :] - C / eps
    lse = _lse(s, 2)
    f = -eps * lse
    if not want_grad:
        return f, None
    # a row with no finite score weighs nothing (an all -inf row: zero weights); NaN propagates
    inf = torch.isinf(lse)
    S = torch.where(inf[..., None], 0.0, (s - torch.where(inf, 0.0, lse)[..., None]).exp())
    diff = x[:, :, None, :] - y[:, None, :, :]
    if p == 1:
        dist = C[..., None]
        # the subgradient 0 at coincident points; diff * 0 keeps a NaN coordinate NaN
        diff = torch.where(dist > 0, diff / torch.where(dist > 0, dist, 1.0), diff * 0.0)
    U = (S[..., None] * diff).sum(2)
    return f, U


def sinkhorn_alternating(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol, check_every, f0):
    """POT ordering: g then f each iteration; marginal error |sum_i P_ij - b_j|_2 checked every
    check_every iterations (at iterations 0, k, 2k, ...), stop per problem when < tol.
    Returns f, g, n_iter (B,), err (B,)."""
    B, n, m = C.shape
    dx = 1.0 if rho_x is None else 1.0 / (1.0 + eps / rho_x)
    dy = 1.0 if rho_y is None else 1.0 / (1.0 + eps / rho_y)
    f = f0.clone()
    g = torch.zeros_like(b_log)
    n_iter = torch.zeros(B, dtype=torch.int64, device=C.device)
    err = torch.full((B,), math.inf, dtype=C.dtype, device=C.device)
    active = torch.ones(B, dtype=torch.bool, device=C.device)
    for it in range(max_iter):
        g_new = dy * softmin_dense(C, a_log + f / eps, eps, dim=1)
        f_new = dx * softmin_dense(C, b_log + g_new / eps, eps, dim=2)
        g = torch.where(active[:, None], g_new, g)
        f = torch.where(active[:, None], f_new, f)
        n_iter = n_iter + active.long()
        if it % check_every == 0:
            logP = a_log[:, :, None] + b_log[:, None, :] + (f[:, :, None] + g[:, None, :] - C) / eps
            colm = logP.exp().sum(1)
            e = torch.linalg.vector_norm(colm - b_log.exp(), dim=1)
            err = torch.where(active, e, err)
            active = active & ~(e < tol)
            if not bool(active.any()):
                break
    return f, g, n_iter, err


def dense_plan(C, a_log, b_log, f, g, eps):
    """P_ij = exp(a_log_i + b_log_j + (f_i + g_j - C_ij)/eps) (B, n, m) and <P, C> (B,)."""
    P = torch.exp(a_log[:, :, None] + b_log[:, None, :] + (f[:, :, None] + g[:, None, :] - C) / eps)
    return (P * C).sum((1, 2)), P


def sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps_list, rho_x, rho_y, debias, tol=0.0, check_every=1):
    """GeomLoss's symmetric loop over dense costs (init at eps_list[0], one averaged update per
    eps in eps_list). With tol > 0 a problem stops once the sup-norm change of (f_ba, g_ab) in one
    iteration is below tol (checked every check_every iterations). Returns f_ba, g_ab, f_aa, g_bb
    (empty tensors for the debias terms if off), n_iter; the final extrapolation is the caller's."""
    def damp(eps, rho):
        return 1.0 if rho is None else 1.0 / (1.0 + eps / rho)

    B = Cxy.shape[0]
    eps = eps_list[0]
    dx, dy = damp(eps, rho_x), damp(eps, rho_y)
    g_ab = dy * softmin_dense(Cxy, a_log, eps, dim=1)
    f_ba = dx * softmin_dense(Cxy, b_log, eps, dim=2)
    if debias:
        f_aa = dx * softmin_dense(Cxx, a_log, eps, dim=2)
        g_bb = dy * softmin_dense(Cyy, b_log, eps, dim=2)
    active = torch.ones(B, dtype=torch.bool, device=Cxy.device)
    n_iter = torch.zeros(B, dtype=torch.int64, device=Cxy.device)
    for k, eps in enumerate(eps_list):
        dx, dy = damp(eps, rho_x), damp(eps, rho_y)
        ft_ba = dx * softmin_dense(Cxy, b_log + g_ab / eps, eps, dim=2)
        gt_ab = dy * softmin_dense(Cxy, a_log + f_ba / eps, eps, dim=1)
        nf, ng = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
        zero = torch.zeros((), dtype=nf.dtype, device=nf.device)
        change = torch.maximum(torch.where(torch.isfinite(a_log), (nf - f_ba).abs(), zero).amax(1)
                               if nf.shape[1] else zero.expand(B),
                               torch.where(torch.isfinite(b_log), (ng - g_ab).abs(), zero).amax(1)
                               if ng.shape[1] else zero.expand(B))
        f_ba = torch.where(active[:, None], nf, f_ba)
        g_ab = torch.where(active[:, None], ng, g_ab)
        if debias:
            ft_aa = dx * softmin_dense(Cxx, a_log + f_aa / eps, eps, dim=2)
            gt_bb = dy * softmin_dense(Cyy, b_log + g_bb / eps, eps, dim=2)
            f_aa = torch.where(active[:, None], 0.5 * (f_aa + ft_aa), f_aa)
            g_bb = torch.where(active[:, None], 0.5 * (g_bb + gt_bb), g_bb)
        n_iter = n_iter + active.long()
        if tol > 0 and (k + 1) % check_every == 0:
            active = active & (change >= tol)  # NaN compares False: stops, never hangs
            if not bool(active.any()):
                break
    if not debias:
        f_aa, g_bb = a_log.new_zeros(0), b_log.new_zeros(0)
    return f_ba, g_ab, f_aa, g_bb, n_iter
