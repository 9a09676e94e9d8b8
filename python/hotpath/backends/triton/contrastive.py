"""Triton kernels of the contrastive family: tiles of rows against tiles of columns, scores by
tl.dot (the pairwise engine's precision policy: pairwise.dot_precision), fused epilogues; no
n x m buffer, no atomics (column-side gradients are a second launch with rows and columns swapped).

  _lse_rows_kernel        online row log-sum-exp of scale * <x_i, y_j> (optionally j != i), and
                          optionally each column's partials from the same tiles (CLIP's forward)
  _softmax_acc_kernel     acc_i = sum_j (ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j}) y_j
  _siglip_kernel          sum_j softplus(z_ij) per row, or sum_j sigmoid(z_ij) y_j and its row sum
                          (and, for the forward that also forms the gradient, the softplus sums)
  _hard_mine_kernel       masked arg-max / arg-min of |y_j|^2 - 2<x_i, y_j> from label vectors
  _topk_kernel            exact streaming top-k: a (rows, k) register buffer merged with each tile,
                          keys split across grid axis 1 when queries are few (float scores, or
                          int8 codes' int32 dots times key scales for the embedding search)

The accumulating kernels keep their (rows, features) output in registers, as up to ACC_N
accumulators of ACC_CHUNK features each (a span of up to 512 features: CLIP's 512 in one span),
so a score tile is formed once per (row block, column tile, span) and its weights feed every
accumulator; wider features are split into spans along grid axis 1, each span recomputing the
scores (twice at d = 1024). Nothing is read back from the output: an earlier design added each
tile's contribution into the output rows in global memory, 2 x rows x d x 4 bytes of traffic
per column tile, several times the tile's dot work at d = 512. Configs are pruned by the
accumulators' registers as well as by shared memory. Exponentials run in base 2 with log2(e)
folded into scale.
16-bit operands go to tl.dot as they are (tensor cores, float32 accumulation); every output
(log-sum-exps, accumulators, top-k values) is float32 then.
"""
import torch
import triton
import triton.language as tl

from .pairwise import (LN2, LOG2E, _dots, _mma, _scal, acc_dtype, bucket, dot_precision, pow2, prune,
                       score_elems, split, tune_key, upcast)
from .target import capability, interpreting, sm_count, smem_limit

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _lse_rows_kernel(X, Y, LSE, PMAX, PSUM, n, m, d, s_hi, s_lo, s_x, s_y, s_p, n_bucket, m_bucket,
                     EXCL: tl.constexpr, COLS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
                     FLAT: tl.constexpr):
    """Online row log-sum-exp of scale * <x_i, y_j>. COLS: from the same score tiles, also each
    column's partial base-2 max and sum over this program's row block (PMAX, PSUM row pid; the
    host merges the row blocks), the sum relative to the finite-safe max as the rows' sums are."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale2 = _scal(s_hi, s_lo, dt)  # scale * log2(e)
    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    l_i = tl.zeros((BLOCK_M,), dtype=dt)
    for n0 in tl.range(0, m, BLOCK_N, flatten=FLAT):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = _dots(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST) * scale2
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        if EXCL:
            valid = valid & (offs_n[None, :] != offs_m[:, None])
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(tl.abs(m_new) == float("inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
        if COLS:
            c_max = tl.max(s, 0)
            c_safe = tl.where(tl.abs(c_max) == float("inf"), 0.0, c_max)
            c_sum = tl.sum(tl.math.exp2(s - c_safe[None, :]), 0)
            tl.store(PMAX + pid * s_p + offs_n, c_max, mask=offs_n < m)
            tl.store(PSUM + pid * s_p + offs_n, c_sum, mask=offs_n < m)
    empty = l_i == 0
    lse = tl.where(empty, -float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * _LN2)
    tl.store(LSE + offs_m, lse, mask=offs_m < n)


@triton.jit
def _acc_span(Y, w, a0, a1, a2, a3, offs_n, m, d, s_y, c0, PREC: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_DO: tl.constexpr, NACC: tl.constexpr):
    """a_k += w @ Y[offs_n, c0 + k BLOCK_DO : c0 + (k + 1) BLOCK_DO] for the NACC accumulators in use."""
    offs_do = c0 + tl.arange(0, BLOCK_DO)
    nmask = offs_n[:, None] < m
    ptr = Y + offs_n[:, None] * s_y + offs_do[None, :]
    yv = tl.load(ptr, mask=nmask & (offs_do[None, :] < d), other=0.0)
    wv = w.to(yv.dtype)
    a0 = _mma(wv, yv, a0, PREC, UPCAST)
    if NACC > 1:
        yv = tl.load(ptr + BLOCK_DO, mask=nmask & (offs_do[None, :] + BLOCK_DO < d), other=0.0)
        a1 = _mma(wv, yv, a1, PREC, UPCAST)
    if NACC > 2:
        yv = tl.load(ptr + 2 * BLOCK_DO, mask=nmask & (offs_do[None, :] + 2 * BLOCK_DO < d), other=0.0)
        a2 = _mma(wv, yv, a2, PREC, UPCAST)
    if NACC > 3:
        yv = tl.load(ptr + 3 * BLOCK_DO, mask=nmask & (offs_do[None, :] + 3 * BLOCK_DO < d), other=0.0)
        a3 = _mma(wv, yv, a3, PREC, UPCAST)
    return a0, a1, a2, a3


@triton.jit
def _store_span(ACC, a0, a1, a2, a3, offs_m, n, d, s_acc, c0, BLOCK_DO: tl.constexpr, NACC: tl.constexpr):
    offs_do = c0 + tl.arange(0, BLOCK_DO)
    ptr = ACC + offs_m[:, None] * s_acc + offs_do[None, :]
    rmask = offs_m[:, None] < n
    tl.store(ptr, a0, mask=rmask & (offs_do[None, :] < d))
    if NACC > 1:
        tl.store(ptr + BLOCK_DO, a1, mask=rmask & (offs_do[None, :] + BLOCK_DO < d))
    if NACC > 2:
        tl.store(ptr + 2 * BLOCK_DO, a2, mask=rmask & (offs_do[None, :] + 2 * BLOCK_DO < d))
    if NACC > 3:
        tl.store(ptr + 3 * BLOCK_DO, a3, mask=rmask & (offs_do[None, :] + 3 * BLOCK_DO < d))


@triton.jit
def _softmax_acc_kernel(X, Y, RA, RL, CA, CL, ACC, n, m, d, s_hi, s_lo, s_x, s_y, s_acc, n_bucket, m_bucket,
                        HAS_R: tl.constexpr, HAS_C: tl.constexpr, EXCL: tl.constexpr, NACC: tl.constexpr,
                        PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, FLAT: tl.constexpr):
    pid = tl.program_id(0)
    c0 = tl.program_id(1) * (NACC * BLOCK_DO)   # this program's span of output features
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale2 = _scal(s_hi, s_lo, dt)
    a0 = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    a1 = a0
    a2 = a0
    a3 = a0
    if HAS_R:
        ra = tl.load(RA + offs_m, mask=offs_m < n, other=0.0).to(dt)
        rl = tl.load(RL + offs_m, mask=offs_m < n, other=0.0).to(dt)
        r_ok = rl != -float("inf")  # a row with every entry masked has weight 0
        rl = tl.where(r_ok, rl, 0.0) * _LOG2E
    for n0 in tl.range(0, m, BLOCK_N, flatten=FLAT):
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
        a0, a1, a2, a3 = _acc_span(Y, w, a0, a1, a2, a3, offs_n, m, d, s_y, c0, PREC, UPCAST, BLOCK_DO, NACC)
    _store_span(ACC, a0, a1, a2, a3, offs_m, n, d, s_acc, c0, BLOCK_DO, NACC)


@triton.jit
def _siglip_kernel(X, Y, RSUM, ACC, LOSS, n, m, d, s_hi, s_lo, b_hi, b_lo, s_x, s_y, s_acc, n_bucket, m_bucket,
                   GRAD: tl.constexpr, WITH_LOSS: tl.constexpr, NACC: tl.constexpr, PREC: tl.constexpr,
                   UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DO: tl.constexpr, FLAT: tl.constexpr):
    """RSUM: per row sum_j softplus(z_ij), or with GRAD sum_j sigmoid(z_ij) and ACC sum_j
    sigmoid(z_ij) y_j; WITH_LOSS (GRAD only): LOSS gets the softplus sums too, from the same tiles."""
    pid = tl.program_id(0)
    span = tl.program_id(1)
    c0 = span * (NACC * BLOCK_DO)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    scale = _scal(s_hi, s_lo, dt)
    bias = _scal(b_hi, b_lo, dt)
    rs = tl.zeros((BLOCK_M,), dtype=dt)
    sp = tl.zeros((BLOCK_M,), dtype=dt)
    a0 = tl.zeros((BLOCK_M, BLOCK_DO), dtype=dt)
    a1 = a0
    a2 = a0
    a3 = a0
    for n0 in tl.range(0, m, BLOCK_N, flatten=FLAT):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        z = _dots(X, Y, offs_m, offs_n, n, m, d, s_x, s_y, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                  BLOCK_D, PREC, UPCAST) * scale + bias
        valid = (offs_n[None, :] < m) & (offs_m[:, None] < n)
        e = tl.math.exp2(-tl.abs(z) * _LOG2E)   # in (0, 1]: never overflows
        if GRAD:
            q = 1.0 / (1.0 + e)
            w = tl.where(valid, tl.where(z >= 0, q, e * q), 0.0)   # sigmoid(z)
            rs += tl.sum(w, 1)
            a0, a1, a2, a3 = _acc_span(Y, w, a0, a1, a2, a3, offs_n, m, d, s_y, c0, PREC, UPCAST, BLOCK_DO, NACC)
        if WITH_LOSS or not GRAD:   # softplus(z) = max(z, 0) + log(1 + e^{-|z|})
            sp += tl.sum(tl.where(valid, tl.maximum(z, 0.0) + tl.log2(1.0 + e) * _LN2, 0.0), 1)
    if span == 0:   # every span forms the same row sums
        if GRAD:
            tl.store(RSUM + offs_m, rs, mask=offs_m < n)
        else:
            tl.store(RSUM + offs_m, sp, mask=offs_m < n)
        if WITH_LOSS:
            tl.store(LOSS + offs_m, sp, mask=offs_m < n)
    if GRAD:
        _store_span(ACC, a0, a1, a2, a3, offs_m, n, d, s_acc, c0, BLOCK_DO, NACC)


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
def _topk_kernel(Q, K, KS, VALS, IDX, n, m, d, s_q, s_k, span, s_split, n_bucket, m_bucket,
                 KTOP: tl.constexpr, K_PAD: tl.constexpr, INT8: tl.constexpr, PREC: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 FLAT: tl.constexpr):
    """The top-k of this program's query block over keys [span * split, span * (split + 1)), split
    = program_id(1), into VALS / IDX + split * s_split (the host merges the splits). INT8: int8
    query and key codes, scores = exact int32 dot * KS[key] (embedding search)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    VALS += split * s_split
    IDX += split * s_split
    k_lo = split * span
    k_hi = tl.minimum(m, k_lo + span)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    kcols = tl.arange(0, K_PAD)
    ncols = tl.arange(0, BLOCK_N)
    bv = tl.full((BLOCK_M, K_PAD), -float("inf"), dtype=dt)
    # key indices as int32 (the launcher refuses 2^31 keys): half the registers of int64 ones
    bi = tl.full((BLOCK_M, K_PAD), -1, dtype=tl.int32)
    filled = 0
    for n0 in tl.range(k_lo, k_hi, BLOCK_N, flatten=FLAT):
        offs_n = n0 + ncols
        if INT8:
            si = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            for d0 in range(0, d, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                qa = tl.load(Q + offs_m[:, None] * s_q + offs_d[None, :],
                             mask=(offs_m[:, None] < n) & (offs_d[None, :] < d), other=0)
                kb = tl.load(K + offs_n[:, None] * s_k + offs_d[None, :],
                             mask=(offs_n[:, None] < k_hi) & (offs_d[None, :] < d), other=0)
                si = tl.dot(qa, tl.trans(kb), si, out_dtype=tl.int32)
            s = si.to(tl.float32) * tl.load(KS + offs_n, mask=offs_n < k_hi, other=0.0)[None, :]
        else:
            s = _dots(Q, K, offs_m, offs_n, n, k_hi, d, s_q, s_k, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                      BLOCK_D, PREC, UPCAST)
        # a NaN score reads as -inf (it never hides a larger score of its tile)
        tv = tl.where((offs_n[None, :] < k_hi) & (s == s), s, -float("inf"))
        # skip the merge when no row of the block has a score above its current k-th value
        kth = tl.max(tl.where(kcols[None, :] == KTOP - 1, bv, -float("inf")), 1)
        need = tl.max((tl.max(tv, 1) > kth).to(tl.int32), 0) > 0
        if need | (filled < KTOP):
            nv = tl.full((BLOCK_M, K_PAD), -float("inf"), dtype=dt)
            nidx = tl.full((BLOCK_M, K_PAD), -1, dtype=tl.int32)
            for r in tl.static_range(KTOP):
                mb, ab = tl.max(bv, 1, return_indices=True)
                mt, at = tl.max(tv, 1, return_indices=True)
                take_b = mb >= mt  # ties: the buffer holds earlier keys
                idx_b = tl.sum(tl.where(kcols[None, :] == ab[:, None], bi, 0), 1)
                val = tl.where(take_b, mb, mt)
                idx = tl.where(take_b, idx_b, (n0 + at).to(tl.int32))
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
    tl.store(IDX + offs_m[:, None] * KTOP + kcols[None, :], bi.to(tl.int64), mask=mask)


# -- configs -----------------------------------------------------------------------------------------

def _cfg(bm, bn, bd, w, s, flat=False):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "FLAT": flat}, num_warps=w, num_stages=s)


# The score tile of a column block is a loop over the feature dimension (8 chunks of 64 at
# d = 512) inside the loop over column blocks. Triton pipelines the innermost loop, so each
# column block fills and drains its own pipeline, and the softmax of a block does not overlap the
# next block's loads. FLAT=True asks Triton to flatten the two loops into one pipelined loop
# (`tl.range(..., flatten=True)`); whether that is faster is the GPU's to say, so these
# candidates sit beside the plain ones in the autotuners' lists. Launches without accumulators
# only: compiled for sm_90 (Triton 3.6), the flattened loop also pipelines the accumulators' y
# tiles, and at d = 512 the CLIP / SigLIP gradient sweeps then need 261-267 KB of shared memory
# (and spill); the log-sum-exp sweep (68 KB) and top-k (49 KB) compile spill-free.
_FLAT = [_cfg(128, 64, 64, 8, 2, flat=True), _cfg(128, 128, 64, 8, 2, flat=True), _cfg(64, 128, 64, 8, 2, flat=True)]


# (rows, cols, dot chunk, warps, stages); 64-128 wide tiles, pruned by the shared-memory estimate
# and, for the accumulating kernels, by the accumulators' registers; the last two carry a
# 512-feature span (64 x 512 over 8 warps, 32 x 512 over 4)
_CONFIGS = [_cfg(128, 64, 64, 8, 2), _cfg(64, 128, 64, 8, 2), _cfg(128, 128, 64, 8, 2), _cfg(64, 64, 64, 4, 3),
            _cfg(128, 64, 32, 8, 3), _cfg(64, 64, 32, 4, 2), _cfg(64, 64, 64, 8, 2), _cfg(32, 64, 64, 4, 2)]
# Dots outside the tensor cores (IEEE fp32 / fp64: FMAs) keep each thread's operand rows in
# registers: compiled for sm_90 (`python -m hotpath compilecheck`) the tiles above spill kilobytes
# there (40 KB a thread for the d = 512 accumulators). Those launches run these tiles instead, with
# FMA_CHUNK-wide accumulators.
_FMA_CONFIGS = [_cfg(32, 32, 32, 4, 2), _cfg(64, 32, 32, 8, 2), _cfg(32, 64, 32, 8, 2), _cfg(128, 32, 32, 8, 2)]
FMA_CHUNK = 32
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 16}   # several tiles and chunks even at tiny sizes
# the fixed launch of the column-sweeping kernels under the interpreter (flattening is a compiler
# matter: the interpreter runs the loops as written)
_INTERP_SWEEP = dict(_INTERP, FLAT=False)

# Output features per accumulator (a tl.dot N tile) and accumulators per program: a span of 512.
# The interpreter uses 16-wide chunks, so that tiny test shapes run several accumulators and spans.
ACC_CHUNK, ACC_N = 128, 4
# fp32 accumulator elements one warp holds without spilling: 32 threads x 128 registers, about
# half the 255-register ceiling (the score tile, the operands and the addresses need the rest)
_ACC_PER_WARP = 32 * 128


def _need(c, nbytes, bdo):
    """Shared memory of one config: pipelined x and y chunks of the score dot plus the y tile of
    an accumulation dot (bdo = 0 without one; the accumulators' y tiles are used one after the
    other, outside the pipelined feature loop)."""
    bm, bn, bd = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_D"]
    return (c.num_stages * (bm + bn) * bd + bn * bdo) * nbytes


def _regs_ok(c, bdo, nacc, nbytes, dtype):
    # 4-byte (TF32) operands of the accumulating dot take twice the registers of 16-bit ones; an
    # FMA dot holds its operand rows over the whole BLOCK_N reduction. Compiled for sm_90: 64 x 512
    # TF32 accumulators over 8 warps spill, 64 x 256 do not; FMA ones spill at 32 x 128 with
    # BLOCK_N = 32 over 4 warps or 64 over 8, not at 32 x 64
    # 3xTF32 also holds each operand's high and low parts: 64 x 256 accumulators spill 1-2 KB, and
    # of 64 x 128 ones only the 64 x 64 score tile over 8 warps is spill-free (64 x 128 / 8 warps
    # spill 616 B, 32 x 64 / 4 warps 468 B). TF32 through mma.sync (before Hopper) keeps its
    # fragments in registers too: compiled for sm_80, 64 x 256 TF32 accumulators spill 2.4 KB.
    if fma(dtype):
        weight = c.kwargs["BLOCK_N"] / 4
    elif nbytes >= 4 and (dot_precision(dtype) == "tf32x3" or 0 < capability("cuda")[0] < 9):
        if c.num_warps < 8 or score_elems(c, "BLOCK_M", "BLOCK_N") > 16:
            return False
        weight = 4
    else:
        weight = 2 if nbytes >= 4 else 1
    return c.kwargs["BLOCK_M"] * bdo * nacc * weight <= _ACC_PER_WARP * c.num_warps


def fma(dtype):
    """True where this dtype's dots run as FMAs (IEEE fp32 / fp64), not on the tensor cores."""
    return dtype in (torch.float32, torch.float64) and dot_precision(dtype) == "ieee"


def _path_configs(configs, dtype):
    """The tensor-core tiles, or _FMA_CONFIGS for FMA launches (both sit in every autotuner's list)."""
    want = fma(dtype)
    return [c for c in configs if (c in _FMA_CONFIGS) == want] or configs


def _fitting(nbytes, bdo, nacc, limit, dtype=torch.bfloat16):
    """The configs an accumulating kernel may run: within shared memory and registers."""
    return [c for c in _path_configs(_CONFIGS + _FMA_CONFIGS, dtype)
            if _need(c, nbytes, bdo) <= limit and _regs_ok(c, bdo, nacc, nbytes, dtype)]


def _early_prune(configs, nargs, **kw):
    x = nargs["X"] if "X" in nargs else nargs["Q"]
    configs = _path_configs(configs, x.dtype)
    if "KTOP" in kw:   # top-k: the score tile and the (rows, K_PAD) values + int32 indices in registers
        # (5 words per kept entry: the value, the index and the merge's temporaries. With K_PAD = 64
        # under Triton 3.6 only 32 x 128 over 8 warps is spill-free among those kept: docs/gpu.md)
        regs = lambda c: c.kwargs["BLOCK_M"] * (c.kwargs["BLOCK_N"] + 5 * kw["K_PAD"])  # noqa: E731
        # flattened top-k: 16-bit operands only (compiled for sm_90 with Triton 3.6 it spills 260 B
        # under 3xTF32, and 680 B as the int8 search's with its 64 kept entries)
        ok = [c for c in configs if regs(c) <= _ACC_PER_WARP * c.num_warps
              and not (c.kwargs.get("FLAT") and x.dtype not in (torch.bfloat16, torch.float16))]
        return prune(ok or configs[-1:], lambda c: _need(c, x.element_size(), 0), smem_limit(x.device))
    acc = "NACC" in kw and kw.get("GRAD", True) and (kw.get("HAS_R", True) or kw.get("HAS_C", True))
    if not acc:
        return prune(configs, lambda c: _need(c, x.element_size(), 0), smem_limit(x.device))
    bdo, nacc = kw["BLOCK_DO"], kw["NACC"]
    # _fitting draws from the plain tiles: an accumulating launch never runs a FLAT one
    return _fitting(x.element_size(), bdo, nacc, smem_limit(x.device), x.dtype) or configs[-1:]


# per specialization (precision, pass flags, accumulator count): see pairwise._KEY
_KEY = ["d", "n_bucket", "m_bucket", "PREC", "EXCL", "COLS", "HAS_R", "HAS_C", "GRAD", "NACC", "INT8"]


def _tune(kernel):
    # every kernel writes each output element once, so timing runs need no reset
    return triton.autotune(configs=_CONFIGS + _FLAT + _FMA_CONFIGS, key=tune_key(kernel, _KEY),
                           prune_configs_by={"early_config_prune": _early_prune})(kernel)


_lse_rows_tuned = _tune(_lse_rows_kernel)
# the fused row + column sweep: one row-block height, so the host knows the partials' shape
_ROWCOL_BM = 128
_ROWCOL_CONFIGS = [c for c in _CONFIGS + _FLAT + _FMA_CONFIGS if c.kwargs["BLOCK_M"] == _ROWCOL_BM]
_lse_rowcol_tuned = triton.autotune(configs=_ROWCOL_CONFIGS, key=tune_key(_lse_rows_kernel, _KEY),
                                    prune_configs_by={"early_config_prune": _early_prune})(_lse_rows_kernel)
# column partials of the fused sweep (2 x row blocks x columns x 4 bytes) at most this; past it
# (B ~ 100k) the columns take a second sweep instead
ROWCOL_MAX_BYTES = 1 << 28
_softmax_acc_tuned = _tune(_softmax_acc_kernel)
_siglip_tuned = _tune(_siglip_kernel)
# top-k reads each key tile once per query block: taller blocks cut the key traffic (Q N d / BLOCK_M
# elements; 32-row blocks re-read 1M x 384 keys 300 times at Q = 10k); the merge runs rarely
_TOPK_CONFIGS = [_cfg(64, 128, 64, 8, 2), _cfg(128, 64, 64, 8, 2), _cfg(128, 128, 32, 8, 2), _cfg(64, 64, 64, 4, 3),
                 _cfg(32, 128, 64, 8, 2), _cfg(32, 64, 64, 8, 2)]
_topk_tuned = triton.autotune(configs=_TOPK_CONFIGS + _FLAT[2:] + _FMA_CONFIGS, key=tune_key(_topk_kernel, _KEY + ["KTOP"]),
                              prune_configs_by={"early_config_prune": _early_prune})(_topk_kernel)


def _launch(plain, tuned, n, *args, spans=1, **kw):
    """One fixed small config under the interpreter (it cannot time), autotuned on a GPU; grid
    axis 1 runs the feature spans of the accumulating kernels, or the key splits of top-k."""
    if interpreting():
        plain[(triton.cdiv(n, _INTERP["BLOCK_M"]), spans)](*args, **kw, **_INTERP_SWEEP)
    else:
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), spans)](*args, **kw)


def _fixed(dtype, device, bm, bn, stages=2):
    """One config for the kernel without autotuning (hard mining), fitted to shared memory."""
    if interpreting():
        return dict(_INTERP), {}
    nbytes = torch.empty(0, dtype=dtype).element_size()
    for bd in ((32, 16) if fma(dtype) else (64, 32, 16)):   # FMA dots: see _FMA_CONFIGS
        if stages * (bm + bn) * bd * nbytes <= smem_limit(device):
            break
    # 4-byte operands (FMA or TF32 dots): 8 warps (compiled with Triton 3.6, TF32 spilled at 4)
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, {"num_warps": 8 if bm * bn >= 8192 or nbytes >= 4 else 4,
                                                           "num_stages": stages}


def _acc_width(d, dtype=torch.float32, device=None):
    """(BLOCK_DO, NACC, spans) of an accumulating launch: narrow features in one padded
    accumulator; wider ones in NACC chunks of ACC_CHUNK (FMA_CHUNK for FMA dots) per program and
    spans programs per row block. NACC shrinks (more spans) until some config fits the device's
    shared memory and the registers."""
    chunk = 16 if interpreting() else (FMA_CHUNK if fma(dtype) else ACC_CHUNK)
    nbytes = torch.empty(0, dtype=dtype).element_size()
    D = pow2(d)
    if D <= chunk:
        return D, 1, 1
    nacc = min(ACC_N, triton.cdiv(d, chunk))
    if not interpreting():
        while nacc > 1 and not _fitting(nbytes, chunk, nacc, smem_limit(device), dtype):
            nacc -= 1
    return chunk, nacc, triton.cdiv(d, chunk * nacc)


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
    _launch(_lse_rows_kernel, _lse_rows_tuned, n, x, y, out, out, out, n, m, d, s_hi, s_lo, x.stride(0), y.stride(0),
            0, bucket(n), bucket(m), EXCL=bool(exclude_diag), COLS=False, PREC=dot_precision(x.dtype),
            UPCAST=upcast(x.dtype), BLOCK_DO=0)
    return out


def softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag):
    x, y, ra, rl, ca, cl = _prep(x, y, ra, rl, ca, cl)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    at = acc_dtype(x.dtype)
    has_r, has_c = ra is not None, ca is not None
    if n == 0 or m == 0 or d == 0 or not (has_r or has_c):
        return torch.zeros(n, d, dtype=at, device=x.device)
    acc = torch.empty(n, d, dtype=at, device=x.device)   # every element written once
    y = y.to(x.dtype)
    dummy = acc.new_zeros(1)
    bdo, nacc, spans = _acc_width(d, x.dtype, x.device)
    s_hi, s_lo = split(float(scale) * LOG2E)
    _launch(_softmax_acc_kernel, _softmax_acc_tuned, n,
            x, y, ra if has_r else dummy, rl if has_r else dummy, ca if has_c else dummy,
            cl if has_c else dummy, acc, n, m, d, s_hi, s_lo, x.stride(0), y.stride(0), acc.stride(0),
            bucket(n), bucket(m), spans=spans, HAS_R=has_r, HAS_C=has_c, EXCL=bool(exclude_diag), NACC=nacc,
            PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype), BLOCK_DO=bdo)
    return acc


def _siglip(x, y, scale, bias, grad, with_loss=False):
    """(rs, acc, loss): see _siglip_kernel; loss is empty unless with_loss."""
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    at = acc_dtype(x.dtype)
    rs = torch.zeros(n, dtype=at, device=x.device)
    acc = torch.zeros(n, d if grad else 0, dtype=at, device=x.device)
    loss = torch.zeros(n if with_loss else 0, dtype=at, device=x.device)
    if n == 0 or m == 0:
        return rs, acc, loss
    y = y.to(x.dtype)
    bdo, nacc, spans = _acc_width(d, x.dtype, x.device) if grad and d > 0 else (16, 1, 1)
    s_hi, s_lo = split(scale)
    b_hi, b_lo = split(bias)
    _launch(_siglip_kernel, _siglip_tuned, n, x, y, rs, acc if grad else rs, loss if with_loss else rs, n, m, d,
            s_hi, s_lo, b_hi, b_lo, x.stride(0), y.stride(0), acc.stride(0) if grad else 0, bucket(n), bucket(m),
            spans=spans, GRAD=bool(grad), WITH_LOSS=bool(with_loss), NACC=nacc, PREC=dot_precision(x.dtype),
            UPCAST=upcast(x.dtype), BLOCK_DO=bdo)
    return rs, acc, loss


def siglip_rows(x, y, scale, bias):
    return _siglip(x, y, scale, bias, False)[0]


def siglip_acc(x, y, scale, bias):
    rs, acc, _ = _siglip(x, y, scale, bias, True)
    return acc, rs


def siglip_grads(x, y, scale, bias, want_y):
    """The siglip_grads op: the x side's sweep also sums the loss; the y side's is siglip_acc's."""
    rs, acc, loss = _siglip(x, y, scale, bias, True, with_loss=True)
    acc_y = siglip_acc(y, x, scale, bias)[0] if want_y else acc.new_zeros(0, x.shape[1])
    return loss, acc, acc_y, rs


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


TOPK_MAX = 64  # the merge is unrolled k times; larger k uses the chunked matmul + topk fallback


def _key_span(n, m, device):
    """Keys per program of the top-k launch. Few queries leave few query blocks (1k queries:
    16 blocks of 64), so the keys are split until there are about four programs per SM; each
    split keeps its own top-k and the host merges them. Spans are whole 128-key tiles (16 in the
    interpreter, which splits whenever there are more than two tiles: the merge is tested)."""
    if interpreting():
        return 2 * _INTERP["BLOCK_N"]
    sms = sm_count(device)
    splits = max(1, min(triton.cdiv(4 * sms, triton.cdiv(n, 64)), triton.cdiv(m, 4096)))
    return triton.cdiv(triton.cdiv(m, splits), 128) * 128


def topk_scores(q, keys, k, key_scale=None):
    """Exact top-k of <q_i, keys_j> (or, with key_scale, of int8 codes' int32 dot * key_scale_j):
    values (n, k) descending in the accumulation dtype, indices (n, k); ties keep the lower key
    index; NaN and -inf scores are never selected (value -inf, index -1 where fewer than k)."""
    q, keys = _prep(q, keys)
    n, m, d = q.shape[0], keys.shape[0], q.shape[1]
    at = acc_dtype(q.dtype)
    if n == 0 or m == 0:
        return torch.full((n, k), -float("inf"), dtype=at, device=q.device), \
            torch.full((n, k), -1, dtype=torch.long, device=q.device)
    if m >= 2 ** 31:   # the kernel's key indices are int32
        raise ValueError(f"keys: at most 2**31 - 1 rows a call, got {m}; search the keys in parts")
    keys = keys.to(q.dtype)
    span = _key_span(n, m, q.device)
    splits = triton.cdiv(m, span)
    vals = torch.empty(splits, n, k, dtype=at, device=q.device)
    idx = torch.empty(splits, n, k, dtype=torch.long, device=q.device)
    int8 = key_scale is not None
    ks = key_scale.float().contiguous() if int8 else vals
    # the k-way merge runs only for key tiles that beat some row's k-th value
    _launch(_topk_kernel, _topk_tuned, n, q, keys, ks, vals, idx, n, m, d, q.stride(0), keys.stride(0), span,
            n * k, bucket(n), bucket(span), spans=splits, KTOP=k, K_PAD=max(16, triton.next_power_of_2(k)),
            INT8=int8, PREC=dot_precision(q.dtype), UPCAST=upcast(q.dtype))
    if splits == 1:
        return vals[0], idx[0]
    # splits in key order, each sorted with ties to the lower index: a stable descending sort of
    # their concatenation keeps that rule; -inf slots (index -1) sort last
    v = vals.permute(1, 0, 2).reshape(n, splits * k)
    i = idx.permute(1, 0, 2).reshape(n, splits * k)
    v, pos = torch.sort(v, dim=1, descending=True, stable=True)
    return v[:, :k].contiguous(), torch.gather(i, 1, pos[:, :k])


def topk(q, keys, k):
    if k > TOPK_MAX:
        from hotpath.reference.contrastive import topk_chunked
        return topk_chunked(q.to(acc_dtype(q.dtype)), keys.to(acc_dtype(q.dtype)), k)
    return topk_scores(q, keys, k)


def _rowcol_bm():
    return _INTERP["BLOCK_M"] if interpreting() else _ROWCOL_BM


def lse_rowcol(x, y, scale, exclude_diag):
    """Row and column log-sum-exps from one sweep over the score tiles: each row block leaves
    every column's partial max and sum, merged here (a few passes over 2 x n / 128 x m values
    instead of a second sweep's n m d dot work)."""
    x, y = _prep(x, y)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    at = acc_dtype(x.dtype)
    y = y.to(x.dtype)
    nb = triton.cdiv(n, _rowcol_bm())
    lse = torch.empty(n, dtype=at, device=x.device)
    pmax = torch.empty(nb, m, dtype=at, device=x.device)
    psum = torch.empty(nb, m, dtype=at, device=x.device)
    s_hi, s_lo = split(float(scale) * LOG2E)
    _launch(_lse_rows_kernel, _lse_rowcol_tuned, n, x, y, lse, pmax, psum, n, m, d, s_hi, s_lo, x.stride(0),
            y.stride(0), pmax.stride(0), bucket(n), bucket(m), EXCL=bool(exclude_diag), COLS=True,
            PREC=dot_precision(x.dtype), UPCAST=upcast(x.dtype), BLOCK_DO=0)
    return lse, _merge_partials(pmax, psum)


def _merge_partials(pmax, psum):
    """LSE (natural log) over axis 0 of partial base-2 (max, sum relative to the finite-safe max)
    pairs: +inf stays +inf, NaN stays NaN, an all-empty column is -inf."""
    def safe(v):
        return torch.where(v.abs() == float("inf"), torch.zeros((), dtype=v.dtype, device=v.device), v)
    ms = safe(pmax.max(0).values)
    w = torch.where(psum == 0, psum, psum * torch.exp2(safe(pmax) - ms))
    tot = w.sum(0)
    return torch.where(tot == 0, -float("inf"), ms + torch.log2(tot)) * LN2


def lse_sweep(x, y, scale, want_col, exclude_diag):
    """The lse_sweep op: rows, and with want_col the columns too, from one fused sweep while its
    column partials stay under ROWCOL_MAX_BYTES, else as the rows of the swapped pair."""
    n, m = x.shape[0], y.shape[0]
    if want_col and n > 0 and m > 0:
        if 2 * triton.cdiv(n, _rowcol_bm()) * m * acc_dtype(x.dtype).itemsize <= ROWCOL_MAX_BYTES:
            return lse_rowcol(x, y, scale, exclude_diag)
    return lse_rows(x, y, scale, exclude_diag), (lse_rows(y, x, scale, exclude_diag) if want_col else x.new_zeros(0))
