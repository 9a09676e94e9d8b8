"""Triton kernels of the streaming pairwise engine (FlashAttention-style tiles).

score_ij = alpha * <r_i, c_j> + rowb_i + colb_j. The squared-Euclidean metric is expanded as
2s<x, y> - s|x|^2 - s|y|^2 (the caller centers the data first; the norms are formed in float32 or
float64, never in a 16-bit type), so one tl.dot kernel serves both metrics.

Numerics: the online max / sum runs in base 2 (log2(e) folded into alpha and the biases once,
tl.exp2 / tl.log2 in the loop, one multiply by ln 2 when a log-sum-exp is written out). Statistics
and accumulators are float32 (float64 for float64 inputs) whatever the input dtype.

Precision policy (dot_precision): bf16 / fp16 tiles go to the tensor cores as they are, with
float32 accumulation; float32 tiles use TF32 exactly when torch would for a float32 matmul
(torch.backends.cuda.matmul.allow_tf32 / torch.set_float32_matmul_precision). Otherwise float32
must keep float32 accuracy, and on Hopper gets it on the tensor cores too: "tf32x3" splits each
operand into a TF32 high part and a TF32 remainder and sums three exact products in fp32 (~2^-21
relative a product: the error of an fp32 FMA dot, tests/test_triton_engine.py), and Hopper runs
TF32 at ~8x its fp32 FMA rate; IEEE FMA dots also spill registers on any tile large enough to feed
the GPU (docs/gpu.md). Other GPUs, and HOTPATH_FP32_DOT=ieee, run IEEE FMA dots (full_fp32).
float64 is always IEEE. The interpreter runs "ieee" (the only fp32 mode it implements).

Narrow features outside the tensor cores (fp32 / fp64 with d <= 4, or k <= 4 value channels,
unless TF32 is asked for): a tl.dot over a tile padded to its 16-wide minimum costs 16 FMAs (or
three padded MMAs) a pair there, so the scores and the value / gradient accumulations run as d
(or k) rank-1 updates instead (SMALL_D, SMALL_K): 3 FMAs a pair at d = 3, which leaves the
exponential units as the bound.

The backward is two launches of one kernel, rows against columns and then columns against rows;
each computes one score tile per (row block, column tile) and feeds it to every accumulator: no
atomics, no n x m buffer.

Tile configs (GPU) are autotuned per (d, k, n and m buckets) over a short list, each config's
shared memory estimated as (BLOCK_M*BLOCK_D + stages*BLOCK_N*(BLOCK_D + BLOCK_K)) * bytes and
filtered by the device's limit before launch (smem_need / fits below).
"""
import os
import warnings

import numpy as np
import torch
import triton
import triton.language as tl

from .target import capability, interpreting, smem_limit

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(LOG2E)
ACC_REG_MAX = 128   # feature widths up to this keep a (rows, d) accumulator in registers


# -- policy and launch helpers (shared with contrastive.py and ot.py) ----------------------------------

def dot_precision(dtype, device=None):
    """input_precision for tl.dot on tiles of this dtype on `device` (default: the current CUDA
    device; see the module docstring)."""
    if dtype != torch.float32 or interpreting():
        return "ieee"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32p = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
        if fp32p in ("tf32", "ieee"):
            tf32 = fp32p == "tf32"
        else:
            tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else full_fp32(device)


def full_fp32(device=None):
    """input_precision of float32 dots at float32 accuracy on a GPU: "tf32x3" or "ieee"."""
    if os.environ.get("HOTPATH_FP32_DOT", "").lower() == "ieee":
        return "ieee"
    # 3xTF32 where Hopper's warpgroup MMA reads the split operands from shared memory. With
    # mma.sync (sm_80 / sm_89 / sm_120) they sit in registers and the score tiles spill 0.6-9 KB
    # (compiled for sm_80): IEEE FMA dots there. Blackwell (sm_100) is not compile-checked yet.
    return "tf32x3" if capability(device if device is not None else "cuda")[0] == 9 else "ieee"


def upcast(dtype):
    """The interpreter keeps bfloat16 as raw uint16 and its tl.dot would multiply the bit patterns:
    there (only) 16-bit tiles are widened to float32 before the dot."""
    return interpreting() and dtype == torch.bfloat16


def split(v):
    """A double as two float32 scalars (hi, lo): Triton passes Python floats as float32, and the
    kernels rebuild hi + lo in their compute dtype (float64 kernels keep ~1e-14 relative)."""
    v = float(v)
    hi = float(np.float32(v))
    if not np.isfinite(hi) or not np.isfinite(v):
        return hi, 0.0
    return hi, float(np.float32(v - hi))


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def pow2(v, lo=16):
    return max(lo, triton.next_power_of_2(max(int(v), 1)))


def bucket(v):
    """Autotune key bucket of a length: powers of 4 up to 2^20."""
    v = max(int(v), 1)
    b = 1
    while b < v and b < (1 << 20):
        b *= 4
    return b


def smem_need(rows, cols, width, vals, stages, nbytes, held=True):
    """By-hand shared-memory estimate of a tile config: the row tile (once when held across the
    column loop, else pipelined) plus `stages` buffered column and value tiles."""
    row_part = rows * width * (1 if held else stages)
    return (row_part + stages * cols * (width + vals)) * nbytes


def prune(configs, need, limit, regs=None):
    """Configs whose shared-memory estimate `need(cfg)` fits `limit` and, with regs = (fits, size),
    whose registers fit (`fits(cfg)`); else the fitting one with the smallest `size(cfg)`, else
    the one needing the least shared memory."""
    fit = [c for c in configs if need(c) <= limit]
    if regs is None:
        return fit or [min(configs, key=need)]
    ok = [c for c in fit if regs[0](c)]
    return ok or ([min(fit, key=regs[1])] if fit else [min(configs, key=need)])


# Registers. Compiled for sm_90 (`python -m hotpath compilecheck`), the engine's kernels spill once
# a thread holds more score-tile elements (rows * cols / threads) than these; a tl.dot outside the
# tensor cores (IEEE fp32 / fp64 FMAs) also keeps operand rows per thread, so there the bound is on
# elements * BLOCK_D. Measured: d = 64 IEEE backward spills at 16 elements (1 KB), not at 8.
FWD_ELEMS, BWD_ELEMS, X3_BWD_ELEMS = 64, 32, 16
FMA_FWD, FMA_BWD = 2048, 512


def score_elems(c, rows, cols):
    return c.kwargs[rows] * c.kwargs[cols] / (32 * c.num_warps)


def reg_rule(rows, cols, kw, dtype, bwd):
    """(fits, size) for prune(): the register bounds above for this launch's path. A forward with
    k > SMALL_MAX values adds its value dot, (rows, BLOCK_K) accumulators reduced over the columns
    (compiled: d = k = 64 IEEE spills at 64 x 32 over 4 warps, 24 B, not at 32 x 32)."""
    fma = kw["PREC"] == "ieee" and dtype in (torch.float32, torch.float64) and not kw.get("SMALL_D")
    cap, fma_cap = (BWD_ELEMS, FMA_BWD) if bwd else (FWD_ELEMS, FMA_FWD)
    if bwd and kw["PREC"] == "tf32x3" and not kw.get("SMALL_D"):
        # the backward's two 3xTF32 dots hold both operands' high and low parts: d = 64 compiled
        # for sm_90 spills 0.1-0.5 KB at 32 elements a thread (64 x 64 over 4 warps, 64 x 128
        # over 8), none at 16
        cap = X3_BWD_ELEMS
    kv = kw["BLOCK_K"] if kw.get("HAS_V") and not kw.get("SMALL_K") and not bwd else 0
    if kv and kw["PREC"] == "tf32x3":
        cap = FWD_ELEMS // 2   # 3xTF32 with its value dot: d = k = 64 spills at 64 elements a thread

    def size(c):
        return score_elems(c, rows, cols)

    def fma_cost(c):
        values = c.kwargs[rows] * kv / (32 * c.num_warps) * c.kwargs[cols]
        return size(c) * kw["BLOCK_D"] + values

    def fits(c):   # with a value dot the two dots' operands compete: half the budget
        return size(c) <= cap and (not fma or fma_cost(c) <= (fma_cap // 2 if kv else fma_cap))
    return fits, size


@triton.jit
def _scal(hi, lo, dt: tl.constexpr):
    return tl.cast(hi, dt) + tl.cast(lo, dt)


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _col(a, offs_w, kk: tl.constexpr):
    """Column kk of a register tile a (rows, W) whose column indices are offs_w."""
    return tl.sum(tl.where(offs_w[None, :] == kk, a, 0.0), 1)


@triton.jit
def _outer_dot(a, b, offs_w, acc, DS: tl.constexpr):
    """acc + a @ b.T over the first DS columns of a (R, W) and b (C, W): DS rank-1 updates, each a
    fused multiply-add as a GEMM's inner loop does it (one rounding: a product past the float
    range overflows only if the running sum does, as in the reference's matmul, on the GPU and
    in the interpreter alike)."""
    for kk in tl.static_range(DS):
        acc = tl.fma(_col(a, offs_w, kk)[:, None], _col(b, offs_w, kk)[None, :], acc)
    return acc


@triton.jit
def _outer_acc(w, c, offs_w, acc, DS: tl.constexpr):
    """acc + w @ c for w (R, C) and the first DS columns of c (C, W): one row sum per column."""
    for kk in tl.static_range(DS):
        part = tl.sum(w * _col(c, offs_w, kk)[None, :], 1)
        acc += tl.where(offs_w[None, :] == kk, part[:, None], 0.0)
    return acc


@triton.jit
def _dots(R, C, offs_r, offs_c, n_r, n_c, d, s_rn, s_cn, acc,
          BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + R[offs_r] @ C[offs_c]^T over the feature dimension in BLOCK_D chunks."""
    for d0 in range(0, d, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        r = tl.load(R + offs_r[:, None] * s_rn + offs_d[None, :],
                    mask=(offs_r[:, None] < n_r) & (offs_d[None, :] < d), other=0.0)
        c = tl.load(C + offs_c[:, None] * s_cn + offs_d[None, :],
                    mask=(offs_c[:, None] < n_c) & (offs_d[None, :] < d), other=0.0)
        acc = _mma(r, tl.trans(c), acc, PREC, UPCAST)
    return acc


# -- forward -----------------------------------------------------------------------------------------

@triton.jit
def _lse_fwd_kernel(X, Y, RB, CB, Vv, LSE, OUT, n, m, d, k, a_hi, a_lo,
                    s_xb, s_xn, s_yb, s_yn, s_rbb, s_cbb, s_vb, s_vn, s_lb, s_ob, s_on, n_bucket, m_bucket,
                    HAS_RB: tl.constexpr, HAS_V: tl.constexpr, ONE_D: tl.constexpr, PREC: tl.constexpr,
                    UPCAST: tl.constexpr, SMALL_D: tl.constexpr, SMALL_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """lse_i = LSE_j score_ij (base-2 online max / sum), out_i = sum_j softmax_ij v_j.
    alpha (a_hi + a_lo), RB and CB arrive multiplied by log2(e). SMALL_D / SMALL_K > 0: the
    scores / the value sums as that many rank-1 updates instead of tl.dot."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    X += b * s_xb
    Y += b * s_yb
    CB += b * s_cbb
    alpha = _scal(a_hi, a_lo, dt)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_D:  # the row tile stays on chip for the whole column loop
        xt = tl.load(X + offs_m[:, None] * s_xn + offs_d[None, :],
                     mask=(offs_m[:, None] < n) & (offs_d[None, :] < d), other=0.0)
    if HAS_RB:
        rb = tl.load(RB + b * s_rbb + offs_m, mask=offs_m < n, other=0.0).to(dt)
    m_i = tl.full((BLOCK_M,), -float("inf"), dtype=dt)
    l_i = tl.zeros((BLOCK_M,), dtype=dt)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=dt)
    for n0 in range(0, m, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if ONE_D:
            yt = tl.load(Y + offs_n[:, None] * s_yn + offs_d[None, :],
                         mask=(offs_n[:, None] < m) & (offs_d[None, :] < d), other=0.0)
            if SMALL_D > 0:
                t = _outer_dot(xt.to(dt), yt.to(dt), offs_d, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt), SMALL_D)
            else:
                t = _mma(xt, tl.trans(yt), tl.zeros((BLOCK_M, BLOCK_N), dtype=dt), PREC, UPCAST)
        else:
            t = _dots(X, Y, offs_m, offs_n, n, m, d, s_xn, s_yn, tl.zeros((BLOCK_M, BLOCK_N), dtype=dt),
                      BLOCK_D, PREC, UPCAST)
        cb = tl.load(CB + offs_n, mask=offs_n < m, other=-float("inf")).to(dt)
        t = t * alpha + cb[None, :]
        if HAS_RB:
            t += rb[:, None]
        # padded columns read x * 0, NaN for an infinite x: mask them before they count
        t = tl.where(offs_n[None, :] < m, t, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(t, 1))
        # shift by 0 when the max is infinite: -inf rows stay empty (l = 0), +inf rows get l = inf
        # (lse = +inf, the reference's answer) instead of inf - inf = NaN
        m_safe = tl.where(tl.abs(m_new) == float("inf"), 0.0, m_new)
        p = tl.math.exp2(t - m_safe[:, None])
        corr = tl.math.exp2(m_i - m_safe)
        l_i = l_i * corr + tl.sum(p, 1)
        if HAS_V:
            v = tl.load(Vv + b * s_vb + offs_n[:, None] * s_vn + offs_k[None, :],
                        mask=(offs_n[:, None] < m) & (offs_k[None, :] < k), other=0.0)
            if SMALL_K > 0:
                acc = _outer_acc(p, v.to(dt), offs_k, acc * corr[:, None], SMALL_K)
            else:
                acc = _mma(p.to(v.dtype), v, acc * corr[:, None], PREC, UPCAST)
        m_i = m_new
    # l = 0: every column masked (-inf); l = NaN: a NaN score (propagates as NaN, as the reference)
    empty = l_i == 0
    lse = tl.where(empty, -float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * _LN2)
    tl.store(LSE + b * s_lb + offs_m, lse, mask=offs_m < n)
    if HAS_V:
        zero = empty | (m_i == float("inf"))
        out = tl.where(zero[:, None], 0.0, acc / tl.where(zero, 1.0, l_i)[:, None])
        out = tl.where((l_i != l_i)[:, None], float("nan"), out)
        tl.store(OUT + b * s_ob + offs_m[:, None] * s_on + offs_k[None, :], out,
                 mask=(offs_m[:, None] < n) & (offs_k[None, :] < k))


# -- backward ----------------------------------------------------------------------------------------

@triton.jit
def _softmax_bwd_kernel(R, C, RB, CB, RA, CA, RV, CV, ACC, RSUM, ACC2, n_r, n_c, d, k, a_hi, a_lo,
                        s_rb, s_rn, s_cb, s_cn, s_rbb, s_cbb, s_rab, s_cab, s_rvb, s_rvn, s_cvb, s_cvn,
                        s_accb, s_accn, s_rsb, s_a2b, s_a2n, n_bucket, m_bucket,
                        HAS_RB: tl.constexpr, HAS_RA: tl.constexpr, HAS_CA: tl.constexpr, HAS_V: tl.constexpr,
                        WANT_ACC2: tl.constexpr, ONE_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                        SMALL_D: tl.constexpr, SMALL_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """e = 2^score (the biases carry -lse, all in base 2); dS = e * (ra_i + ca_j + <rv_i, cv_j>);
    acc_i = sum_j dS_ij c_j, rsum_i = sum_j dS_ij, acc2_i = sum_j e_ij cv_j.
    ONE_D: d <= BLOCK_D, the column tile feeds both the score and the acc dot and acc lives in
    registers. Otherwise the score is a chunked dot and acc (zeroed by the launcher, owned by this
    program alone) is read, added to and written back chunk by chunk after each column tile."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dt = tl.float64 if R.dtype.element_ty == tl.float64 else tl.float32
    R += b * s_rb
    C += b * s_cb
    CB += b * s_cbb
    ACC += b * s_accb
    alpha = _scal(a_hi, a_lo, dt)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    rmask = offs_r < n_r
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=dt)
    rsum = tl.zeros((BLOCK_R,), dtype=dt)
    acc2 = tl.zeros((BLOCK_R, BLOCK_K), dtype=dt)
    ra = tl.zeros((BLOCK_R,), dtype=dt)
    if HAS_RA:
        ra = tl.load(RA + b * s_rab + offs_r, mask=rmask, other=0.0).to(dt)
    if HAS_RB:
        rb = tl.load(RB + b * s_rbb + offs_r, mask=rmask, other=-float("inf")).to(dt)
    if HAS_V:
        rv = tl.load(RV + b * s_rvb + offs_r[:, None] * s_rvn + offs_k[None, :],
                     mask=rmask[:, None] & (offs_k[None, :] < k), other=0.0)
    if ONE_D:
        rt = tl.load(R + offs_r[:, None] * s_rn + offs_d[None, :],
                     mask=rmask[:, None] & (offs_d[None, :] < d), other=0.0)
    for c0 in range(0, n_c, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < n_c
        if ONE_D:
            ct = tl.load(C + offs_c[:, None] * s_cn + offs_d[None, :],
                         mask=cmask[:, None] & (offs_d[None, :] < d), other=0.0)
            if SMALL_D > 0:
                s = _outer_dot(rt.to(dt), ct.to(dt), offs_d, tl.zeros((BLOCK_R, BLOCK_C), dtype=dt), SMALL_D)
            else:
                s = _mma(rt, tl.trans(ct), tl.zeros((BLOCK_R, BLOCK_C), dtype=dt), PREC, UPCAST)
        else:
            s = _dots(R, C, offs_r, offs_c, n_r, n_c, d, s_rn, s_cn, tl.zeros((BLOCK_R, BLOCK_C), dtype=dt),
                      BLOCK_D, PREC, UPCAST)
        cb = tl.load(CB + offs_c, mask=cmask, other=-float("inf")).to(dt)
        s = s * alpha + cb[None, :]
        if HAS_RB:
            s += rb[:, None]
        e = tl.where(cmask[None, :], tl.math.exp2(s), 0.0)
        w = tl.zeros((BLOCK_R, BLOCK_C), dtype=dt) + ra[:, None]
        if HAS_CA:
            ca = tl.load(CA + b * s_cab + offs_c, mask=cmask, other=0.0).to(dt)
            w += ca[None, :]
        if HAS_V:
            cv = tl.load(CV + b * s_cvb + offs_c[:, None] * s_cvn + offs_k[None, :],
                         mask=cmask[:, None] & (offs_k[None, :] < k), other=0.0)
            if SMALL_K > 0:
                w = _outer_dot(rv.to(dt), cv.to(dt), offs_k, w, SMALL_K)
                if WANT_ACC2:
                    acc2 = _outer_acc(e, cv.to(dt), offs_k, acc2, SMALL_K)
            else:
                w = _mma(rv, tl.trans(cv), w, PREC, UPCAST)
                if WANT_ACC2:
                    acc2 = _mma(e.to(cv.dtype), cv, acc2, PREC, UPCAST)
        ds = e * w
        rsum += tl.sum(ds, 1)
        if ONE_D:
            if SMALL_D > 0:
                acc = _outer_acc(ds, ct.to(dt), offs_d, acc, SMALL_D)
            else:
                acc = _mma(ds.to(ct.dtype), ct, acc, PREC, UPCAST)
        else:
            for d0 in range(0, d, BLOCK_D):
                od = d0 + offs_d
                cf = tl.load(C + offs_c[:, None] * s_cn + od[None, :],
                             mask=cmask[:, None] & (od[None, :] < d), other=0.0)
                ptr = ACC + offs_r[:, None] * s_accn + od[None, :]
                msk = rmask[:, None] & (od[None, :] < d)
                part = _mma(ds.to(cf.dtype), cf, tl.load(ptr, mask=msk, other=0.0), PREC, UPCAST)
                tl.store(ptr, part, mask=msk)
    if ONE_D:
        tl.store(ACC + offs_r[:, None] * s_accn + offs_d[None, :], acc,
                 mask=rmask[:, None] & (offs_d[None, :] < d))
    tl.store(RSUM + b * s_rsb + offs_r, rsum, mask=rmask)
    if WANT_ACC2:
        tl.store(ACC2 + b * s_a2b + offs_r[:, None] * s_a2n + offs_k[None, :], acc2,
                 mask=rmask[:, None] & (offs_k[None, :] < k))


# -- configs -------------------------------------------------------------------------------------------

def _cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


# (rows, cols, warps, stages); d <= 16 is exp-bound (wide tiles), d >= 32 is dot-bound
_CONFIGS_NARROW = [_cfg(128, 64, 4, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3)]
# (64, 32, 4, 2) keeps d = 128 fp32 under 99 KB (68 KB); the larger ones are for Hopper's 227 KB
_CONFIGS_WIDE = [_cfg(128, 64, 8, 2), _cfg(64, 64, 4, 3), _cfg(128, 128, 8, 2), _cfg(64, 128, 4, 2), _cfg(64, 32, 4, 2),
                 _cfg(32, 32, 4, 2)]
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 16}   # one small config: several tiles even at n, m = 33


def _width(d):
    """(BLOCK_D, ONE_D): the whole padded feature row when it is narrow, else 64-wide chunks."""
    D = pow2(d)
    return (D, True) if D <= ACC_REG_MAX else (64, False)


def _fwd_need(cfg, nbytes, kw):
    BD, BK = kw["BLOCK_D"], kw["BLOCK_K"] if kw.get("HAS_V") else 0
    return smem_need(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], BD, BK, cfg.num_stages, nbytes, kw["ONE_D"])


def _fwd_prune(configs, nargs, **kw):
    x = nargs["X"]
    return prune(configs, lambda c: _fwd_need(c, x.element_size(), kw), smem_limit(x.device),
                 reg_rule("BLOCK_M", "BLOCK_N", kw, x.dtype, bwd=False))


def _bwd_prune(configs, nargs, **kw):
    r = nargs["R"]
    kw = dict(kw, HAS_V=kw.get("HAS_V"))
    BD, BK = kw["BLOCK_D"], kw["BLOCK_K"] if kw.get("HAS_V") else 0

    def need(c):
        # the row tile, buffered column + column-value tiles, and the (rows, BLOCK_D) acc operand
        return smem_need(c.kwargs["BLOCK_R"], c.kwargs["BLOCK_C"], BD, BK, c.num_stages, r.element_size(),
                         kw["ONE_D"])
    return prune(configs, need, smem_limit(r.device), reg_rule("BLOCK_R", "BLOCK_C", kw, r.dtype, bwd=True))


def _bwd_cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_R": bm, "BLOCK_C": bn}, num_warps=w, num_stages=s)


# at most BWD_ELEMS score elements per thread; the last two (8 elements) serve IEEE fp32 / fp64 at d = 64
_BWD_CONFIGS_NARROW = [_bwd_cfg(128, 64, 8, 2), _bwd_cfg(64, 64, 4, 3), _bwd_cfg(64, 128, 8, 2)]
_BWD_CONFIGS_WIDE = [_bwd_cfg(64, 64, 4, 2), _bwd_cfg(128, 64, 8, 2), _bwd_cfg(64, 128, 8, 2), _bwd_cfg(64, 32, 4, 2),
                     _bwd_cfg(64, 32, 8, 2), _bwd_cfg(32, 32, 4, 2)]
# every specialization tunes on its own: the precision switch (IEEE / TF32) can change between
# calls and the row / column passes of the backward differ (an autotuner caches per key)
_KEY = ["d", "k", "n_bucket", "m_bucket", "PREC", "SMALL_D", "SMALL_K", "HAS_RB", "HAS_V", "HAS_RA", "HAS_CA",
        "WANT_ACC2", "ONE_D"]


def tune_key(kernel, names):
    """The autotune key: those of `names` that are arguments of `kernel` (Triton rejects others)."""
    return [k for k in names if k in kernel.arg_names]


_fwd_tuned = {
    narrow: triton.autotune(configs=cfgs, key=tune_key(_lse_fwd_kernel, _KEY),
                            prune_configs_by={"early_config_prune": _fwd_prune})(_lse_fwd_kernel)
    for narrow, cfgs in ((True, _CONFIGS_NARROW), (False, _CONFIGS_WIDE))}
_bwd_tuned = {
    narrow: triton.autotune(configs=cfgs, key=tune_key(_softmax_bwd_kernel, _KEY), reset_to_zero=["ACC"],   # wide d adds into ACC
                            prune_configs_by={"early_config_prune": _bwd_prune})(_softmax_bwd_kernel)
    for narrow, cfgs in ((True, _BWD_CONFIGS_NARROW), (False, _BWD_CONFIGS_WIDE))}


def _launch(tuned, plain, grid_rows, B, interp_cfg, narrow, *args, **kw):
    """Autotuned on a GPU; one fixed small config under the interpreter (which cannot time)."""
    if interpreting():
        blk = dict(interp_cfg)
        rows = blk[next(iter(blk))]
        plain[(triton.cdiv(grid_rows, rows), B)](*args, **kw, **blk)
    else:
        grid = lambda meta: (triton.cdiv(grid_rows, meta[next(iter(interp_cfg))]), B)  # noqa: E731
        tuned[narrow][grid](*args, **kw)


# -- launchers -----------------------------------------------------------------------------------------

def _side(r, c, scale, metric, row_bias, col_bias):
    """(alpha, rowb, colb) of the expanded scores for rows r against columns c, the biases in the
    accumulation dtype and multiplied by log2(e); alpha likewise (a double)."""
    B, nr, _ = r.shape
    nc = c.shape[1]
    at = acc_dtype(r.dtype)
    rb = None if row_bias is None else row_bias.to(at)
    cb = None if col_bias is None else col_bias.to(at)
    if metric == "sqeuclidean":
        rn, cn = -scale * r.to(at).pow(2).sum(2), -scale * c.to(at).pow(2).sum(2)
        rb = rn if rb is None else rb + rn
        cb = cn if cb is None else cb + cn
        alpha = 2 * scale
    else:
        alpha = scale
    if cb is None:
        cb = r.new_zeros(B, nc, dtype=at)
    rb = None if rb is None else (rb * LOG2E).contiguous()
    return alpha * LOG2E, rb, (cb * LOG2E).contiguous()


SMALL_MAX = 4   # widths (d, k) taken as rank-1 updates when the dots would run outside tensor cores


def _small(width, dtype):
    """(SMALL, BLOCK): the rank-1 update count and the tile width for a feature / value width,
    or (0, the tl.dot width)."""
    if 0 < width <= SMALL_MAX and dtype in (torch.float32, torch.float64) and dot_precision(dtype) != "tf32":
        return width, pow2(width, lo=4)
    return 0, pow2(width)


def _prec(dtype, small_d, small_k, k):
    """PREC of a launch: unread where every product is a rank-1 FMA update (SMALL_D with no value
    dot), so it is "ieee" there and 3xTF32 / IEEE share one compiled kernel and autotuning."""
    return "ieee" if small_d and (k == 0 or small_k) else dot_precision(dtype)


def _tiles(d, k, dtype):
    """(BLOCK_D, ONE_D, SMALL_D, SMALL_K, BLOCK_K) of a forward or backward launch."""
    BLOCK_D, one_d = _width(d)
    small_d, bd = _small(d, dtype)
    small_k, bk = _small(k, dtype)
    return (bd if small_d else BLOCK_D), one_d, small_d, small_k, bk


def pairwise_lse_fwd(x, y, col_bias, values, scale, metric):
    B, n, d = x.shape
    m = y.shape[1]
    k = 0 if values is None else values.shape[2]
    at = acc_dtype(x.dtype)
    lse = x.new_empty(B, n, dtype=at)
    out = x.new_zeros(B, n, k, dtype=at)
    if B == 0 or n == 0:
        return lse, out
    x, y = x.contiguous(), y.contiguous()
    values = None if values is None else values.to(x.dtype).contiguous()
    alpha, rb, cb = _side(x, y, scale, metric, None, col_bias)
    BLOCK_D, one_d, small_d, small_k, bk = _tiles(d, k, x.dtype)
    v = values if values is not None else x
    rbt = rb if rb is not None else cb
    a_hi, a_lo = split(alpha)
    _launch(_fwd_tuned, _lse_fwd_kernel, n, B, _INTERP, d <= 16,
            x, y, rbt, cb, v, lse, out, n, m, d, k, a_hi, a_lo,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1),
            rbt.stride(0) if rb is not None else 0, cb.stride(0),
            v.stride(0), v.stride(1), lse.stride(0), out.stride(0), out.stride(1), bucket(n), bucket(m),
            HAS_RB=rb is not None, HAS_V=values is not None, ONE_D=one_d, PREC=_prec(x.dtype, small_d, small_k, k),
            UPCAST=upcast(x.dtype), SMALL_D=small_d, SMALL_K=small_k, BLOCK_D=BLOCK_D, BLOCK_K=bk)
    return lse, out


_BWD_INTERP = {"BLOCK_R": 16, "BLOCK_C": 16}


def _bwd_pass(r, c, scale, metric, row_bias, col_bias, ra, ca, rv, cv, want_acc2):
    B, nr, d = r.shape
    nc = c.shape[1]
    k = 0 if rv is None else rv.shape[2]
    at = acc_dtype(r.dtype)
    alpha, rb, cb = _side(r, c, scale, metric, row_bias, col_bias)
    acc = r.new_zeros(B, nr, d, dtype=at)
    rsum = r.new_zeros(B, nr, dtype=at)
    acc2 = r.new_zeros(B, nr, k, dtype=at) if want_acc2 else rsum
    if nr == 0 or nc == 0 or B == 0:
        return acc, rsum, (acc2 if want_acc2 else None)
    if rv is not None:
        rv, cv = rv.to(r.dtype).contiguous(), cv.to(r.dtype).contiguous()
    ra = None if ra is None else ra.to(at).contiguous()
    ca = None if ca is None else ca.to(at).contiguous()
    dummy = rsum
    BLOCK_D, one_d, small_d, small_k, bk = _tiles(d, k, r.dtype)
    a_hi, a_lo = split(alpha)
    _launch(_bwd_tuned, _softmax_bwd_kernel, nr, B, _BWD_INTERP, d <= 16,
            r, c, rb if rb is not None else dummy, cb, ra if ra is not None else dummy,
            ca if ca is not None else dummy, rv if rv is not None else r, cv if cv is not None else r,
            acc, rsum, acc2, nr, nc, d, k, a_hi, a_lo,
            r.stride(0), r.stride(1), c.stride(0), c.stride(1),
            rb.stride(0) if rb is not None else 0, cb.stride(0),
            ra.stride(0) if ra is not None else 0, ca.stride(0) if ca is not None else 0,
            rv.stride(0) if rv is not None else 0, rv.stride(1) if rv is not None else 0,
            cv.stride(0) if cv is not None else 0, cv.stride(1) if cv is not None else 0,
            acc.stride(0), acc.stride(1), rsum.stride(0), acc2.stride(0) if want_acc2 else 0,
            acc2.stride(1) if want_acc2 else 0, bucket(nr), bucket(nc),
            HAS_RB=rb is not None, HAS_RA=ra is not None, HAS_CA=ca is not None, HAS_V=rv is not None,
            WANT_ACC2=want_acc2, ONE_D=one_d, PREC=_prec(r.dtype, small_d, small_k, k), UPCAST=upcast(r.dtype),
            SMALL_D=small_d, SMALL_K=small_k, BLOCK_D=BLOCK_D, BLOCK_K=bk)
    return acc, rsum, (acc2 if want_acc2 else None)


def pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric, need_rows=True,
                     need_cols=True):
    at = acc_dtype(x.dtype)
    x, y = x.contiguous(), y.contiguous()
    lse = lse.to(at)
    # a row with no unmasked column (lse = -inf) has softmax 0: its bias must be -inf, not +inf
    neg_lse = torch.where(torch.isinf(lse) & (lse < 0), torch.full_like(lse, -float("inf")), -lse).contiguous()
    a = grad_lse.to(at)
    if values is not None:
        a = a - (grad_out.to(at) * out.to(at)).sum(2)
    a = a.contiguous()
    sq = metric == "sqeuclidean"
    coef_a, coef_b = (2 * scale, -2 * scale) if sq else (scale, 0.0)
    gx, gy, gc, gv = torch.zeros_like(x), torch.zeros_like(y), None, None
    if need_rows:
        acc, rsum, _ = _bwd_pass(x, y, scale, metric, neg_lse, col_bias, a, None, grad_out, values, False)
        gx = (coef_a * acc + coef_b * rsum[..., None] * x.to(at)).to(x.dtype)
    if need_cols:
        acc, rsum, gv = _bwd_pass(y, x, scale, metric, col_bias, neg_lse, None, a, values, grad_out,
                                  values is not None)
        gy = (coef_a * acc + coef_b * rsum[..., None] * y.to(at)).to(y.dtype)
        gc = rsum.to(col_bias.dtype) if col_bias is not None else None
        gv = None if gv is None else gv.to(values.dtype)
    empty = x.new_zeros(0)
    return gx, gy, (gc if gc is not None else empty), (gv if gv is not None else empty)
