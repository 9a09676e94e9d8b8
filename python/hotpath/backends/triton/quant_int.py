"""Triton kernels of the integer quantized linear layers: W8A16, W8A8 (dynamic), W4A16, W4A8.

The kernels read the packed layouts the C++ kernels read (documented in
python/hotpath/reference/quant_int.py), so a quantized model's buffers serve every backend and
state_dict round-trips stay bit-exact:

- W8A16: codes (N, K) int8 row-major, scale (N,). GEMM: x tile (BM, BK) fp32 against the codes
  converted to fp32, tl.dot, per-channel scale and bias in the epilogue. GEMV (M <= 4): one
  program per (row, channel block), a multiply-reduce over K (memory bound, no tl.dot padding).
- W8A8: activations quantized per token by a small kernel (amax pass, then round-half-even
  codes), then int8 x int8 tl.dot with int32 accumulation on the VNNI layout (16 channels x 4 k
  per 64-byte chunk, gathered in-kernel); epilogue acc * (sx * sw) + bias. The signed x signed
  product needs no +128 offset, so `colsum` is not read.
- W4A16: row-major halves (each 64-k block of a row in 32 bytes, low nibbles = first 32 k). The
  K loop steps by 32, so every step reads one nibble half of one 32-byte run and lies in one
  group (group_size % 32 == 0): codes are (byte >> shift) & 15 with a scalar shift, dequantized
  as (code - zero) * scale before tl.dot.
- W4A8: int4 VNNI layout (16 channels x 8 k per 64 bytes; nibble j of byte 4c + i holds
  k = 8t + 4j + i). Per group: int8 x int8 tl.dot of the activation codes with the unsigned codes
  (0..15 fit int8), exact int32, minus zero * sum(qx over the group), then fp32 scale; the
  per-token scale multiplies at the end.

Every integer accumulator is exact (|qx| <= 127, |w| <= 127 or <= 15, K <= 65536).
"""
import torch
import triton
import triton.language as tl


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
def _w8a16_gemm_kernel(X, W, S, B, Y, M, N, K, s_xm, s_wn, s_ym,
                       HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(X + offs_m[:, None] * s_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = tl.load(W + offs_n[None, :] * s_wn + offs_k[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
        acc += tl.dot(x, w.to(tl.float32), input_precision="ieee")
    s = tl.load(S + offs_n, mask=offs_n < N, other=0.0)
    y = acc * s[None, :]
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=offs_n < N, other=0.0)[None, :]
    tl.store(Y + offs_m[:, None] * s_ym + offs_n[None, :], y, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _w8a16_gemv_kernel(X, W, S, B, Y, N, K, s_xm, s_wn, s_ym,
                       HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(X + m * s_xm + offs_k, mask=offs_k < K, other=0.0)
        w = tl.load(W + offs_n[:, None] * s_wn + offs_k[None, :],
                    mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1) * tl.load(S + offs_n, mask=offs_n < N, other=0.0)
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=offs_n < N, other=0.0)
    tl.store(Y + m * s_ym + offs_n, y, mask=offs_n < N)


GEMV_MAX_M = 4


def _gemm_blocks(M, N):
    bm = 16 if M <= 16 else (32 if M <= 32 else 64)
    bn = 32 if N <= 32 else 64
    return bm, bn


def int8_weight_only_linear(x, qweight, scale, bias):
    M, K = x.shape
    N = qweight.shape[0]
    x, w, s = x.contiguous(), qweight.contiguous(), scale.contiguous()
    y = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y
    b = bias.contiguous() if bias is not None else s
    if M <= GEMV_MAX_M:
        BN, BK = 32, 128
        _w8a16_gemv_kernel[(triton.cdiv(N, BN), M)](x, w, s, b, y, N, K, x.stride(0), w.stride(0), y.stride(0),
                                                    HAS_BIAS=bias is not None, BN=BN, BK=BK)
    else:
        BM, BN = _gemm_blocks(M, N)
        _w8a16_gemm_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
            x, w, s, b, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=32)
    return y


# ------------------------------------------------------------------ W8A8
@triton.jit
def _w8a8_kernel(Q, SX, W, S, B, Y, M, N, K, K4, s_qm, s_ym,
                 HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    # VNNI layout: (n, k) -> ((n // 16) * K4 + k // 4) * 64 + (n % 16) * 4 + k % 4
    w_n = (offs_n // 16) * K4 * 64 + (offs_n % 16) * 4
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        a = tl.load(Q + offs_m[:, None] * s_qm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        w = tl.load(W + w_n[None, :] + ((offs_k // 4) * 64 + offs_k % 4)[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
    sx = tl.load(SX + offs_m, mask=offs_m < M, other=1.0)
    sw = tl.load(S + offs_n, mask=offs_n < N, other=0.0)
    y = acc.to(tl.float32) * (sx[:, None] * sw[None, :])
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=offs_n < N, other=0.0)[None, :]
    tl.store(Y + offs_m[:, None] * s_ym + offs_n[None, :], y, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def int8_dynamic_linear(x, qweight, scale, colsum, bias):
    M, K = x.shape
    N = scale.shape[0]
    x, w, s = x.contiguous(), qweight.contiguous(), scale.contiguous()
    y = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y
    q, sx = quantize_activations(x)
    b = bias.contiguous() if bias is not None else s
    BM, BN = _gemm_blocks(M, N)
    _w8a8_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
        q, sx, w, s, b, y, M, N, K, w.shape[1], q.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=32)
    return y


# ------------------------------------------------------------------ W4A16
@triton.jit
def _w4_codes_rows(W, offs_n, k0, N, s_wn, BK: tl.constexpr):
    """(BN, BK = 32) unsigned codes at k0 (a multiple of 32) from the row-major-halves layout."""
    base = (k0 // 64) * 32
    shift = ((k0 % 64) // 32) * 4
    byte = tl.load(W + offs_n[:, None] * s_wn + base + tl.arange(0, BK)[None, :], mask=offs_n[:, None] < N, other=0)
    return (byte >> shift) & 15


@triton.jit
def _w4a16_gemm_kernel(X, W, S, Z, B, Y, M, N, K, G, s_xm, s_wn, s_sn, s_ym,
                       HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(X + offs_m[:, None] * s_xm + offs_k[None, :], mask=(offs_m[:, None] < M), other=0.0)
        g = k0 // G
        s = tl.load(S + offs_n * s_sn + g, mask=offs_n < N, other=0.0)
        z = tl.load(Z + offs_n * s_sn + g, mask=offs_n < N, other=0).to(tl.float32)
        code = _w4_codes_rows(W, offs_n, k0, N, s_wn, BK).to(tl.float32)
        w = (code - z[:, None]) * s[:, None]
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    y = acc
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=offs_n < N, other=0.0)[None, :]
    tl.store(Y + offs_m[:, None] * s_ym + offs_n[None, :], y, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _w4a16_gemv_kernel(X, W, S, Z, B, Y, N, K, G, s_xm, s_wn, s_sn, s_ym,
                       HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(X + m * s_xm + offs_k)
        g = k0 // G
        s = tl.load(S + offs_n * s_sn + g, mask=offs_n < N, other=0.0)
        z = tl.load(Z + offs_n * s_sn + g, mask=offs_n < N, other=0).to(tl.float32)
        code = _w4_codes_rows(W, offs_n, k0, N, s_wn, BK).to(tl.float32)
        acc += ((code - z[:, None]) * s[:, None]) * x[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=offs_n < N, other=0.0)
    tl.store(Y + m * s_ym + offs_n, y, mask=offs_n < N)


def int4_weight_only_linear(x, qweight, scale, zero, bias):
    M, K = x.shape
    N, ng = scale.shape
    G = K // ng
    x, w, s, z = x.contiguous(), qweight.contiguous(), scale.contiguous(), zero.contiguous()
    y = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y
    b = bias.contiguous() if bias is not None else s
    # BK = 32: every K step is one nibble half of a 32-byte run and lies inside one group
    if M <= GEMV_MAX_M:
        BN = 32
        _w4a16_gemv_kernel[(triton.cdiv(N, BN), M)](x, w, s, z, b, y, N, K, G, x.stride(0), w.stride(0), s.stride(0),
                                                    y.stride(0), HAS_BIAS=bias is not None, BN=BN, BK=32)
    else:
        BM, BN = _gemm_blocks(M, N)
        _w4a16_gemm_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
            x, w, s, z, b, y, M, N, K, G, x.stride(0), w.stride(0), s.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=32)
    return y


# ------------------------------------------------------------------ W4A8
@triton.jit
def _w4a8_kernel(Q, SX, W, S, Z, B, Y, M, N, K, K8, G, ng, s_qm, s_sg, s_ym,
                 HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
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
    for g in range(0, ng):
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        xs = tl.zeros((BM,), dtype=tl.int32)
        for kb in range(0, G, BK):
            k0 = g * G + kb
            a = tl.load(Q + offs_m[:, None] * s_qm + (k0 + kk)[None, :], mask=mmask[:, None], other=0)
            byte = tl.load(W + w_n[None, :] + ((k0 // 8) * 64 + w_k)[:, None], mask=nmask[None, :], other=0)
            code = ((byte >> shift_k[:, None]) & 15).to(tl.int8)
            acc = tl.dot(a, code, acc, out_dtype=tl.int32)
            xs += tl.sum(a.to(tl.int32), 1)
        z = tl.load(Z + g * s_sg + offs_n, mask=nmask, other=0).to(tl.int32)
        s = tl.load(S + g * s_sg + offs_n, mask=nmask, other=0.0)
        f += (acc - xs[:, None] * z[None, :]).to(tl.float32) * s[None, :]
    sx = tl.load(SX + offs_m, mask=mmask, other=1.0)
    y = f * sx[:, None]
    if HAS_BIAS:
        y += tl.load(B + offs_n, mask=nmask, other=0.0)[None, :]
    tl.store(Y + offs_m[:, None] * s_ym + offs_n[None, :], y, mask=mmask[:, None] & nmask[None, :])


def int4_dynamic_linear(x, qweight, scale, zero, bias):
    M, K = x.shape
    ng, N = scale.shape
    G = K // ng
    x, w, s, z = x.contiguous(), qweight.contiguous(), scale.contiguous(), zero.contiguous()
    y = torch.empty(M, N, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y
    q, sx = quantize_activations(x)
    b = bias.contiguous() if bias is not None else s
    BM, BN = _gemm_blocks(M, N)
    _w4a8_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
        q, sx, w, s, z, b, y, M, N, K, K // 8, G, ng, q.stride(0), s.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=32)
    return y
