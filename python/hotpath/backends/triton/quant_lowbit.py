"""Triton kernels of the low-bit formats: FP4 (MXFP4 / NVFP4) and FP8 linear with the
decode in the GEMM prologue (arithmetic decode of E2M1 / E4M3 / E5M2 / E8M0 codes, or the
hardware fp8 conversion on sm_89+, into the activations' dtype feeding tl.dot; tiled prefill GEMM
over M and split-K decode GEMV, planned by _qgemm.run_linear), FP8 dynamic (per-token E4M3
activations; fp8 x fp8 tensor-core dots on sm_89+, exact E4M3 values in bf16 / fp32 elsewhere),
ternary linear on int8 activations (tl.dot int8 -> int32, exact), and tiled
score kernels for quantized embedding search (int8 dot products; SWAR popcount Hamming) whose
tiles are merged by a running top-k per chunk of keys. Layouts: hotpath/reference/quant_lowbit.py.
"""
import torch
import triton
import triton.language as tl

from hotpath.quant.packing import topk_desc

from . import _qgemm as Q
from . import contrastive as _contrastive
from ._qgemm import KEY, _x_and_policy, grouped_tile, store_tile
from .target import capability, on_gpu


# Decoders build the float32 bit pattern with integer ops (no exp2: the special-function unit's
# throughput would cap a decode GEMV well below HBM speed); exact for every code.
@triton.jit
def _e2m1(c):
    mag = c & 7
    e = mag >> 1
    m = mag & 1
    # normal: (1 + m / 2) 2^(e - 1) -> exponent field e + 126, mantissa bit 22; e == 0: 0 or 0.5
    bits = tl.where(e == 0, m * (126 << 23), ((e + 126) << 23) | (m << 22))
    bits = bits | ((c & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e4m3(c):
    e = (c >> 3) & 15
    m = c & 7
    v = tl.where(e == 0, m.to(tl.float32) * 0.001953125,
                 (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True))
    v = tl.where((e == 15) & (m == 7), float("nan"), v)
    return tl.where((c & 128) != 0, -v, v)


@triton.jit
def _e5m2(c):
    e = (c >> 2) & 31
    mi = c & 3
    m = mi.to(tl.float32)
    v = tl.where(e == 0, m * 1.52587890625e-05, (((e + 112) << 23) | (mi << 21)).to(tl.float32, bitcast=True))
    v = tl.where(e == 31, tl.where(mi == 0, float("inf"), float("nan")), v)
    return tl.where((c & 128) != 0, -v, v)


@triton.jit
def _e8m0(c):
    # 2^(c - 127): exponent field c; c == 0 is the subnormal 2^-127; 255 is NaN
    v = tl.where(c == 0, 1 << 22, c << 23).to(tl.float32, bitcast=True)
    return tl.where(c == 255, float("nan"), v)


# ---------------- prefill GEMM / decode GEMV of the weight-only float formats ----------------
# Convention and launch plans: backends/triton/_qgemm.py (run_linear). The weight tile is decoded
# in registers into the activations' dtype and fed to tl.dot: E2M1 x E8M0, E2M1 x E4M3 (at most
# 6 significant bits) and E4M3 / E5M2 values are exact in bf16 and fp16, so a bf16 / fp16
# activation runs on the tensor cores with no rounding of the weight; float32 activations follow
# the TF32 switch (Q.compute_dtype).


@triton.jit
def _fp4_kernel(X, P, Sc, B, RF, Y, M, N, K, K_SPLIT, MB, RB, NBLK, GS, NV: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    split = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    # BK weights = BK / 2 bytes per channel: byte jb of a step holds (low nibble) the weight at
    # kl = 32 * (jb // 16) + jb % 16 and (high nibble) the one at kl + 16 (the 32-weight chunks)
    jb = tl.arange(0, BK // 2)
    kl = (jb // 16) * 32 + jb % 16
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BK):
        k_lo = k0 + kl
        k_hi = k_lo + 16
        w_lo, w_hi = _fp4_tile(P, Sc, rn, nmask, k0, k_end, RB, NBLK, NV, BN, BK)
        x_lo = tl.load(X + rm[:, None] * K + k_lo[None, :], mask=mmask[:, None] & (k_lo < k_end)[None, :], other=0.0)
        x_hi = tl.load(X + rm[:, None] * K + k_hi[None, :], mask=mmask[:, None] & (k_hi < k_end)[None, :], other=0.0)
        acc = tl.dot(x_lo.to(DT), tl.trans(w_lo.to(DT)), acc, input_precision=PREC)
        acc = tl.dot(x_hi.to(DT), tl.trans(w_hi.to(DT)), acc, input_precision=PREC)
    y = acc * tl.load(GS)   # the per-tensor scale, read on the device (no host sync per call)
    store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS, HAS_RF)


_fp4_tuner = Q.autotuned(_fp4_kernel, KEY)


@triton.jit
def _fp4_tile(P, Sc, rn, nmask, k0, k_end, RB, NBLK, NV: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Channels rn, weights k0 .. k0 + BK - 1 (below k_end) as float32 E2M1 x block scale (no
    per-tensor scale): (w_lo, w_hi), each (BN, BK / 2), at k0 + kl and k0 + kl + 16 with
    kl = 32 * (jb // 16) + jb % 16 for byte jb of the step (the 32-weight chunks)."""
    jb = tl.arange(0, BK // 2)
    k_lo = k0 + (jb // 16) * 32 + jb % 16
    byte = tl.load(P + rn[:, None] * RB + k0 // 2 + jb[None, :], mask=nmask[:, None] & (k_lo < k_end)[None, :],
                   other=0).to(tl.int32)
    # block scales: one load per (channel, block), widened to the bytes in registers
    # (chunk-major: byte jb belongs to chunk jb // 16), not one gathered load per weight
    if NV:
        t = tl.arange(0, BK // 16)                       # blocks of 16 in this step
        sv = _e4m3(tl.load(Sc + rn[:, None] * NBLK + (k0 // 16 + t)[None, :],
                           mask=nmask[:, None] & ((k0 + 16 * t) < k_end)[None, :], other=0).to(tl.int32))
        s_lo, s_hi = tl.split(tl.reshape(sv, (BN, BK // 32, 2)))     # even blocks: low nibbles
        s_lo = tl.reshape(tl.broadcast_to(s_lo[:, :, None], (BN, BK // 32, 16)), (BN, BK // 2))
        s_hi = tl.reshape(tl.broadcast_to(s_hi[:, :, None], (BN, BK // 32, 16)), (BN, BK // 2))
    else:
        t = tl.arange(0, BK // 32)                       # blocks of 32 = chunks
        sv = _e8m0(tl.load(Sc + rn[:, None] * NBLK + (k0 // 32 + t)[None, :],
                           mask=nmask[:, None] & ((k0 + 32 * t) < k_end)[None, :], other=127).to(tl.int32))
        s_lo = tl.reshape(tl.broadcast_to(sv[:, :, None], (BN, BK // 32, 16)), (BN, BK // 2))
        s_hi = s_lo
    return _e2m1(byte & 15) * s_lo, _e2m1(byte >> 4) * s_hi


@triton.jit
def _fp4_dequant_kernel(P, Sc, RB, NBLK, GS, OUT, N, K, NV: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k0 = tl.program_id(1) * BK
    nmask = rn < N
    w_lo, w_hi = _fp4_tile(P, Sc, rn, nmask, k0, K, RB, NBLK, NV, BN, BK)
    jb = tl.arange(0, BK // 2)
    k_lo = k0 + (jb // 16) * 32 + jb % 16
    gs = tl.load(GS)
    tl.store(OUT + rn[:, None] * K + k_lo[None, :], w_lo * gs, mask=nmask[:, None] & (k_lo < K)[None, :])
    tl.store(OUT + rn[:, None] * K + (k_lo + 16)[None, :], w_hi * gs, mask=nmask[:, None] & ((k_lo + 16) < K)[None, :])


def fp4_smem(cfg, x_bytes):
    BM, BN, BK, _, stages = cfg[:5]
    # packed bytes (and the 1/16 scale bytes) are pipelined; the decoded tile is the operand
    return Q.smem_bytes(BM, BN, BK, x_bytes, 0.5 + 1.0 / 16, stages, b_op_bytes=x_bytes)


def fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias):
    M, K = x.shape
    N = packed.shape[0]
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    od = Q.out_dtype(x)
    x, DT, PREC, xb = _x_and_policy(x)
    b = bias.contiguous().float() if bias is not None else None
    p, sc = packed.contiguous(), scales.contiguous()
    layout = (packed.shape[1], scales.shape[1], tensor_scale.float().reshape(-1).contiguous())
    return Q.run_linear(_fp4_kernel, _fp4_tuner, (x, p, sc),
                        dict(NV=scale_kind == 1, DT=DT, PREC=PREC), b, x, N, K, lambda c: fp4_smem(c, xb), step=32,
                        extra=layout, y_dtype=od, flag_rows_of=x,
                        dequant=lambda dt: Q.dequantize(_fp4_dequant_kernel, (p, sc) + layout, N, K, dt,
                                                        NV=scale_kind == 1))


@triton.jit
def _fp8_kernel(X, C, S, B, RF, Y, M, N, K, K_SPLIT, MB, E4M3: tl.constexpr, NATIVE: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    split = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < k_end
        c = tl.load(C + rn[None, :] * K + kk[:, None], mask=nmask[None, :] & kmask[:, None], other=0)
        w = _fp8_values(c, E4M3, NATIVE).to(DT)
        x = tl.load(X + rm[:, None] * K + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(x.to(DT), w, acc, input_precision=PREC)
    y = acc * tl.load(S + rn, mask=nmask, other=0.0)[None, :]
    store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS, HAS_RF)


@triton.jit
def _fp8_values(c, E4M3: tl.constexpr, NATIVE: tl.constexpr):
    """uint8 codes -> their values (float32, or fp8 converted by hardware where NATIVE)."""
    if NATIVE:
        if E4M3:
            v = c.to(tl.float8e4nv, bitcast=True)
        else:
            v = c.to(tl.float8e5, bitcast=True)
    else:
        if E4M3:
            v = _e4m3(c.to(tl.int32))
        else:
            v = _e5m2(c.to(tl.int32))
    return v


_fp8_tuner = Q.autotuned(_fp8_kernel, KEY)


@triton.jit
def _fp8_dequant_kernel(C, S, OUT, N, K, E4M3: tl.constexpr, NATIVE: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    m = (rn < N)[:, None] & (rk < K)[None, :]
    c = tl.load(C + rn[:, None] * K + rk[None, :], mask=m, other=0)
    s = tl.load(S + rn, mask=rn < N, other=0.0)
    tl.store(OUT + rn[:, None] * K + rk[None, :], _fp8_values(c, E4M3, NATIVE).to(tl.float32) * s[:, None], mask=m)


def fp8_smem(cfg, x_bytes):
    BM, BN, BK, _, stages = cfg[:5]
    return Q.smem_bytes(BM, BN, BK, x_bytes, 1, stages, b_op_bytes=max(x_bytes, 1))


def _native_fp8(device):
    # hardware fp8 <-> float conversions (and fp8 tensor cores) from sm_89 (Ada, Hopper) on
    return capability(device) >= (8, 9)


def fp8_linear(x, codes, scales, fmt, bias):
    M, K = x.shape
    N = codes.shape[0]
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    od = Q.out_dtype(x)
    x, DT, PREC, xb = _x_and_policy(x)
    b = bias.contiguous().float() if bias is not None else None
    c, s = codes.contiguous(), scales.contiguous()
    fmt_c = dict(E4M3=fmt == "e4m3", NATIVE=_native_fp8(x.device))
    return Q.run_linear(_fp8_kernel, _fp8_tuner, (x, c, s), dict(**fmt_c, DT=DT, PREC=PREC), b, x, N, K,
                        lambda cfg: fp8_smem(cfg, xb), y_dtype=od, flag_rows_of=x,
                        dequant=lambda dt: Q.dequantize(_fp8_dequant_kernel, (c, s), N, K, dt, **fmt_c))


# ---------------- FP8 dynamic (float8 E4M3 weights per channel, activations per token) ----------------
@triton.jit
def _round_e4m3(v):
    """float32 -> the nearest E4M3 value (ties to even), saturating at +-448: the quantum of the
    binade 2^(e-3) (2^-9 below the smallest normal 2^-6) is built from exponent bits, so v / quantum
    is exact and the rounding is the 1.5 * 2^23 trick. Equal to torch's float8_e4m3fn cast."""
    a = tl.minimum(tl.abs(v), 448.0)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 255) - 127, -6)
    quantum = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    r = ((a * inv + 12582912.0) - 12582912.0) * quantum
    return tl.where(v < 0, -r, r)


@triton.jit
def _row_absmax(X, m, K, BLOCK_K: tl.constexpr):
    """Row m of X (M, K): (the largest finite |x|, whether any entry is NaN or infinite)."""
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    bad = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        a = tl.abs(tl.load(X + m * K + offs, mask=offs < K, other=0.0).to(tl.float32))
        finite = a < float("inf")
        bad = tl.maximum(bad, tl.where(finite, 0, 1))
        amax = tl.maximum(amax, tl.where(finite, a, 0.0))
    am = tl.max(amax, 0)
    is_bad = tl.max(bad, 0) > 0
    return am, is_bad


@triton.jit
def _fp8_act_kernel(X, QX, SX, K, BLOCK_K: tl.constexpr):
    """One program per row: sx = amax / 448 (1 for an all-zero row, NaN for a non-finite one),
    qx = e4m3(x / sx) (0 in a non-finite row), stored in QX's dtype (exact: fp8, bf16 or fp32)."""
    m = tl.program_id(0)
    am, is_bad = _row_absmax(X, m, K, BLOCK_K)
    sx = tl.where(am > 0, tl.math.div_rn(am, 448.0), 1.0)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + m * K + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = _round_e4m3(tl.math.div_rn(x, sx))
        q = tl.where(is_bad, 0.0, q)
        tl.store(QX + m * K + offs, q.to(QX.dtype.element_ty), mask=offs < K)
    tl.store(SX + m, tl.where(is_bad, float("nan"), sx))


def quantize_activations_fp8(x, out_dtype=torch.float32):
    """x (M, K) -> (qx (M, K) out_dtype holding E4M3 values, sx (M,) float32)."""
    M, K = x.shape
    qx = torch.empty(M, K, dtype=out_dtype, device=x.device)
    sx = torch.empty(M, dtype=torch.float32, device=x.device)
    if M > 0 and K > 0:
        _fp8_act_kernel[(M,)](x.contiguous(), qx, sx, K, BLOCK_K=min(1024, triton.next_power_of_2(max(K, 16))))
    return qx, sx


@triton.jit
def _fp8_dyn_kernel(QX, SX, C, S, B, RF, Y, M, N, K, K_SPLIT, MB, FP8_DOT: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                    DT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    split = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < k_end
        a = tl.load(QX + rm[:, None] * K + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        c = tl.load(C + rn[None, :] * K + kk[:, None], mask=nmask[None, :] & kmask[:, None], other=0)
        if FP8_DOT:
            # fp8 x fp8 tensor cores (sm_89+), fp32 accumulation; the codes are the operand bits
            acc = tl.dot(a, c.to(tl.float8e4nv, bitcast=True), acc)
        else:
            # products of two E4M3 values are exact in fp32; bf16 operands hold E4M3 values exactly
            acc = tl.dot(a.to(DT), _e4m3(c.to(tl.int32)).to(DT), acc, input_precision="ieee")
    sx = tl.load(SX + rm, mask=mmask, other=1.0)
    sw = tl.load(S + rn, mask=nmask, other=0.0)
    y = acc * (sx[:, None] * sw[None, :])
    store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS, HAS_RF)


_fp8_dyn_tuner = Q.autotuned(_fp8_dyn_kernel, KEY)


def fp8_dynamic_linear(x, codes, scales, bias):
    """y = (e4m3(x / sx) . e4m3 codes) * sx * s_w + bias, sx = amax(x_row) / 448 per token."""
    M, K = x.shape
    N = codes.shape[0]
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    fp8_dot = _native_fp8(x.device) and hasattr(torch, "float8_e4m3fn")
    if fp8_dot:
        qdt, DT, ab = torch.float8_e4m3fn, tl.float32, 1
    elif on_gpu(x):
        qdt, DT, ab = torch.bfloat16, tl.bfloat16, 2
    else:
        qdt, DT, ab = torch.float32, tl.float32, 4
    qx, sx = quantize_activations_fp8(x, qdt)
    b = bias.contiguous().float() if bias is not None else None
    if _scaled_mm_ok(x, N, K) and Q.prefill_strategy(M, x) == "library":
        y = _fp8_scaled_mm(qx, sx, codes, scales, b)
        if y is not None:
            return y

    def need(c):
        BM, BN, BK, _, stages = c[:5]
        return Q.smem_bytes(BM, BN, BK, ab, 1, stages, b_op_bytes=0 if fp8_dot else ab)
    return Q.run_linear(_fp8_dyn_kernel, _fp8_dyn_tuner, (qx, sx, codes.contiguous(), scales.contiguous()),
                        dict(FP8_DOT=fp8_dot, DT=DT), b, qx, N, K, need, step=32, y_dtype=Q.out_dtype(x))


_SCALED_MM_FAILED = set()   # devices where torch._scaled_mm refused the call once (fused kernel there)


def _scaled_mm_ok(x, N, K):
    """torch._scaled_mm with row-wise scales: bf16 output only (so bf16 activations only), fp8
    GEMM dimensions multiples of 16, fp8 tensor cores on a GPU (sm_89+)."""
    return (x.dtype == torch.bfloat16 and N % 16 == 0 and K % 16 == 0 and hasattr(torch, "_scaled_mm")
            and hasattr(torch, "float8_e4m3fn") and str(x.device) not in _SCALED_MM_FAILED
            and (not on_gpu(x) or _native_fp8(x.device)))


def _fp8_scaled_mm(qx, sx, codes, scales, bias):
    """The "library" prefill of FP8Dynamic: torch._scaled_mm(qx, w^T) * sx[m] * s_w[n] (+ bias),
    bf16 out. A NaN sx (non-finite row) makes a NaN row, as in the fused kernel. None when this
    torch refuses the call (e.g. a build without row-wise scaling): the fused kernel runs instead."""
    a = qx.to(torch.float8_e4m3fn)   # exact: qx holds E4M3 values (already fp8 on sm_89+)
    w = codes.contiguous().view(torch.float8_e4m3fn).t()   # (K, N) column-major, as _scaled_mm wants
    sa, sb = sx[:, None].contiguous(), scales.float()[None, :].contiguous()
    try:
        return torch._scaled_mm(a, w, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                bias=None if bias is None else bias.to(torch.bfloat16))
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError, NotImplementedError):
        try:   # some builds take no bias with row-wise scales
            y = torch._scaled_mm(a, w, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            return y if bias is None else y + bias.to(torch.bfloat16)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, NotImplementedError):
            _SCALED_MM_FAILED.add(str(qx.device))
            return None


# ---------------- ternary: int8 activations x {-1, 0, 1} on int8 tensor cores, exact int32 ----------------
@triton.jit
def _ternary_kernel(XQ, POS, NEG, F, B, RF, Y, M, N, K, K_SPLIT, MB, NW, HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    kk = tl.arange(0, BK)
    bit32 = tl.arange(0, 32)
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for k0 in range(0, K, BK):   # BK % 32 == 0: a step covers BK / 32 whole words
        # one load per word, widened to its 32 bits in registers
        widx = k0 // 32 + tl.arange(0, BK // 32)
        wm = nmask[:, None] & (widx < NW)[None, :]
        p = tl.load(POS + rn[:, None] * NW + widx[None, :], mask=wm, other=0)
        q = tl.load(NEG + rn[:, None] * NW + widx[None, :], mask=wm, other=0)
        pb = (p[:, :, None] >> bit32[None, None, :]) & 1
        nb = (q[:, :, None] >> bit32[None, None, :]) & 1
        t = tl.reshape(pb - nb, (BN, BK)).to(tl.int8)   # (BN, BK), k-major inside each word
        xq = tl.load(XQ + rm[:, None] * K + (k0 + kk)[None, :], mask=mmask[:, None] & ((k0 + kk) < K)[None, :], other=0)
        acc = tl.dot(xq, tl.trans(t), acc, out_dtype=tl.int32)
    f = tl.load(F + rm, mask=mmask, other=0.0)
    y = acc.to(tl.float32) * f[:, None]
    store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS, HAS_RF)


_ternary_tuner = Q.autotuned(_ternary_kernel, KEY)


def ternary_smem(cfg):
    BM, BN, BK, _, stages = cfg[:5]
    # two bit planes: 2 bits per weight loaded; the int8 {-1, 0, 1} tile is the operand
    return Q.smem_bytes(BM, BN, BK, 1, 0.25, stages, b_op_bytes=1)


@triton.jit
def _ternary_act_kernel(X, XQ, F, WS, K, BLOCK_K: tl.constexpr):
    """One program per row, the C++ kernel's rule (BitNet activations): xq = rint(x * (127 / amax))
    in [-127, 127] (0 for an all-zero or non-finite row), f = (amax / 127) * wscale (0 for an
    all-zero row, NaN for a non-finite one). One launch instead of a chain of torch ops: at
    M = 1 the chain alone would cost more than the whole ternary GEMV."""
    m = tl.program_id(0)
    am, is_bad = _row_absmax(X, m, K, BLOCK_K)
    use = (am > 0) & (~is_bad)
    safe = tl.where(use, am, 1.0)
    inv = tl.math.div_rn(127.0, safe)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + m * K + offs, mask=offs < K, other=0.0).to(tl.float32)
        v = (x * inv + 12582912.0) - 12582912.0
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        v = tl.where(use, v, 0.0)
        tl.store(XQ + m * K + offs, v.to(tl.int8), mask=offs < K)
    step = tl.where(am > 0, tl.math.div_rn(safe, 127.0), 0.0)
    step = tl.where(is_bad, float("nan"), step)
    tl.store(F + m, step * tl.load(WS))   # a device scalar: no host sync per call


def ternary_linear(x, pos, neg, wscale, bias):
    M, K = x.shape
    N, NW = pos.shape
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    x = x.contiguous()
    xq = torch.empty(M, K, dtype=torch.int8, device=x.device)
    f = torch.empty(M, dtype=torch.float32, device=x.device)
    _ternary_act_kernel[(M,)](x, xq, f, wscale.float().reshape(-1), K,
                              BLOCK_K=min(1024, triton.next_power_of_2(max(K, 16))))
    b = bias.contiguous().float() if bias is not None else None
    pos, neg = pos.contiguous(), neg.contiguous()
    if Q.int_mm_ok(xq, N) and Q.prefill_strategy(M, x) == "library":
        y = Q.int_mm_prefill(xq, ternary_codes(pos, neg, K), f, None, b, Q.out_dtype(x))
        if y is not None:
            return y
    return Q.run_linear(_ternary_kernel, _ternary_tuner, (xq, pos, neg, f), {}, b, xq, N, K,
                        ternary_smem, step=32, split_ok=False, extra=(NW,), y_dtype=Q.out_dtype(x))


@triton.jit
def _ternary_codes_kernel(POS, NEG, OUT, N, K, NW, BN: tl.constexpr, BW: tl.constexpr):
    """(BN channels x BW words) of the two bit planes -> their {-1, 0, 1} int8 codes, (N, K) row-major."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    widx = tl.program_id(1) * BW + tl.arange(0, BW)
    wm = (rn < N)[:, None] & (widx < NW)[None, :]
    bit32 = tl.arange(0, 32)
    p = tl.load(POS + rn[:, None] * NW + widx[None, :], mask=wm, other=0)
    q = tl.load(NEG + rn[:, None] * NW + widx[None, :], mask=wm, other=0)
    t = ((p[:, :, None] >> bit32[None, None, :]) & 1) - ((q[:, :, None] >> bit32[None, None, :]) & 1)
    k = widx[None, :, None] * 32 + bit32[None, None, :]
    tl.store(OUT + rn[:, None, None] * K + k, t.to(tl.int8), mask=(rn < N)[:, None, None] & (k < K))


def ternary_codes(pos, neg, K):
    """The ternary weight as an (N, K) int8 {-1, 0, 1} scratch (the int8 library prefill's operand)."""
    N, NW = pos.shape
    out = torch.empty(N, K, dtype=torch.int8, device=pos.device)
    BN, BW = 32, 4
    if N and K:
        _ternary_codes_kernel[(triton.cdiv(N, BN), triton.cdiv(NW, BW))](pos, neg, out, N, K, NW, BN=BN, BW=BW)
    return out


# ---------------- embedding search: score tiles + running top-k over chunks of keys ----------------

@triton.jit
def _int8_scores_kernel(q_ptr, k_ptr, ks_ptr, out_ptr, Q, n, d, BQ: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    rq = pid_q * BQ + tl.arange(0, BQ)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BQ, BN], dtype=tl.int32)
    for k0 in range(0, d, BK):
        kk = k0 + rk
        a = tl.load(q_ptr + rq[:, None] * d + kk[None, :], mask=(rq[:, None] < Q) & (kk[None, :] < d), other=0)
        b = tl.load(k_ptr + rn[:, None] * d + kk[None, :], mask=(rn[:, None] < n) & (kk[None, :] < d), other=0)
        acc += tl.dot(a, tl.trans(b), out_dtype=tl.int32)
    s = acc.to(tl.float32) * tl.load(ks_ptr + rn, mask=rn < n, other=0.0)[None, :]
    tl.store(out_ptr + rq[:, None] * n + rn[None, :], s, mask=(rq[:, None] < Q) & (rn[None, :] < n))


@triton.jit
def _popc32(x):
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _binary_scores_kernel(q_ptr, k_ptr, out_ptr, Q, n, W32, d, BQ: tl.constexpr, BN: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    rq = pid_q * BQ + tl.arange(0, BQ)
    rn = pid_n * BN + tl.arange(0, BN)
    ham = tl.zeros([BQ, BN], dtype=tl.int32)
    for w in range(0, W32):
        a = tl.load(q_ptr + rq * W32 + w, mask=rq < Q, other=0)
        b = tl.load(k_ptr + rn * W32 + w, mask=rn < n, other=0)
        x = (a[:, None] ^ b[None, :]).to(tl.uint32)
        ham += _popc32(x).to(tl.int32)
    s = (d - 2 * ham).to(tl.float32)
    tl.store(out_ptr + rq[:, None] * n + rn[None, :], s, mask=(rq[:, None] < Q) & (rn[None, :] < n))


def _merge(best, chunk_vals, offset, k):
    v, i = topk_desc(chunk_vals, min(k, chunk_vals.shape[1]))
    i = i + offset
    if best is None:
        return v, i
    vals = torch.cat([best[0], v], 1)
    idx = torch.cat([best[1], i], 1)
    vv, pos = topk_desc(vals, k)                 # earlier chunks first: ties keep the smaller index
    return vv, torch.gather(idx, 1, pos)


def embedding_search_int8(qq, qstep, keys, key_scale, k, chunk=65536):
    """Up to k = 64 the streaming top-k kernel scores the int8 codes on the int8 tensor cores and
    keeps its top-k in registers (no score matrix); larger k score 65,536-key chunks and merge."""
    if k <= _contrastive.TOPK_MAX:
        vals, idx = _contrastive.topk_scores(qq, keys, k, key_scale)
        return vals * qstep[:, None], idx
    Q, d = qq.shape
    n = keys.shape[0]
    best = None
    BQ, BN, BK = 16, 32, 32
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        out = torch.empty(Q, c1 - c0, device=qq.device, dtype=torch.float32)
        grid = (triton.cdiv(Q, BQ), triton.cdiv(c1 - c0, BN))
        _int8_scores_kernel[grid](qq, keys[c0:c1], key_scale[c0:c1], out, Q, c1 - c0, d, BQ=BQ, BN=BN, BK=BK)
        best = _merge(best, out, c0, k)
    return best[0] * qstep[:, None], best[1]


def embedding_search_binary(qbits, kbits, d, k, chunk=65536):
    Q = qbits.shape[0]
    n = kbits.shape[0]
    q32 = qbits.view(torch.int32)
    k32 = kbits.view(torch.int32)
    W32 = q32.shape[1]
    best = None
    BQ, BN = 16, 32
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        out = torch.empty(Q, c1 - c0, device=qbits.device, dtype=torch.float32)
        grid = (triton.cdiv(Q, BQ), triton.cdiv(c1 - c0, BN))
        _binary_scores_kernel[grid](q32, k32[c0:c1], out, Q, c1 - c0, W32, d, BQ=BQ, BN=BN)
        best = _merge(best, out, c0, k)
    return best


def embedding_search_int8_op(qq, qstep, keys, packed, key_scale, k):
    """The op's argument order; the VNNI-packed copy of the keys serves the CPU kernel only."""
    return embedding_search_int8(qq, qstep, keys, key_scale, k)
