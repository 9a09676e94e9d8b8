"""Triton kernels of the optimal transport family.

softmin_dense: f_i = -eps * LSE_j[h_j - C_ij / eps] over the rows (dim=2) or the columns (dim=1,
    the same kernel on transposed strides) of a dense (B, n, m) cost; online max / sum in base 2
    over column tiles, one program per (problem, row tile).
softmin_points: the same over point clouds with C = |x - y| (p=1) or |x - y|^2 / 2 (p=2),
    computed on the fly (never stored), plus U_i = sum_j S_ij dC_ij/dx_i for the gradient.
sinkhorn_alternating: POT-order log-domain Sinkhorn on a dense cost. Each iteration is two
    launches of _sinkhorn_half_kernel (g from f over the columns, then f from g over the rows),
    which build h = log-weights + potential / eps on the fly and skip converged problems through
    a device-side `active` flag; the marginal error is formed on device every check_every
    iterations and read by the host only then (no host sync in between).
"""
import math

import torch
import triton
import triton.language as tl

from .pairwise import LOG2E, _scal, interpreting, split

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _softmin_dense_kernel(C, H, OUT, n, m, s_cb, s_cr, s_cc, s_hb, s_ob, i_hi, i_lo, e_hi, e_lo,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT = -eps ln2 * LSE2_j[h_j log2(e) - C_ij log2(e) / eps] (i_* carry log2(e) / eps)."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
    inv2 = _scal(i_hi, i_lo, dt)
    neg_eps = _scal(e_hi, e_lo, dt)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        c = tl.load(C + pb * s_cb + rows[:, None] * s_cr + cols[None, :] * s_cc,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(dt)
        h = tl.load(H + pb * s_hb + cols, mask=cmask, other=float("-inf")).to(dt) * _LOG2E
        s = tl.where(cmask[None, :], h[None, :] - c * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        sm = sm * tl.math.exp2(mx - safe) + tl.sum(tl.math.exp2(s - safe[:, None]), 1)
        mx = new
    empty = sm == 0
    lse = tl.where(empty, float("-inf"), (mx + tl.log2(tl.where(empty, 1.0, sm))) * _LN2)
    tl.store(OUT + pb * s_ob + rows, neg_eps * lse, mask=rmask)


def _dense_blocks(C):
    if interpreting():
        return 16, 16, {}
    # 64 x 128 tiles of C: the loop is bandwidth-bound, nothing is staged in shared memory
    return 64, 128, {"num_warps": 8}


def softmin_dense(C, h, eps, dim):
    B, n, m = C.shape
    C = C.contiguous()
    h = h.contiguous()
    if dim == 2:
        R, M, sr, sc = n, m, C.stride(1), C.stride(2)
    else:  # columns: the same kernel on the transposed view
        R, M, sr, sc = m, n, C.stride(2), C.stride(1)
    out = torch.empty(B, R, dtype=C.dtype, device=C.device)
    BR, BC, opts = _dense_blocks(C)
    if R > 0 and B > 0:
        i_hi, i_lo = split(LOG2E / eps)
        e_hi, e_lo = split(-eps)
        _softmin_dense_kernel[(B, triton.cdiv(R, BR))](C, h, out, R, M, C.stride(0), sr, sc, h.stride(0),
                                                       out.stride(0), i_hi, i_lo, e_hi, e_lo,
                                                       BLOCK_R=BR, BLOCK_C=BC, **opts)
    return out


@triton.jit
def _softmin_points_kernel(X, Y, H, F, U, n, m, d, i_hi, i_lo, e_hi, e_lo,
                           P: tl.constexpr, WANT: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    ks = tl.arange(0, BLOCK_D)
    kmask = ks < d
    x = tl.load(X + pb * n * d + rows[:, None] * d + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    x = x.to(dt)
    inv2 = _scal(i_hi, i_lo, dt)   # log2(e) / eps
    neg_eps = _scal(e_hi, e_lo, dt)
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    sw = tl.zeros((BLOCK_R,), dt)
    swy = tl.zeros((BLOCK_R, BLOCK_D), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        y = tl.load(Y + pb * m * d + cols[:, None] * d + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0).to(dt)
        diff = x[:, None, :] - y[None, :, :]                      # (R, C, D): from differences, exact
        d2 = tl.sum(diff * diff, 2)
        if P == 1:
            cost = tl.sqrt(d2)
        else:
            cost = 0.5 * d2
        h = tl.load(H + pb * m + cols, mask=cmask, other=float("-inf")).to(dt) * _LOG2E
        s = tl.where(cmask[None, :], h[None, :] - cost * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        alpha = tl.math.exp2(mx - safe)
        e = tl.math.exp2(s - safe[:, None])
        sm = sm * alpha + tl.sum(e, 1)
        if WANT:
            if P == 1:
                w = tl.where(cost > 0, e / tl.where(cost > 0, cost, 1.0), 0.0)
            else:
                w = e
            sw = sw * alpha + tl.sum(w, 1)
            swy = swy * alpha[:, None] + tl.sum(w[:, :, None] * y[None, :, :], 1)
        mx = new
    empty = sm == 0
    lse = tl.where(empty, float("-inf"), (mx + tl.log2(tl.where(empty, 1.0, sm))) * _LN2)
    tl.store(F + pb * n + rows, neg_eps * lse, mask=rmask)
    if WANT:
        ok = (mx > float("-inf")) & (mx < float("inf"))
        u = tl.where(ok[:, None], (x * sw[:, None] - swy) / tl.where(ok, sm, 1.0)[:, None], 0.0)
        tl.store(U + pb * n * d + rows[:, None] * d + ks[None, :], u, mask=rmask[:, None] & kmask[None, :])


def softmin_points(x, y, h, eps, p, want_grad):
    B, n, d = x.shape
    m = y.shape[1]
    x, y, h = x.contiguous(), y.contiguous(), h.contiguous()
    f = torch.empty(B, n, dtype=x.dtype, device=x.device)
    U = torch.empty(B, n, d, dtype=x.dtype, device=x.device) if want_grad else x.new_zeros(0)
    BD = max(triton.next_power_of_2(max(d, 1)), 2)
    if interpreting():
        BR, BC, opts = 16, 16, {}
    else:
        # the (rows, cols, d) difference tile lives in registers: keep BR * BC * BD near 16K
        BR = 64 if BD <= 4 else 32
        BC = max(16, min(128, 16384 // (BR * BD)))
        opts = {"num_warps": 8 if BR * BC >= 4096 else 4}
    if n > 0 and B > 0:
        i_hi, i_lo = split(LOG2E / eps)
        e_hi, e_lo = split(-eps)
        _softmin_points_kernel[(B, triton.cdiv(n, BR))](x, y, h, f, U if want_grad else f, n, m, d,
                                                        i_hi, i_lo, e_hi, e_lo, P=p, WANT=want_grad,
                                                        BLOCK_R=BR, BLOCK_C=BC, BLOCK_D=BD, **opts)
    return f, U


# -- dense alternating Sinkhorn (POT order) ------------------------------------------------------------

@triton.jit
def _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """LSE2_c[(LW_c + P_c / eps - C_rc / eps) log2(e)] for the rows `rows` of problem pb."""
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        c = tl.load(C + pb * s_cb + rows[:, None] * s_cr + cols[None, :] * s_cc,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(dt)
        lw = tl.load(LW + pb * s_lw + cols, mask=cmask, other=float("-inf")).to(dt)
        pot = tl.load(P + pb * s_p + cols, mask=cmask, other=0.0).to(dt)
        h = lw * _LOG2E + pot * inv2   # once per column, in base 2
        s = tl.where(cmask[None, :], h[None, :] - c * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        sm = sm * tl.math.exp2(mx - safe) + tl.sum(tl.math.exp2(s - safe[:, None]), 1)
        mx = new
    empty = sm == 0
    return tl.where(empty, float("-inf"), mx + tl.log2(tl.where(empty, 1.0, sm)))


@triton.jit(do_not_specialize=["it1"])
def _sinkhorn_half_kernel(C, LW, P, OUT, ACT, NIT, n, m, s_cb, s_cr, s_cc, s_lw, s_p, s_o,
                          i_hi, i_lo, e_hi, e_lo, dmp_hi, dmp_lo, it1,
                          COUNT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT_r = damp * -eps * LSE_c[LW_c + P_c / eps - C_rc / eps] for the problems whose ACT flag
    is set (P: the other side's potential, LW: its log-weights); converged problems are left as
    they are. COUNT: program 0 of each active problem records it1 (this iteration, counted from 1)
    as its iteration count: a plain store, no read-modify-write."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    act = tl.load(ACT + pb)
    if act != 0:
        dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
        inv2 = _scal(i_hi, i_lo, dt)       # log2(e) / eps
        neg_eps = _scal(e_hi, e_lo, dt)    # -eps
        damp = _scal(dmp_hi, dmp_lo, dt)
        rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < n
        lse2 = _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt, BLOCK_R, BLOCK_C)
        tl.store(OUT + pb * s_o + rows, damp * (neg_eps * _LN2 * lse2), mask=rmask)
        if COUNT:
            if pr == 0:
                tl.store(NIT + pb, tl.cast(it1, tl.int64))


@triton.jit
def _sinkhorn_gap_kernel(C, LW, P, LWO, PO, GAP, n, m, s_cb, s_cr, s_cc, s_lw, s_p, s_lwo, s_po, s_g,
                         i_hi, i_lo, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """GAP_r = (sum_c P_rc - exp(LWO_r))^2, the plan's marginal on this side against its weights:
    sum_c P_rc = exp(LWO_r + PO_r / eps + LSE_c[LW_c + P_c / eps - C_rc / eps])."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
    inv2 = _scal(i_hi, i_lo, dt)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    lse2 = _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt, BLOCK_R, BLOCK_C)
    lwo = tl.load(LWO + pb * s_lwo + rows, mask=rmask, other=float("-inf")).to(dt) * _LOG2E
    po = tl.load(PO + pb * s_po + rows, mask=rmask, other=0.0).to(dt)
    gap = tl.math.exp2(lwo + po * inv2 + lse2) - tl.math.exp2(lwo)
    tl.store(GAP + pb * s_g + rows, gap * gap, mask=rmask)


def sinkhorn_alternating(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol, check_every, f0):
    """The op hotpath::ot_sinkhorn_alternating (reference: reference/ot.py sinkhorn_alternating):
    g then f each iteration, the column-marginal error every check_every iterations (0, k, 2k,
    ...), a problem stops once its error is < tol; rho <= 0 is balanced. Returns (f, g, n_iter
    (B,) int64, err (B,)). The host reads the `active` flags only at a check."""
    B, n, m = C.shape
    C = C.contiguous()
    dt = C.dtype
    a_log, b_log = a_log.to(dt).contiguous(), b_log.to(dt).contiguous()
    f = f0.to(dt).clone().contiguous()
    g = torch.zeros_like(b_log)
    n_iter = torch.zeros(B, dtype=torch.int64, device=C.device)
    err = torch.full((B,), math.inf, dtype=dt, device=C.device)
    if B == 0 or max_iter <= 0:
        return f, g, n_iter, err
    dx = 1.0 if rho_x <= 0 else 1.0 / (1.0 + eps / rho_x)
    dy = 1.0 if rho_y <= 0 else 1.0 / (1.0 + eps / rho_y)
    active = torch.ones(B, dtype=torch.int32, device=C.device)
    gap = torch.empty(B, m, dtype=dt, device=C.device)
    BR, BC, opts = _dense_blocks(C)
    i_hi, i_lo = split(LOG2E / eps)
    e_hi, e_lo = split(-eps)
    dx_hi, dx_lo = split(dx)
    dy_hi, dy_lo = split(dy)
    sb, sn, sm_ = C.stride(0), C.stride(1), C.stride(2)
    grid_g, grid_f = (B, triton.cdiv(max(m, 1), BR)), (B, triton.cdiv(max(n, 1), BR))
    check_every = max(int(check_every), 1)
    for it in range(max_iter):
        if m > 0:   # g_j over the rows i of C (its transpose's rows), from f
            _sinkhorn_half_kernel[grid_g](C, a_log, f, g, active, n_iter, m, n, sb, sm_, sn, a_log.stride(0),
                                          f.stride(0), g.stride(0), i_hi, i_lo, e_hi, e_lo, dy_hi, dy_lo, it + 1,
                                          COUNT=n == 0, BLOCK_R=BR, BLOCK_C=BC, **opts)
        if n > 0:   # f_i over the columns j, from the new g
            _sinkhorn_half_kernel[grid_f](C, b_log, g, f, active, n_iter, n, m, sb, sn, sm_, b_log.stride(0),
                                          g.stride(0), f.stride(0), i_hi, i_lo, e_hi, e_lo, dx_hi, dx_lo, it + 1,
                                          COUNT=True, BLOCK_R=BR, BLOCK_C=BC, **opts)
        if n == 0 and m == 0:
            n_iter += active
        if it % check_every == 0:
            if m > 0:
                _sinkhorn_gap_kernel[grid_g](C, a_log, f, b_log, g, gap, m, n, sb, sm_, sn, a_log.stride(0),
                                             f.stride(0), b_log.stride(0), g.stride(0), gap.stride(0),
                                             i_hi, i_lo, BLOCK_R=BR, BLOCK_C=BC, **opts)
                e = gap.sum(1).sqrt()
            else:
                e = torch.zeros(B, dtype=dt, device=C.device)
            on = active.bool()
            err = torch.where(on, e, err)
            active = (on & ~(e < tol)).to(torch.int32)   # NaN compares False: stays active, as the reference
            if not bool(active.any()):   # the one host read, every check_every iterations
                break
    return f, g, n_iter, err
