"""Triton kernels of the contrastive family: tiles of rows against tiles of columns, scores by
tl.dot (the pairwise engine's precision policy: pairwise.dot_precision), fused epilogues; no
n x m buffer, no atomics (column-side gradients are a second launch with rows and columns swapped).

  _lse_rows_kernel        online row log-sum-exp of scale * <x_i, y_j> (optionally j != i)
  _softmax_acc_kernel     acc_i = sum_j (ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j}) y_j
  _siglip_kernel          sum_j softplus(z_ij) per row, or sum_j sigmoid(z_ij) y_j and its row sum
  _hard_mine_kernel       masked arg-max / arg-min of |y_j|^2 - 2<x_i, y_j> from label vectors
  _topk_kernel            exact streaming top-k: a (rows, k) register buffer merged with each tile

Every score tile is computed once per (row block, column tile): a program owns a row block and
all d output features. Up to ACC_REG_MAX features the (rows, d) accumulator lives in registers;
wider features (CLIP's 512 - 1024) are accumulated 64 columns at a time into the output rows,
which that program alone owns (read, add the tile's contribution, write back), after the score
tile of the column block is formed. Exponentials run in base 2 with log2(e) folded into scale.
16-bit operands go to tl.dot as they are (tensor cores, float32 accumulation); every output
(log-sum-exps, accumulators, top-k values) is float32 then.
"""
import torch
import triton
import triton.language as tl

from .pairwise import (ACC_REG_MAX, LOG2E, _dots, _mma, _scal, acc_dtype, bucket, dot_precision, interpreting,
                       pow2, prune, smem_limit, split, upcast)

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _lse_rows_kernel(X, Y, LSE, n, m, d, s_hi, s_lo, s_x, s_y, n_bucket, m_bucket,
                     EXCL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale2 = _scal(s_hi, s_lo, dt)  # scale * log2(e)
    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    l_i = tl.zeros((BLOCK_M,), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _dots(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST) * scale2
        valid = offs_n[None, :] < m
        if EXCL:
            valid = valid & (offs_n[None, :] != offs_m[:, None])
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(tl.abs(m_new) == float("inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    empty = l_i == 0
    lse = tl.where(empty, -float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * _LN2)
    tl.store(LSE + offs_m, lse, mask=offs_m < n)


@triton.jit
def _acc_tile(Y, ACC, w, acc, offs_m, offs_n, n, m, d, s_y, s_acc, ACC_REG: tl.constexpr, PREC: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_DO: tl.constexpr):
    """acc += w @ Y[offs_n] (registers, d <= BLOCK_DO), or the same added into ACC's rows
    BLOCK_DO features at a time (the caller's program owns those rows)."""
    offs_do = tl.arange(0, BLOCK_DO)
    if ACC_REG:
        yv = tl.load(Y + offs_n[:, None] * s_y + offs_do[None, :],
                     mask=(offs_n[:, None] < m) & (offs_do[None, :] < d), other=0.0)
        acc = _mma(w.to(yv.dtype), yv, acc, PREC, UPCAST)
    else:
        for c0 in range(0, d, BLOCK_DO):
            od = c0 + offs_do
            yv = tl.load(Y + offs_n[:, None] * s_y + od[None, :],
                         mask=(offs_n[:, None] < m) & (od[None, :] < d), other=0.0)
            ptr = ACC + offs_m[:, None] * s_acc + od[None, :]
            msk = (offs_m[:, None] < n) & (od[None, :] < d)
            tl.store(ptr, _mma(w.to(yv.dtype), yv, tl.load(ptr, mask=msk, other=0.0), PREC, UPCAST), mask=msk)
    return acc


@triton.jit
def _softmax_acc_kernel(X, Y, RA, RL, CA, CL, ACC, n, m, d, s_hi, s_lo, s_x, s_y, s_acc, n_bucket, m_bucket,
                        HAS_R: tl.constexpr, HAS_C: tl.constexpr, EXCL: tl.constexpr, ACC_REG: tl.constexpr,
                        PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale2 = _scal(s_hi, s_lo, dt)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    if HAS_R:
        ra = tl.load(RA + offs_m, mask=offs_m < n, other=0.0).to(dt)
        rl = tl.load(RL + offs_m, mask=offs_m < n, other=0.0).to(dt)
        r_ok = rl != -float("inf")  # a row with every entry masked has weight 0
        rl = tl.where(r_ok, rl, 0.0) * _LOG2E
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _dots(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST) * scale2
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        if EXCL:
            valid = valid & (offs_n[None, :] != offs_m[:, None])
        w = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
        if HAS_R:
            w += tl.where(r_ok[:, None], ra[:, None] * tl.math.exp2(s - rl[:, None]), 0.0)
        if HAS_C:
            ca = tl.load(CA + offs_n, mask=offs_n < m, other=0.0).to(dt)
            cl = tl.load(CL + offs_n, mask=offs_n < m, other=0.0).to(dt)
            c_ok = cl != -float("inf")
            w += tl.where(c_ok[None, :], ca[None, :] * tl.math.exp2(s - (tl.where(c_ok, cl, 0.0) * _LOG2E)[None, :]),
                          0.0)
        w = tl.where(valid, w, 0.0)
        acc = _acc_tile(Y, ACC, w, acc, offs_m, offs_n, n, m, d, s_y, s_acc, ACC_REG, PREC, UPCAST, BLOCK_DO)
    if ACC_REG:
        offs_do = tl.arange(0, BLOCK_DO)
        tl.store(ACC + offs_m[:, None] * s_acc + offs_do[None, :], acc,
                 mask=(offs_m[:, None] < n) & (offs_do[None, :] < d))


@triton.jit
def _siglip_kernel(X, Y, RSUM, ACC, n, m, d, s_hi, s_lo, b_hi, b_lo, s_x, s_y, s_acc, n_bucket, m_bucket,
                   GRAD: tl.constexpr, ACC_REG: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale = _scal(s_hi, s_lo, dt)
    bias = _scal(b_hi, b_lo, dt)
    rs = tl.zeros((BLOCK_M,), dtype=dt)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        z = _dots(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST) * scale + bias
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        e = tl.math.exp2(-tl.abs(z) * _LOG2E)   # in (0, 1]: never overflows
        if GRAD:
            q = 1.0 / (1.0 + e)
            w = tl.where(valid, tl.where(z >= 0, q, e * q), 0.0)   # sigmoid(z)
            rs += tl.sum(w, 1)
            acc = _acc_tile(Y, ACC, w, acc, offs_m, offs_n, n, m, d, s_y, s_acc, ACC_REG, PREC, UPCAST, BLOCK_DO)
        else:   # softplus(z) = max(z, 0) + log(1 + e^{-|z|})
            rs += tl.sum(tl.where(valid, tl.maximum(z, 0.0) + tl.log2(1.0 + e) * _LN2, 0.0), 1)
    tl.store(RSUM + offs_m, rs, mask=offs_m < n)
    if GRAD:
        if ACC_REG:
            offs_do = tl.arange(0, BLOCK_DO)
            tl.store(ACC + offs_m[:, None] * s_acc + offs_do[None, :], acc,
                     mask=(offs_m[:, None] < n) & (offs_do[None, :] < d))


@triton.jit
def _hard_mine_kernel(X, NRM, LAB, PI, NI, n, d, s_x, PREC: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    li = tl.load(LAB + offs_m, mask=offs_m < n, other=-1)
    pb = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    nb = tl.full((BLOCK_M,), float("inf"), dtype=dt)
    pi = tl.full((BLOCK_M,), -1, dtype=tl.int64)
    ni = tl.full((BLOCK_M,), -1, dtype=tl.int64)
    for n0 in range(0, n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _dots(X, X, offs_m, offs_n, n, n, d, s_x, s_x, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST)
        nrm = tl.load(NRM + offs_n, mask=offs_n < n, other=0.0).to(dt)
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
                 PREC: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    kcols = tl.arange(0, K_PAD)
    ncols = tl.arange(0, BLOCK_N)
    bv = tl.full((BLOCK_M, K_PAD), -float("inf"), dtype=dt)
    bi = tl.full((BLOCK_M, K_PAD), -1, dtype=tl.int64)
    filled = 0
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + ncols
        s = _dots(Q, K, offs_m, offs_n, n, m, d, s_q, s_k, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST)
        # a NaN score reads as -inf (it never hides a larger score of its tile)
        tv = tl.where((offs_n[None, :] < m) & (s == s), s, -float("inf"))
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


# -- configs -----------------------------------------------------------------------------------------

def _cfg(bm, bn, bd, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=s)


# (rows, cols, dot chunk, warps, stages); 64-128 wide tiles, pruned by the shared-memory estimate
_CONFIGS = [_cfg(128, 64, 64, 8, 2), _cfg(64, 128, 64, 8, 2), _cfg(128, 128, 64, 8, 2), _cfg(64, 64, 64, 4, 3),
            _cfg(128, 64, 32, 8, 3), _cfg(64, 64, 32, 4, 2)]
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 16}   # several tiles and chunks even at tiny sizes


def _need(c, nbytes, bdo):
    """Shared memory of one config: pipelined x and y chunks of the score dot plus the y tile of
    the accumulation dot (bdo = 0 without one)."""
    bm, bn, bd = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_D"]
    return (c.num_stages * (bm + bn) * bd + bn * bdo) * nbytes


def _early_prune(configs, nargs, **kw):
    x = nargs["X"]
    bdo = kw.get("BLOCK_DO", 0) if (kw.get("GRAD", True) and (kw.get("HAS_R", True) or kw.get("HAS_C", True))) else 0
    return prune(configs, lambda c: _need(c, x.element_size(), bdo), smem_limit(x.device))


_KEY = ["d", "n_bucket", "m_bucket"]


def _tune(kernel, zero=None):
    # kernels that add into ACC (wide d) must start every timing run from zeros
    return triton.autotune(configs=_CONFIGS, key=_KEY, reset_to_zero=zero,
                           prune_configs_by={"early_config_prune": _early_prune})(kernel)


_lse_rows_tuned = _tune(_lse_rows_kernel)
_softmax_acc_tuned = _tune(_softmax_acc_kernel, ["ACC"])
_siglip_tuned = _tune(_siglip_kernel, ["ACC"])


def _launch(plain, tuned, n, *args, **kw):
    """One fixed small config under the interpreter (it cannot time), autotuned on a GPU."""
    if interpreting():
        plain[(triton.cdiv(n, _INTERP["BLOCK_M"]),)](*args, **kw, **_INTERP)
    else:
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)](*args, **kw)


def _fixed(dtype, device, bm, bn, stages=2):
    """One config for the kernels without autotuning (mining, top-k), fitted to shared memory."""
    if interpreting():
        return dict(_INTERP), {}
    nbytes = torch.empty(0, dtype=dtype).element_size()
    for bd in (64, 32, 16):
        if stages * (bm + bn) * bd * nbytes <= smem_limit(device):
            break
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, {"num_warps": 8 if bm * bn >= 8192 else 4,
                                                           "num_stages": stages}


def _acc_width(d):
    """(BLOCK_DO, ACC_REG): the padded feature width in registers when narrow, else 64-column
    passes through the output rows."""
    D = pow2(d)
    return (D, True) if D <= ACC_REG_MAX else (64, False)


# -- launchers ---------------------------------------------------------------------------------------

def _prep(*ts):
    return tuple(None if t is None else t.contiguous() for t in ts)


def lse_rows(x, y, scale, exclude_diag):
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    at = acc_dtype(x.dtype)
    out = torch.full((n,), -float("inf"), dtype=at, device=x.device)
    if n == 0 or m == 0:
        return out
    y = y.to(x.dtype)
    s_hi, s_lo = split(float(scale) * LOG2E)
    _launch(_lse_rows_kernel, _lse_rows_tuned, n, x, y, out, n, m, d, s_hi, s_lo, x.stride(0), y.stride(0),
            bucket(n), bucket(m), EXCL=bool(exclude_diag), PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype),
            BLOCK_DO=0)
    return out


def softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag):
    x, y, ra, rl, ca, cl = _prep(x, y, ra, rl, ca, cl)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    at = acc_dtype(x.dtype)
    acc = torch.zeros(n, d, dtype=at, device=x.device)
    has_r, has_c = ra is not None, ca is not None
    if n == 0 or m == 0 or not (has_r or has_c):
        return acc
    y = y.to(x.dtype)
    dummy = acc.new_zeros(1)
    bdo, acc_reg = _acc_width(d)
    s_hi, s_lo = split(float(scale) * LOG2E)
    _launch(_softmax_acc_kernel, _softmax_acc_tuned, n,
            x, y, ra if has_r else dummy, rl if has_r else dummy, ca if has_c else dummy,
            cl if has_c else dummy, acc, n, m, d, s_hi, s_lo, x.stride(0), y.stride(0), acc.stride(0),
            bucket(n), bucket(m), HAS_R=has_r, HAS_C=has_c, EXCL=bool(exclude_diag), ACC_REG=acc_reg,
            PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype), BLOCK_DO=bdo)
    return acc


def _siglip(x, y, scale, bias, grad):
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    at = acc_dtype(x.dtype)
    rs = torch.zeros(n, dtype=at, device=x.device)
    acc = torch.zeros(n, d if grad else 0, dtype=at, device=x.device)
    if n == 0 or m == 0:
        return rs, acc
    y = y.to(x.dtype)
    bdo, acc_reg = _acc_width(d) if grad else (16, True)
    s_hi, s_lo = split(scale)
    b_hi, b_lo = split(bias)
    _launch(_siglip_kernel, _siglip_tuned, n, x, y, rs, acc if grad else rs, n, m, d, s_hi, s_lo, b_hi, b_lo,
            x.stride(0), y.stride(0), acc.stride(0) if grad else 0, bucket(n), bucket(m), GRAD=bool(grad),
            ACC_REG=acc_reg, PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype), BLOCK_DO=bdo)
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
    nrm = x.to(acc_dtype(x.dtype)).pow(2).sum(1).contiguous()
    blk, opts = _fixed(x.dtype, x.device, 64, 64)
    _hard_mine_kernel[(triton.cdiv(n, blk["BLOCK_M"]),)](x, nrm, labels, pi, ni, n, d, x.stride(0),
                                                         PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype),
                                                         **blk, **opts)
    return pi, ni


_TOPK_MAX = 64  # the merge is unrolled k times; larger k uses the chunked matmul + topk fallback


def topk(q, keys, k):
    q, keys = _prep(q, keys)
    n, m, d = q.shape[0], keys.shape[0], q.shape[1]
    if k > _TOPK_MAX:
        from hotpath.reference.contrastive import topk_chunked
        return topk_chunked(q.to(acc_dtype(q.dtype)), keys.to(acc_dtype(q.dtype)), k)
    at = acc_dtype(q.dtype)
    vals = torch.empty(n, k, dtype=at, device=q.device)
    idx = torch.empty(n, k, dtype=torch.long, device=q.device)
    if n == 0:
        return vals, idx
    keys = keys.to(q.dtype)
    # wide key tiles: the k-way merge runs only for tiles that beat some row's k-th value
    blk, opts = _fixed(q.dtype, q.device, 32, 128)
    _topk_kernel[(triton.cdiv(n, blk["BLOCK_M"]),)](q, keys, vals, idx, n, m, d, q.stride(0), keys.stride(0),
                                                    KTOP=k, K_PAD=max(16, triton.next_power_of_2(k)),
                                                    PREC=dot_precision(q.dtype), UPCAST=upcast(q.dtype),
                                                    **blk, **opts)
    return vals, idx


def lse_sweep(x, y, scale, want_col, exclude_diag):
    """The lse_sweep op: rows, and with want_col the columns as the rows of the swapped pair."""
    return lse_rows(x, y, scale, exclude_diag), (lse_rows(y, x, scale, exclude_diag) if want_col else x.new_zeros(0))
