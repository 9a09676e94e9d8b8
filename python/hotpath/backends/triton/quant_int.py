"""Triton kernels of the integer quantized linear layers: W8A16, W8A8 (dynamic), W4A16, W4A8.

The kernels read the packed layouts the C++ kernels read (documented in
python/hotpath/reference/quant_int.py), so a quantized model's buffers serve every backend and
state_dict round-trips stay bit-exact:

- W8A16: codes (N, K) int8 row-major, scale (N,). The codes are exact in bf16 / fp16, so the
  tile converts them to the activations' dtype and feeds tl.dot (tensor cores); the per-channel
  scale and the bias are applied to the fp32 accumulator in the epilogue.
- W8A8: activations quantized per token by a small kernel (amax pass, then round-half-even
  codes), then int8 x int8 tl.dot with int32 accumulation on the VNNI layout (16 channels x 4 k
  per 64-byte chunk, gathered in-kernel); epilogue acc * (sx * sw) + bias. The signed x signed
  product needs no +128 offset, so `colsum` is not read. Its "library" prefill
  (_qgemm.int_mm_prefill) runs torch._int_mm on the codes unpacked to (N, K) and the same epilogue.
- W4A16: row-major halves (each 64-k block of a row in 32 bytes, low nibbles = first 32 k). The
  K loop steps by 64: one 32-byte load per channel gives both halves, each inside one group
  (group_size % 32 == 0), dequantized in registers as (code - zero) * scale (fp32, then the
  activations' dtype) and fed to two (BM, 32) x (32, BN) tl.dots.
- W4A8: int4 VNNI layout (16 channels x 8 k per 64 bytes; nibble j of byte 4c + i holds
  k = 8t + 4j + i). Per group: int8 x int8 tl.dot of the activation codes with the unsigned codes
  (0..15 fit int8), exact int32, minus zero * sum(qx over the group), then fp32 scale; the
  per-token scale multiplies at the end.

Every integer accumulator is exact (|qx| <= 127, |w| <= 127 or <= 15, K <= 65536).

Launch plans (backends/triton/_qgemm.py): prefill GEMMs (M > 8) are real tiled GEMMs over M,
grouped tile order for L2 reuse, autotuned over the configurations whose shared memory fits the
device; decode (M <= 8) uses 16-row tiles (tl.dot's minimum: the padding costs no weight
traffic), narrow channel blocks and, for the float-accumulating W8A16 / W4A16, split-K so that
every SM streams the packed weight once. The integer W8A8 / W4A8 paths never split K: their
int32 sums stay exact and equal the CPU kernel's bit for bit.
"""
import torch
import triton
import triton.language as tl

from . import _qgemm as Q
from ...quant.packing import unpack_int8_vnni
from ._qgemm import KEY, _x_and_policy, grouped_tile, store_tile


# ------------------------------------------------------------------ activation quantization
@triton.jit
def _round_half_even(v):
    # adding and removing 1.5 * 2**23 rounds a float32 with |v| < 2**22 to the nearest integer,
    # ties to even (IEEE round-to-nearest of the addition): the same as torch.round
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _quantize_rows_kernel(X, Q, SX, K, s_xm, s_qm, BLOCK_K: tl.constexpr):
    """One program per row: sx = amax / 127 (1 if all zero, NaN if any non-finite value),
    q = round_half_even(x / sx) clamped to [-127, 127] (0 for a non-finite row)."""
    m = tl.program_id(0)
    x_row = X + m * s_xm
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    bad = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        a = tl.abs(tl.load(x_row + offs, mask=offs < K, other=0.0))
        finite = a < float("inf")  # false for inf and NaN
        bad = tl.maximum(bad, tl.where(finite, 0, 1))
        amax = tl.maximum(amax, tl.where(finite, a, 0.0))
    am = tl.max(amax, 0)
    is_bad = tl.max(bad, 0) > 0
    sx = tl.where(am > 0, am / 127.0, 1.0)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0)
        v = _round_half_even(tl.math.div_rn(x, sx))
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        v = tl.where(is_bad, 0.0, v)
        q = v.to(tl.int8)
        tl.store(Q + m * s_qm + offs, q, mask=offs < K)
    tl.store(SX + m, tl.where(is_bad, float("nan"), sx))


def quantize_activations(x):
    """x (M, K) float32 -> (q (M, K) int8, sx (M,) float32)."""
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    sx = torch.empty(M, dtype=torch.float32, device=x.device)
    if M > 0:
        block = min(1024, triton.next_power_of_2(max(K, 16)))
        _quantize_rows_kernel[(M,)](x, q, sx, K, x.stride(0), q.stride(0), BLOCK_K=block)
    return q, sx


# ------------------------------------------------------------------ W8A16
@triton.jit
def _w8a16_kernel(X, W, S, B, RF, Y, M, N, K, K_SPLIT, MB,
                  HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr, DT: tl.constexpr,
                  PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    split = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mmask = offs_m < M
    nmask = offs_n < N
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BK):
        offs_k = k0 + tl.arange(0, BK)
        kmask = offs_k < k_end
        x = tl.load(X + offs_m[:, None] * K + offs_k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(W + offs_n[None, :] * K + offs_k[:, None], mask=nmask[None, :] & kmask[:, None], other=0)
        acc = tl.dot(x.to(DT), w.to(DT), acc, input_precision=PREC)
    y = acc * tl.load(S + offs_n, mask=nmask, other=0.0)[None, :]
    store_tile(Y, B, RF, y, offs_m, offs_n, M, N, HAS_BIAS, HAS_RF)


_w8a16_tuner = Q.autotuned(_w8a16_kernel, KEY)


@triton.jit
def _w8_dequant_kernel(W, S, OUT, N, K, BN: tl.constexpr, BK: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    m = (rn < N)[:, None] & (rk < K)[None, :]
    c = tl.load(W + rn[:, None] * K + rk[None, :], mask=m, other=0)
    s = tl.load(S + rn, mask=rn < N, other=0.0)
    tl.store(OUT + rn[:, None] * K + rk[None, :], c.to(tl.float32) * s[:, None], mask=m)


def w8a16_smem(cfg, x_bytes):
    BM, BN, BK, _, stages = cfg[:5]
    return Q.smem_bytes(BM, BN, BK, x_bytes, 1, stages, b_op_bytes=x_bytes)


def int8_weight_only_linear(x, qweight, scale, bias):
    M, K = x.shape
    N = qweight.shape[0]
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    od = Q.out_dtype(x)
    x, DT, PREC, xb = _x_and_policy(x)
    b = bias.contiguous().float() if bias is not None else None
    w, s = qweight.contiguous(), scale.contiguous()
    return Q.run_linear(_w8a16_kernel, _w8a16_tuner, (x, w, s), dict(DT=DT, PREC=PREC), b, x, N, K,
                        lambda c: w8a16_smem(c, xb), y_dtype=od, flag_rows_of=x,
                        dequant=lambda dt: Q.dequantize(_w8_dequant_kernel, (w, s), N, K, dt))


# ------------------------------------------------------------------ W8A8
@triton.jit
def _w8a8_kernel(Qx, SX, W, S, B, RF, Y, M, N, K, K_SPLIT, MB, K4, HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                 VNNI_RUNS: tl.constexpr = False):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mmask = offs_m < M
    nmask = offs_n < N
    # VNNI layout: (n, k) -> ((n // 16) * K4 + k // 4) * 64 + (n % 16) * 4 + k % 4
    w_n = (offs_n // 16) * K4 * 64 + (offs_n % 16) * 4
    # VNNI_RUNS: the (BK, BN) tile is BN/16 x BK/4 runs of 64 contiguous bytes, loaded as such
    # (16-byte copies) and reordered in registers into the K-major operand int8 tensor-core dots
    # need; else gathered 4 bytes at a time straight into that operand. Which is faster is the
    # autotuner's measurement (I8_GEMM_CONFIGS lists both).
    g = pid_n * (BN // 16) + tl.arange(0, BN // 16)
    w_g = (g * K4 * 64)[:, None, None] + tl.arange(0, 64)[None, None, :]
    gmask = (g < (N + 15) // 16)[:, None, None]
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        a = tl.load(Qx + offs_m[:, None] * K + offs_k[None, :], mask=mmask[:, None] & (offs_k[None, :] < K), other=0)
        if VNNI_RUNS:
            kg = k0 // 4 + tl.arange(0, BK // 4)
            runs = tl.load(W + w_g + (kg * 64)[None, :, None], mask=gmask & (kg < K4)[None, :, None], other=0)
            w = tl.reshape(tl.permute(tl.reshape(runs, (BN // 16, BK // 4, 16, 4)), (1, 3, 0, 2)), (BK, BN))
        else:
            w = tl.load(W + w_n[None, :] + ((offs_k // 4) * 64 + offs_k % 4)[:, None],
                        mask=nmask[None, :] & (offs_k[:, None] < K), other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
    # epilogue: per-token activation scale x per-channel weight scale, one float32 rounding of
    # the exact int32 sum (the CPU kernel's order: acc * (sx * sw) + bias)
    sx = tl.load(SX + offs_m, mask=mmask, other=1.0)
    sw = tl.load(S + offs_n, mask=nmask, other=0.0)
    y = acc.to(tl.float32) * (sx[:, None] * sw[None, :])
    store_tile(Y, B, RF, y, offs_m, offs_n, M, N, HAS_BIAS, HAS_RF)


_w8a8_tuner = Q.autotuned(_w8a8_kernel, KEY)


def w8a8_smem(cfg):
    BM, BN, BK, _, stages = cfg[:5]
    # VNNI_RUNS reorders the tile into a second buffer, the dot's operand
    runs = Q.meta(cfg).get("VNNI_RUNS", False)
    return Q.smem_bytes(BM, BN, BK, 1, 1, stages, b_op_bytes=1 if runs else 0)


def int8_dynamic_linear(x, qweight, scale, colsum, bias):
    M, K = x.shape
    N = scale.shape[0]
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    q, sx = quantize_activations(x.float().contiguous())
    b = bias.contiguous().float() if bias is not None else None
    if Q.int_mm_ok(q, N) and Q.prefill_strategy(M, x) == "library":
        w = unpack_int8_vnni(qweight, N, K).contiguous()
        y = Q.int_mm_prefill(q, w, sx, scale, b, Q.out_dtype(x))
        if y is not None:
            return y
    # int8 tensor-core dots need K steps of 32
    return Q.run_linear(_w8a8_kernel, _w8a8_tuner, (q, sx, qweight.contiguous(), scale.contiguous()), {},
                        b, q, N, K, w8a8_smem, step=32, split_ok=False, extra=(qweight.shape[1],),
                        y_dtype=Q.out_dtype(x), int8_dots=True)


# ------------------------------------------------------------------ W4A16
@triton.jit
def _w4a16_kernel(X, W, S, Z, B, RF, Y, M, N, K, K_SPLIT, MB, G, NG, s_wn, HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                  DT: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    split = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mmask = offs_m < M
    nmask = offs_n < N
    j = tl.arange(0, 32)
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, 64):   # BK == 64: one 32-byte run per channel
        w_lo, w_hi = _w4_tile(W, S, Z, offs_n, nmask, k0, G, NG, s_wn)
        k_lo = k0 + j
        k_hi = k0 + 32 + j
        x_lo = tl.load(X + offs_m[:, None] * K + k_lo[None, :], mask=mmask[:, None] & (k_lo[None, :] < k_end), other=0.0)
        x_hi = tl.load(X + offs_m[:, None] * K + k_hi[None, :], mask=mmask[:, None] & (k_hi[None, :] < k_end), other=0.0)
        acc = tl.dot(x_lo.to(DT), tl.trans(w_lo.to(DT)), acc, input_precision=PREC)
        acc = tl.dot(x_hi.to(DT), tl.trans(w_hi.to(DT)), acc, input_precision=PREC)
    y = acc
    store_tile(Y, B, RF, y, offs_m, offs_n, M, N, HAS_BIAS, HAS_RF)


_w4a16_tuner = Q.autotuned(_w4a16_kernel, KEY)


@triton.jit
def _w4_tile(W, S, Z, rn, nmask, k0, G, NG, s_wn):
    """Channels rn at k0 + j and k0 + 32 + j (j < 32, k0 % 64 == 0) of the W4A16 row layout, as
    float32 (code - zero) * scale: (w_lo, w_hi), each (BN, 32). One 32-byte load per channel."""
    j = tl.arange(0, 32)
    byte = tl.load(W + rn[:, None] * s_wn + k0 // 2 + j[None, :], mask=nmask[:, None], other=0)
    g_lo = k0 // G
    g_hi = tl.minimum((k0 + 32) // G, NG - 1)   # past K (K % 64 == 32) the high half is not used
    s_lo = tl.load(S + rn * NG + g_lo, mask=nmask, other=0.0)
    z_lo = tl.load(Z + rn * NG + g_lo, mask=nmask, other=0).to(tl.float32)
    s_hi = tl.load(S + rn * NG + g_hi, mask=nmask, other=0.0)
    z_hi = tl.load(Z + rn * NG + g_hi, mask=nmask, other=0).to(tl.float32)
    w_lo = ((byte & 15).to(tl.float32) - z_lo[:, None]) * s_lo[:, None]
    w_hi = ((byte >> 4).to(tl.float32) - z_hi[:, None]) * s_hi[:, None]
    return w_lo, w_hi


@triton.jit
def _w4_dequant_kernel(W, S, Z, G, NG, s_wn, OUT, N, K, BN: tl.constexpr, BK: tl.constexpr):
    # BK == 64: one 32-byte run per channel
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k0 = tl.program_id(1) * 64
    nmask = rn < N
    j = tl.arange(0, 32)
    w_lo, w_hi = _w4_tile(W, S, Z, rn, nmask, k0, G, NG, s_wn)
    tl.store(OUT + rn[:, None] * K + (k0 + j)[None, :], w_lo, mask=nmask[:, None] & ((k0 + j) < K)[None, :])
    tl.store(OUT + rn[:, None] * K + (k0 + 32 + j)[None, :], w_hi, mask=nmask[:, None] & ((k0 + 32 + j) < K)[None, :])


def w4a16_smem(cfg, x_bytes):
    BM, BN, BK, _, stages = cfg[:5]
    return Q.smem_bytes(BM, BN, BK, x_bytes, 0.5, stages, b_op_bytes=x_bytes)


def int4_weight_only_linear(x, qweight, scale, zero, bias):
    M, K = x.shape
    N, ng = scale.shape
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    od = Q.out_dtype(x)
    x, DT, PREC, xb = _x_and_policy(x)
    w, s, z = qweight.contiguous(), scale.contiguous(), zero.contiguous()
    b = bias.contiguous().float() if bias is not None else None
    layout = (K // ng, ng, w.stride(0))
    return Q.run_linear(_w4a16_kernel, _w4a16_tuner, (x, w, s, z),
                        dict(DT=DT, PREC=PREC), b, x, N, K, lambda c: w4a16_smem(c, xb), step=64, fixed_bk=64,
                        extra=layout, y_dtype=od, flag_rows_of=x,
                        dequant=lambda dt: Q.dequantize(_w4_dequant_kernel, (w, s, z) + layout, N, K, dt, BK=64))


# ------------------------------------------------------------------ W4A8
@triton.jit
def _w4a8_kernel(Qx, SX, W, S, Z, B, RF, Y, M, N, K, K_SPLIT, MB, K8, G: tl.constexpr, NG,
                 HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mmask = offs_m < M
    nmask = offs_n < N
    # int4 VNNI layout: (n, k) -> byte ((n // 16) * K8 + k // 8) * 64 + (n % 16) * 4 + k % 4,
    # low nibble for k % 8 < 4, high nibble otherwise
    w_n = (offs_n // 16) * K8 * 64 + (offs_n % 16) * 4
    kk = tl.arange(0, BK)
    w_k = (kk // 8) * 64 + kk % 4
    shift_k = ((kk % 8) // 4) * 4
    f = tl.zeros((BM, BN), dtype=tl.float32)
    # one group an iteration, its G / BK K steps unrolled (G is a constexpr): the group loop is
    # the innermost loop, the one Triton software-pipelines, so the next groups' tiles load while
    # this one's dots run. (A runtime inner loop over a group's two or four steps would be the
    # pipelined one, drained and refilled at every group.)
    for g in range(0, NG):
        # the zero point leaves the codes before the dots (code - zero is in [-15, 15], an int8):
        # the group's int32 sum is the CPU kernel's acc - zero * sum(qx) exactly, without the
        # activation row sums
        z = tl.load(Z + g * N + offs_n, mask=nmask, other=0).to(tl.int32)
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for kb in tl.static_range(0, G, BK):   # BK divides G: every step lies in group g
            k0 = g * G + kb
            a = tl.load(Qx + offs_m[:, None] * K + (k0 + kk)[None, :], mask=mmask[:, None], other=0)
            byte = tl.load(W + w_n[None, :] + ((k0 // 8) * 64 + w_k)[:, None], mask=nmask[None, :], other=0)
            code = (((byte >> shift_k[:, None]) & 15).to(tl.int32) - z[None, :]).to(tl.int8)
            acc = tl.dot(a, code, acc, out_dtype=tl.int32)
        s = tl.load(S + g * N + offs_n, mask=nmask, other=0.0)
        f += acc.to(tl.float32) * s[None, :]
    sx = tl.load(SX + offs_m, mask=mmask, other=1.0)
    y = f * sx[:, None]
    store_tile(Y, B, RF, y, offs_m, offs_n, M, N, HAS_BIAS, HAS_RF)


_w4a8_tuner = Q.autotuned(_w4a8_kernel, KEY)


def w4a8_smem(cfg, G):
    """A pipeline stage holds a whole group's G / BK steps (they are unrolled in the loop body)."""
    BM, BN, BK, _, stages = cfg[:5]
    return Q.smem_bytes(BM, BN, BK * (G // BK), 1, 0.5, stages, b_op_bytes=1)


@triton.jit
def _w4v_dequant_kernel(W, S, Z, K8, G, OUT, N, K, BN: tl.constexpr, BK: tl.constexpr):
    """(BN, BK) of the W4A8 weight, (code - zero) * scale in float32, from the int4 VNNI layout."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    m = (rn < N)[:, None] & (rk < K)[None, :]
    byte = tl.load(W + ((rn // 16) * K8 * 64 + (rn % 16) * 4)[:, None] + ((rk // 8) * 64 + rk % 4)[None, :],
                   mask=m, other=0)
    code = (byte >> (((rk % 8) // 4) * 4)[None, :]) & 15
    g = (rk // G)[None, :]
    s = tl.load(S + g * N + rn[:, None], mask=m, other=0.0)
    z = tl.load(Z + g * N + rn[:, None], mask=m, other=0)
    tl.store(OUT + rn[:, None] * K + rk[None, :], (code.to(tl.float32) - z.to(tl.float32)) * s, mask=m)


def int4_dynamic_linear(x, qweight, scale, zero, bias):
    M, K = x.shape
    ng, N = scale.shape
    G = K // ng
    if M == 0 or N == 0:
        return torch.zeros(M, N, dtype=Q.out_dtype(x), device=x.device)
    q, sx = quantize_activations(x.float().contiguous())
    b = bias.contiguous().float() if bias is not None else None
    if Q.prefill_strategy(M, x) == "library":
        # No int8 library GEMM applies a scale per group of K, so the "library" prefill is a 16-bit
        # one: the quantized activations q * sx and the weight (code - zero) * scale, each rounded
        # once to x's dtype (2^-9 relative in bf16: the weight-only formats' library rounding), into
        # F.linear. A NaN sx (non-finite row) makes a NaN row.
        xs = (q * sx[:, None]).to(x.dtype)
        w = Q.dequantize(_w4v_dequant_kernel, (qweight.contiguous(), scale.contiguous(), zero.contiguous(), K // 8, G),
                         N, K, x.dtype)
        return torch.nn.functional.linear(xs, w, None if b is None else b.to(x.dtype))
    return Q.run_linear(_w4a8_kernel, _w4a8_tuner, (q, sx, qweight.contiguous(), scale.contiguous(), zero.contiguous()),
                        {}, b, q, N, K, lambda c: w4a8_smem(c, G), step=32, fixed_bk=64 if G % 64 == 0 else 32,
                        split_ok=False,
                        extra=(K // 8, G, ng), y_dtype=Q.out_dtype(x))
