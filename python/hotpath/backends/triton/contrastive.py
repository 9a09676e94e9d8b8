"""Triton kernels of the contrastive family: tiles of rows against tiles of columns, scores by
tl.dot, fused epilogues; no n x m buffer, no atomics (column-side gradients are a second launch
with rows and columns swapped).

  _lse_rows_kernel        online row log-sum-exp of scale * <x_i, y_j> (optionally j != i)
  _softmax_acc_kernel     acc_i = sum_j (ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j}) y_j
  _siglip_kernel          sum_j softplus(z_ij) per row, or sum_j sigmoid(z_ij) y_j and its row sum
  _hard_mine_kernel       masked arg-max / arg-min of |y_j|^2 - 2<x_i, y_j> from label vectors
  _topk_kernel            exact streaming top-k: a (rows, k) register buffer merged with each tile

Output accumulators over the feature dimension are split across a second grid axis (BLOCK_DO
features per program) so register use stays bounded for d = 512 and more.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _tile(X, Y, offs_m, offs_n, n, m, d, s_x, s_y,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
    for d0 in range(0, d, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(X + offs_m[:, None] * s_x + offs_d[None, :],
                    mask=(offs_m[:, None] < n) & (offs_d[None, :] < d), other=0.0)
        b = tl.load(Y + offs_n[:, None] * s_y + offs_d[None, :],
                    mask=(offs_n[:, None] < m) & (offs_d[None, :] < d), other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    return acc


@triton.jit
def _lse_rows_kernel(X, Y, LSE, n, m, d, scale, s_x, s_y, EXCL: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    l_i = tl.zeros((BLOCK_M,), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _tile(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, BLOCK_M, BLOCK_N, BLOCK_D) * scale
        valid = offs_n[None, :] < m
        if EXCL:
            valid = valid & (offs_n[None, :] != offs_m[:, None])
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(p, 1)
        m_i = m_new
    has = l_i > 0
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), -float("inf"))
    tl.store(LSE + offs_m, lse, mask=offs_m < n)


@triton.jit
def _softmax_acc_kernel(X, Y, RA, RL, CA, CL, ACC, n, m, d, scale, s_x, s_y, s_acc,
                        HAS_R: tl.constexpr, HAS_C: tl.constexpr, EXCL: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DO: tl.constexpr):
    pid = tl.program_id(0)
    pd = tl.program_id(1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_do = pd * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    if HAS_R:
        ra = tl.load(RA + offs_m, mask=offs_m < n, other=0.0)
        rl = tl.load(RL + offs_m, mask=offs_m < n, other=0.0)
        r_ok = rl != -float("inf")  # a row with every entry masked has weight 0
        rl = tl.where(r_ok, rl, 0.0)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _tile(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, BLOCK_M, BLOCK_N, BLOCK_D) * scale
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        if EXCL:
            valid = valid & (offs_n[None, :] != offs_m[:, None])
        w = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
        if HAS_R:
            w += tl.where(r_ok[:, None], ra[:, None] * tl.exp(s - rl[:, None]), 0.0)
        if HAS_C:
            ca = tl.load(CA + offs_n, mask=offs_n < m, other=0.0)
            cl = tl.load(CL + offs_n, mask=offs_n < m, other=0.0)
            c_ok = cl != -float("inf")
            w += tl.where(c_ok[None, :], ca[None, :] * tl.exp(s - tl.where(c_ok, cl, 0.0)[None, :]), 0.0)
        w = tl.where(valid, w, 0.0)
        yv = tl.load(Y + offs_n[:, None] * s_y + offs_do[None, :],
                     mask=(offs_n[:, None] < m) & (offs_do[None, :] < d), other=0.0)
        acc += tl.dot(w.to(yv.dtype), yv, input_precision="ieee")
    tl.store(ACC + offs_m[:, None] * s_acc + offs_do[None, :], acc,
             mask=(offs_m[:, None] < n) & (offs_do[None, :] < d))


@triton.jit
def _siglip_kernel(X, Y, RSUM, ACC, n, m, d, scale, bias, s_x, s_y, s_acc, GRAD: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    pid = tl.program_id(0)
    pd = tl.program_id(1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_do = pd * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    rs = tl.zeros((BLOCK_M,), dtype=dt)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        z = _tile(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, BLOCK_M, BLOCK_N, BLOCK_D) * scale + bias
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        e = tl.exp(-tl.abs(z))
        if GRAD:
            q = 1.0 / (1.0 + e)
            w = tl.where(valid, tl.where(z >= 0, q, e * q), 0.0)
            rs += tl.sum(w, 1)
            yv = tl.load(Y + offs_n[:, None] * s_y + offs_do[None, :],
                         mask=(offs_n[:, None] < m) & (offs_do[None, :] < d), other=0.0)
            acc += tl.dot(w.to(yv.dtype), yv, input_precision="ieee")
        else:
            rs += tl.sum(tl.where(valid, tl.maximum(z, 0.0) + tl.log(1.0 + e), 0.0), 1)
    if pd == 0:
        tl.store(RSUM + offs_m, rs, mask=offs_m < n)
    if GRAD:
        tl.store(ACC + offs_m[:, None] * s_acc + offs_do[None, :], acc,
                 mask=(offs_m[:, None] < n) & (offs_do[None, :] < d))


@triton.jit
def _hard_mine_kernel(X, NRM, LAB, PI, NI, n, d, s_x,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64
    li = tl.load(LAB + offs_m, mask=offs_m < n, other=-1)
    pb = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    nb = tl.full((BLOCK_M,), float("inf"), dtype=dt)
    pi = tl.full((BLOCK_M,), -1, dtype=tl.int64)
    ni = tl.full((BLOCK_M,), -1, dtype=tl.int64)
    for n0 in range(0, n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _tile(X, X, offs_m, offs_n, n, n, d, s_x, s_x, BLOCK_M, BLOCK_N, BLOCK_D)
        nrm = tl.load(NRM + offs_n, mask=offs_n < n, other=0.0)
        lj = tl.load(LAB + offs_n, mask=offs_n < n, other=-1)
        v = nrm[None, :] - 2.0 * s
        inb = offs_n[None, :] < n
        same = li[:, None] == lj[None, :]
        pos = inb & same & (offs_n[None, :] != offs_m[:, None])
        neg = inb & (~same)
        vp = tl.where(pos, v, -float("inf"))
        vn = tl.where(neg, v, float("inf"))
        tp, ap = tl.max(vp, 1, return_indices=True)
        tn, an = tl.min(vn, 1, return_indices=True)
        hp = tl.max(pos.to(tl.int32), 1) > 0
        hn = tl.max(neg.to(tl.int32), 1) > 0
        upd_p = hp & ((pi < 0) | (tp > pb))  # strict: ties keep the earlier column
        upd_n = hn & ((ni < 0) | (tn < nb))
        pb = tl.where(upd_p, tp, pb)
        pi = tl.where(upd_p, (n0 + ap).to(tl.int64), pi)
        nb = tl.where(upd_n, tn, nb)
        ni = tl.where(upd_n, (n0 + an).to(tl.int64), ni)
    tl.store(PI + offs_m, pi, mask=offs_m < n)
    tl.store(NI + offs_m, ni, mask=offs_m < n)


@triton.jit
def _topk_kernel(Q, K, VALS, IDX, n, m, d, s_q, s_k, KTOP: tl.constexpr, K_PAD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float32 if Q.dtype.element_ty != tl.float64 else tl.float64
    kcols = tl.arange(0, K_PAD)
    ncols = tl.arange(0, BLOCK_N)
    bv = tl.full((BLOCK_M, K_PAD), -float("inf"), dtype=dt)
    bi = tl.full((BLOCK_M, K_PAD), -1, dtype=tl.int64)
    filled = 0
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + ncols
        s = _tile(Q, K, offs_m, offs_n, n, m, d, s_q, s_k, BLOCK_M, BLOCK_N, BLOCK_D)
        tv = tl.where(offs_n[None, :] < m, s, -float("inf"))
        # skip the merge when no row of the block has a score above its current k-th value
        kth = tl.max(tl.where(kcols[None, :] == KTOP - 1, bv, -float("inf")), 1)
        need = tl.max((tl.max(tv, 1) > kth).to(tl.int32), 0) > 0
        if need | (filled < KTOP):
            nv = tl.full((BLOCK_M, K_PAD), -float("inf"), dtype=dt)
            nidx = tl.full((BLOCK_M, K_PAD), -1, dtype=tl.int64)
            for r in tl.static_range(KTOP):
                mb, ab = tl.max(bv, 1, return_indices=True)
                mt, at = tl.max(tv, 1, return_indices=True)
                take_b = mb >= mt  # ties: the buffer holds earlier keys
                idx_b = tl.sum(tl.where(kcols[None, :] == ab[:, None], bi, 0), 1)
                val = tl.where(take_b, mb, mt)
                idx = tl.where(take_b, idx_b, (n0 + at).to(tl.int64))
                idx = tl.where(val == -float("inf"), -1, idx)
                nv = tl.where(kcols[None, :] == r, val[:, None], nv)
                nidx = tl.where(kcols[None, :] == r, idx[:, None], nidx)
                bv = tl.where(take_b[:, None] & (kcols[None, :] == ab[:, None]), -float("inf"), bv)
                tv = tl.where((~take_b)[:, None] & (ncols[None, :] == at[:, None]), -float("inf"), tv)
            bv = nv
            bi = nidx
        filled += BLOCK_N
    mask = (offs_m[:, None] < n) & (kcols[None, :] < KTOP)
    tl.store(VALS + offs_m[:, None] * KTOP + kcols[None, :], bv, mask=mask)
    tl.store(IDX + offs_m[:, None] * KTOP + kcols[None, :], bi, mask=mask)


# -- launchers ---------------------------------------------------------------------------------------

_BM, _BN, _BD, _BDO = 32, 32, 32, 64


def _prep(*ts):
    return tuple(None if t is None else t.contiguous() for t in ts)


def lse_rows(x, y, scale, exclude_diag):
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    out = torch.full((n,), -float("inf"), dtype=x.dtype, device=x.device)
    if n == 0 or m == 0:
        return out
    _lse_rows_kernel[(triton.cdiv(n, _BM),)](x, y, out, n, m, d, float(scale), x.stride(0), y.stride(0),
                                             EXCL=bool(exclude_diag), BLOCK_M=_BM, BLOCK_N=_BN, BLOCK_D=_BD)
    return out


def softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag):
    x, y, ra, rl, ca, cl = _prep(x, y, ra, rl, ca, cl)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    acc = torch.zeros(n, d, dtype=x.dtype, device=x.device)
    has_r, has_c = ra is not None, ca is not None
    if n == 0 or m == 0 or not (has_r or has_c):
        return acc
    dummy = acc.new_zeros(1)
    grid = (triton.cdiv(n, _BM), triton.cdiv(d, _BDO))
    _softmax_acc_kernel[grid](x, y, ra if has_r else dummy, rl if has_r else dummy, ca if has_c else dummy,
                              cl if has_c else dummy, acc, n, m, d, float(scale), x.stride(0), y.stride(0),
                              acc.stride(0), HAS_R=has_r, HAS_C=has_c, EXCL=bool(exclude_diag),
                              BLOCK_M=_BM, BLOCK_N=_BN, BLOCK_D=_BD, BLOCK_DO=_BDO)
    return acc


def _siglip(x, y, scale, bias, grad):
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    rs = torch.zeros(n, dtype=x.dtype, device=x.device)
    acc = torch.zeros(n, d if grad else 0, dtype=x.dtype, device=x.device)
    if n == 0 or m == 0:
        return rs, acc
    grid = (triton.cdiv(n, _BM), triton.cdiv(d, _BDO) if grad else 1)
    _siglip_kernel[grid](x, y, rs, acc if grad else rs, n, m, d, float(scale), float(bias), x.stride(0), y.stride(0),
                         acc.stride(0) if grad else 0, GRAD=bool(grad), BLOCK_M=_BM, BLOCK_N=_BN, BLOCK_D=_BD,
                         BLOCK_DO=_BDO)
    return rs, acc


def siglip_rows(x, y, scale, bias):
    return _siglip(x, y, scale, bias, False)[0]


def siglip_acc(x, y, scale, bias):
    rs, acc = _siglip(x, y, scale, bias, True)
    return acc, rs


def hard_mine(x, labels):
    x, labels = _prep(x, labels)
    n, d = x.shape
    pi = torch.full((n,), -1, dtype=torch.long, device=x.device)
    ni = torch.full((n,), -1, dtype=torch.long, device=x.device)
    if n == 0:
        return pi, ni
    nrm = x.pow(2).sum(1).contiguous()
    _hard_mine_kernel[(triton.cdiv(n, _BM),)](x, nrm, labels, pi, ni, n, d, x.stride(0),
                                              BLOCK_M=_BM, BLOCK_N=_BN, BLOCK_D=_BD)
    return pi, ni


_TOPK_MAX = 64  # the merge is unrolled k times; larger k uses the chunked matmul + topk fallback


def topk(q, keys, k):
    q, keys = _prep(q, keys)
    n, m, d = q.shape[0], keys.shape[0], q.shape[1]
    if k > _TOPK_MAX:
        from hotpath.reference.contrastive import topk_chunked
        return topk_chunked(q, keys, k)
    vals = torch.empty(n, k, dtype=q.dtype, device=q.device)
    idx = torch.empty(n, k, dtype=torch.long, device=q.device)
    if n == 0:
        return vals, idx
    _topk_kernel[(triton.cdiv(n, 16),)](q, keys, vals, idx, n, m, d, q.stride(0), keys.stride(0), KTOP=k,
                                        K_PAD=max(16, triton.next_power_of_2(k)), BLOCK_M=16, BLOCK_N=_BN,
                                        BLOCK_D=_BD)
    return vals, idx


def lse_sweep(x, y, scale, want_col, exclude_diag):
    """The lse_sweep op: rows, and with want_col the columns as the rows of the swapped pair."""
    return lse_rows(x, y, scale, exclude_diag), (lse_rows(y, x, scale, exclude_diag) if want_col else x.new_zeros(0))
