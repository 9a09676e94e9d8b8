"""Triton kernels of the optimal transport family.

softmin_dense: f_i = -eps * LSE_j[h_j - C_ij / eps] over the rows (dim=2) or the columns (dim=1,
    the same kernel on transposed strides) of a dense (B, n, m) cost; online max / sum over
    column tiles, one program per (problem, row tile).
softmin_points: the same over point clouds with C = |x - y| (p=1) or |x - y|^2 / 2 (p=2),
    computed on the fly (never stored), plus U_i = sum_j S_ij dC_ij/dx_i for the gradient.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _softmin_dense_kernel(C, H, OUT, n, m, s_cb, s_cr, s_cc, s_hb, s_ob, inv_eps, neg_eps,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pb = tl.program_id(0)
    pr = tl.program_id(1)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    mx = tl.full((BLOCK_R,), float("-inf"), tl.float32 if C.dtype.element_ty == tl.float32 else tl.float64)
    sm = tl.zeros((BLOCK_R,), mx.dtype)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        c = tl.load(C + pb * s_cb + rows[:, None] * s_cr + cols[None, :] * s_cc,
                    mask=rmask[:, None] & cmask[None, :], other=0.0)
        h = tl.load(H + pb * s_hb + cols, mask=cmask, other=float("-inf"))
        s = h[None, :] - c * inv_eps
        s = tl.where(cmask[None, :], s, float("-inf"))
        tmax = tl.max(s, 1)
        new = tl.maximum(mx, tmax)
        safe = tl.where(new == float("-inf"), 0.0, new)
        sm = sm * tl.exp(mx - safe) + tl.sum(tl.exp(s - safe[:, None]), 1)
        mx = new
    lse = tl.where(mx == float("-inf"), float("-inf"), mx + tl.log(tl.where(sm > 0, sm, 1.0)))
    tl.store(OUT + pb * s_ob + rows, neg_eps * lse, mask=rmask)


def softmin_dense(C, h, eps, dim):
    B, n, m = C.shape
    C = C.contiguous()
    h = h.contiguous()
    if dim == 2:
        R, M, sr, sc = n, m, C.stride(1), C.stride(2)
    else:  # columns: the same kernel on the transposed view
        R, M, sr, sc = m, n, C.stride(2), C.stride(1)
    out = torch.empty(B, R, dtype=C.dtype, device=C.device)
    BR, BC = 32, 64
    grid = (B, triton.cdiv(max(R, 1), BR))
    if R > 0:
        _softmin_dense_kernel[grid](C, h, out, R, M, C.stride(0), sr, sc, h.stride(0), out.stride(0),
                                    1.0 / eps, -eps, BLOCK_R=BR, BLOCK_C=BC)
    return out


@triton.jit
def _softmin_points_kernel(X, Y, H, F, U, n, m, d, inv_eps, neg_eps,
                           P: tl.constexpr, WANT: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pb = tl.program_id(0)
    pr = tl.program_id(1)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    ks = tl.arange(0, BLOCK_D)
    kmask = ks < d
    x = tl.load(X + pb * n * d + rows[:, None] * d + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
    dt = x.dtype
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    sw = tl.zeros((BLOCK_R,), dt)
    swy = tl.zeros((BLOCK_R, BLOCK_D), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        y = tl.load(Y + pb * m * d + cols[:, None] * d + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        diff = x[:, None, :] - y[None, :, :]                      # (R, C, D)
        d2 = tl.sum(diff * diff, 2)
        if P == 1:
            cost = tl.sqrt(d2)
        else:
            cost = 0.5 * d2
        h = tl.load(H + pb * m + cols, mask=cmask, other=float("-inf"))
        s = tl.where(cmask[None, :], h[None, :] - cost * inv_eps, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(new == float("-inf"), 0.0, new)
        alpha = tl.exp(mx - safe)
        e = tl.exp(s - safe[:, None])
        sm = sm * alpha + tl.sum(e, 1)
        if WANT:
            if P == 1:
                w = tl.where(cost > 0, e / tl.where(cost > 0, cost, 1.0), 0.0)
            else:
                w = e
            sw = sw * alpha + tl.sum(w, 1)
            swy = swy * alpha[:, None] + tl.sum(w[:, :, None] * y[None, :, :], 1)
        mx = new
    lse = tl.where(mx == float("-inf"), float("-inf"), mx + tl.log(tl.where(sm > 0, sm, 1.0)))
    tl.store(F + pb * n + rows, neg_eps * lse, mask=rmask)
    if WANT:
        ok = mx > float("-inf")
        u = tl.where(ok[:, None], (x * sw[:, None] - swy) / tl.where(ok, sm, 1.0)[:, None], 0.0)
        tl.store(U + pb * n * d + rows[:, None] * d + ks[None, :], u, mask=rmask[:, None] & kmask[None, :])


def softmin_points(x, y, h, eps, p, want_grad):
    B, n, d = x.shape
    m = y.shape[1]
    x, y, h = x.contiguous(), y.contiguous(), h.contiguous()
    f = torch.empty(B, n, dtype=x.dtype, device=x.device)
    U = torch.empty(B, n, d, dtype=x.dtype, device=x.device) if want_grad else x.new_zeros(0)
    BD = max(triton.next_power_of_2(max(d, 1)), 2)
    BR, BC = 16, 32
    if n > 0:
        _softmin_points_kernel[(B, triton.cdiv(n, BR))](x, y, h, f, U if want_grad else f, n, m, d, 1.0 / eps, -eps,
                                                        P=p, WANT=want_grad, BLOCK_R=BR, BLOCK_C=BC, BLOCK_D=BD)
    return f, U
