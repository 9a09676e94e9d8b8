"""Triton kernels of the streaming pairwise engine (FlashAttention-style tiles).

score_ij = alpha * <r_i, c_j> + rowb_i + colb_j. The squared-Euclidean metric is expanded as
2s<x, y> - s|x|^2 - s|y|^2 (the caller centers the data first), so one tl.dot kernel serves both
metrics. The backward is two launches of one kernel, rows against columns and then columns
against rows, each recomputing its scores: no atomics, no n x m buffer.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _scores(R, C, rb_ptr, cb_ptr, offs_r, offs_c, n_r, n_c, d, alpha, s_rn, s_cn,
            HAS_RB: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32 if R.dtype.element_ty != tl.float64 else tl.float64)
    for d0 in range(0, d, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        r = tl.load(R + offs_r[:, None] * s_rn + offs_d[None, :],
                    mask=(offs_r[:, None] < n_r) & (offs_d[None, :] < d), other=0.0)
        c = tl.load(C + offs_c[:, None] * s_cn + offs_d[None, :],
                    mask=(offs_c[:, None] < n_c) & (offs_d[None, :] < d), other=0.0)
        acc += tl.dot(r, tl.trans(c), input_precision="ieee")
    cb = tl.load(cb_ptr + offs_c, mask=offs_c < n_c, other=-float("inf"))
    s = acc * alpha + cb[None, :]
    if HAS_RB:
        rb = tl.load(rb_ptr + offs_r, mask=offs_r < n_r, other=0.0)
        s += rb[:, None]
    return s


@triton.jit
def _lse_fwd_kernel(X, Y, RB, CB, Vv, LSE, OUT, n, m, d, k, alpha,
                    s_xb, s_xn, s_yb, s_yn, s_rbb, s_cbb, s_vb, s_vn, s_lb, s_ob, s_on,
                    HAS_RB: tl.constexpr, HAS_V: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    X += b * s_xb
    Y += b * s_yb
    RB += b * s_rbb
    CB += b * s_cbb
    Vv += b * s_vb
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    l_i = tl.zeros((BLOCK_M,), dtype=dt)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _scores(X, Y, RB, CB, offs_m, offs_n, n, m, d, alpha, s_xn, s_yn, HAS_RB, BLOCK_M, BLOCK_N, BLOCK_D)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        corr = tl.exp(m_i - m_safe)
        l_i = l_i * corr + tl.sum(p, 1)
        if HAS_V:
            v = tl.load(Vv + offs_n[:, None] * s_vn + offs_k[None, :],
                        mask=(offs_n[:, None] < m) & (offs_k[None, :] < k), other=0.0)
            acc = acc * corr[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    has = l_i > 0
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), -float("inf"))
    tl.store(LSE + b * s_lb + offs_m, lse, mask=offs_m < n)
    if HAS_V:
        out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
        tl.store(OUT + b * s_ob + offs_m[:, None] * s_on + offs_k[None, :], out,
                 mask=(offs_m[:, None] < n) & (offs_k[None, :] < k))


@triton.jit
def _softmax_bwd_kernel(R, C, RB, CB, RA, CA, RV, CV, ACC, RSUM, ACC2, n_r, n_c, d, k, alpha,
                        s_rb, s_rn, s_cb, s_cn, s_rbb, s_cbb, s_rab, s_cab, s_rvb, s_rvn, s_cvb, s_cvn,
                        s_accb, s_accn, s_rsb, s_a2b, s_a2n,
                        HAS_RB: tl.constexpr, HAS_RA: tl.constexpr, HAS_CA: tl.constexpr, HAS_V: tl.constexpr,
                        WANT_ACC2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """e = exp(score); dS = e * (ra_i + ca_j + <rv_i, cv_j>);
    acc_i = sum_j dS_ij c_j, rsum_i = sum_j dS_ij, acc2_i = sum_j e_ij cv_j."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    R += b * s_rb
    C += b * s_cb
    RB += b * s_rbb
    CB += b * s_cbb
    RA += b * s_rab
    CA += b * s_cab
    RV += b * s_rvb
    CV += b * s_cvb
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    offs_dp = tl.arange(0, D_PAD)
    dt = tl.float32 if R.dtype.element_ty != tl.float64 else tl.float64
    acc = tl.zeros((BLOCK_R, D_PAD), dtype=dt)
    rsum = tl.zeros((BLOCK_R,), dtype=dt)
    acc2 = tl.zeros((BLOCK_R, BLOCK_K), dtype=dt)
    ra = tl.zeros((BLOCK_R,), dtype=dt)
    if HAS_RA:
        ra = tl.load(RA + offs_r, mask=offs_r < n_r, other=0.0)
    if HAS_V:
        rv = tl.load(RV + offs_r[:, None] * s_rvn + offs_k[None, :],
                     mask=(offs_r[:, None] < n_r) & (offs_k[None, :] < k), other=0.0)
    for c0 in range(0, n_c, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        s = _scores(R, C, RB, CB, offs_r, offs_c, n_r, n_c, d, alpha, s_rn, s_cn, HAS_RB, BLOCK_R, BLOCK_C, BLOCK_D)
        e = tl.exp(s)
        w = tl.zeros((BLOCK_R, BLOCK_C), dtype=dt) + ra[:, None]
        if HAS_CA:
            ca = tl.load(CA + offs_c, mask=offs_c < n_c, other=0.0)
            w += ca[None, :]
        if HAS_V:
            cv = tl.load(CV + offs_c[:, None] * s_cvn + offs_k[None, :],
                         mask=(offs_c[:, None] < n_c) & (offs_k[None, :] < k), other=0.0)
            w += tl.dot(rv, tl.trans(cv), input_precision="ieee")
            if WANT_ACC2:
                acc2 += tl.dot(e.to(cv.dtype), cv, input_precision="ieee")
        ds = e * w
        rsum += tl.sum(ds, 1)
        cf = tl.load(C + offs_c[:, None] * s_cn + offs_dp[None, :],
                     mask=(offs_c[:, None] < n_c) & (offs_dp[None, :] < d), other=0.0)
        acc += tl.dot(ds.to(cf.dtype), cf, input_precision="ieee")
    tl.store(ACC + b * s_accb + offs_r[:, None] * s_accn + offs_dp[None, :], acc,
             mask=(offs_r[:, None] < n_r) & (offs_dp[None, :] < d))
    tl.store(RSUM + b * s_rsb + offs_r, rsum, mask=offs_r < n_r)
    if WANT_ACC2:
        tl.store(ACC2 + b * s_a2b + offs_r[:, None] * s_a2n + offs_k[None, :], acc2,
                 mask=(offs_r[:, None] < n_r) & (offs_k[None, :] < k))


def _pow2(v, lo=16):
    return max(lo, triton.next_power_of_2(max(int(v), 1)))


def _side(r, c, scale, metric, row_bias, col_bias):
    """(alpha, rowb, colb) of the expanded scores for rows r against columns c."""
    B, nr, _ = r.shape
    nc = c.shape[1]
    rb, cb = row_bias, col_bias
    if metric == "sqeuclidean":
        rn, cn = -scale * r.pow(2).sum(2), -scale * c.pow(2).sum(2)
        rb = rn if rb is None else rb + rn
        cb = cn if cb is None else cb + cn
        alpha = 2 * scale
    else:
        alpha = scale
    if cb is None:
        cb = r.new_zeros(B, nc)
    return alpha, (None if rb is None else rb.contiguous()), cb.contiguous()


def pairwise_lse_fwd(x, y, col_bias, values, scale, metric):
    B, n, d = x.shape
    m = y.shape[1]
    k = 0 if values is None else values.shape[2]
    lse = x.new_empty(B, n)
    out = x.new_zeros(B, n, k)
    if B == 0 or n == 0:
        return lse, out
    alpha, rb, cb = _side(x, y, scale, metric, None, col_bias)
    BLOCK_M, BLOCK_N = 32, 32
    BLOCK_D = min(_pow2(d), 64)
    BLOCK_K = _pow2(k)
    v = values if values is not None else x
    rbt = rb if rb is not None else x
    grid = (triton.cdiv(n, BLOCK_M), B)
    _lse_fwd_kernel[grid](x, y, rbt, cb, v, lse, out, n, m, d, k, float(alpha),
                          x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                          rbt.stride(0) if rb is not None else 0, cb.stride(0),
                          v.stride(0), v.stride(1), lse.stride(0), out.stride(0), out.stride(1),
                          HAS_RB=rb is not None, HAS_V=values is not None,
                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K)
    return lse, out


def _bwd_pass(r, c, scale, metric, row_bias, col_bias, ra, ca, rv, cv, want_acc2):
    B, nr, d = r.shape
    nc = c.shape[1]
    k = 0 if rv is None else rv.shape[2]
    alpha, rb, cb = _side(r, c, scale, metric, row_bias, col_bias)
    acc = r.new_zeros(B, nr, d)
    rsum = r.new_zeros(B, nr)
    acc2 = r.new_zeros(B, nr, k) if want_acc2 else r
    if nr == 0 or nc == 0:
        return acc, rsum, (acc2 if want_acc2 else None)
    dummy = r
    BLOCK_R, BLOCK_C = 32, 32
    grid = (triton.cdiv(nr, BLOCK_R), B)
    _softmax_bwd_kernel[grid](
        r, c, rb if rb is not None else dummy, cb, ra if ra is not None else dummy, ca if ca is not None else dummy,
        rv if rv is not None else dummy, cv if cv is not None else dummy, acc, rsum, acc2,
        nr, nc, d, k, float(alpha),
        r.stride(0), r.stride(1), c.stride(0), c.stride(1),
        rb.stride(0) if rb is not None else 0, cb.stride(0),
        ra.stride(0) if ra is not None else 0, ca.stride(0) if ca is not None else 0,
        rv.stride(0) if rv is not None else 0, rv.stride(1) if rv is not None else 0,
        cv.stride(0) if cv is not None else 0, cv.stride(1) if cv is not None else 0,
        acc.stride(0), acc.stride(1), rsum.stride(0), acc2.stride(0) if want_acc2 else 0,
        acc2.stride(1) if want_acc2 else 0,
        HAS_RB=rb is not None, HAS_RA=ra is not None, HAS_CA=ca is not None, HAS_V=rv is not None,
        WANT_ACC2=want_acc2, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, BLOCK_D=min(_pow2(d), 64), D_PAD=_pow2(d),
        BLOCK_K=_pow2(k))
    return acc, rsum, (acc2 if want_acc2 else None)


def pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric, need_rows=True,
                     need_cols=True):
    neg_lse = torch.where(torch.isinf(lse) & (lse < 0), torch.full_like(lse, -float("inf")), -lse).contiguous()
    a = grad_lse
    if values is not None:
        a = a - (grad_out * out).sum(2)
    a = a.contiguous()
    sq = metric == "sqeuclidean"
    coef_a, coef_b = (2 * scale, -2 * scale) if sq else (scale, 0.0)
    gx, gy, gc, gv = torch.zeros_like(x), torch.zeros_like(y), None, None
    if need_rows:
        acc, rsum, _ = _bwd_pass(x, y, scale, metric, neg_lse, col_bias, a, None, grad_out, values, False)
        gx = coef_a * acc + coef_b * rsum[..., None] * x
    if need_cols:
        acc, rsum, gv = _bwd_pass(y, x, scale, metric, col_bias, neg_lse, None, a, values, grad_out,
                                  values is not None)
        gy = coef_a * acc + coef_b * rsum[..., None] * y
        gc = rsum if col_bias is not None else None
    empty = x.new_zeros(0)
    return gx, gy, (gc if gc is not None else empty), (gv if gv is not None else empty)
