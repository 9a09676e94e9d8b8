"""Triton kernels of the low-bit formats (issue 7): FP4 (MXFP4 / NVFP4) and FP8 linear with the
decode in the GEMM prologue (arithmetic decode of E2M1 / E4M3 / E5M2 / E8M0 codes, tl.dot on
BM x 16/32 tiles), ternary linear on int8 activations (tl.dot int8 -> int32, exact), and tiled
score kernels for quantized embedding search (int8 dot products; SWAR popcount Hamming) whose
tiles are merged by a running top-k per chunk of keys. Layouts: hotpath/reference/quant_lowbit.py.
"""
import torch
import triton
import triton.language as tl

from hotpath.reference import quant_lowbit as ref


@triton.jit
def _e2m1(c):
    mag = c & 7
    e = mag >> 1
    m = (mag & 1).to(tl.float32)
    v = tl.where(e == 0, m * 0.5, (1.0 + 0.5 * m) * tl.exp2((e - 1).to(tl.float32)))
    return tl.where((c & 8) != 0, -v, v)


@triton.jit
def _e4m3(c):
    e = (c >> 3) & 15
    m = (c & 7).to(tl.float32)
    v = tl.where(e == 0, m * 0.001953125, (1.0 + m * 0.125) * tl.exp2((e - 7).to(tl.float32)))
    v = tl.where((e == 15) & ((c & 7) == 7), float("nan"), v)
    return tl.where((c & 128) != 0, -v, v)


@triton.jit
def _e5m2(c):
    e = (c >> 2) & 31
    mi = c & 3
    m = mi.to(tl.float32)
    v = tl.where(e == 0, m * 1.52587890625e-05, (1.0 + m * 0.25) * tl.exp2((e - 15).to(tl.float32)))
    v = tl.where(e == 31, tl.where(mi == 0, float("inf"), float("nan")), v)
    return tl.where((c & 128) != 0, -v, v)


@triton.jit
def _e8m0(c):
    v = tl.exp2((c - 127).to(tl.float32))
    return tl.where(c == 255, float("nan"), v)


@triton.jit
def _fp4_linear_kernel(x_ptr, p_ptr, s_ptr, b_ptr, y_ptr, M, N, K, RB, NBLK, gscale,
                       NV: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    j = tl.arange(0, 16)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    nmask = rn < N
    for c in range(0, tl.cdiv(K, 32)):
        b = tl.load(p_ptr + rn[:, None] * RB + c * 16 + j[None, :], mask=nmask[:, None], other=0).to(tl.int32)
        if NV:
            s_lo = _e4m3(tl.load(s_ptr + rn * NBLK + 2 * c, mask=nmask, other=0).to(tl.int32))
            hi_blk = tl.minimum(2 * c + 1, NBLK - 1)   # past K (K % 32 == 16) x_hi is masked to 0 anyway
            s_hi = _e4m3(tl.load(s_ptr + rn * NBLK + hi_blk, mask=nmask, other=0).to(tl.int32))
        else:
            s_lo = _e8m0(tl.load(s_ptr + rn * NBLK + c, mask=nmask, other=127).to(tl.int32))
            s_hi = s_lo
        w_lo = _e2m1(b & 15) * s_lo[:, None]
        w_hi = _e2m1(b >> 4) * s_hi[:, None]
        k_lo = c * 32 + j
        k_hi = c * 32 + 16 + j
        x_lo = tl.load(x_ptr + rm[:, None] * K + k_lo[None, :], mask=(rm[:, None] < M) & (k_lo[None, :] < K), other=0.0)
        x_hi = tl.load(x_ptr + rm[:, None] * K + k_hi[None, :], mask=(rm[:, None] < M) & (k_hi[None, :] < K), other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo), input_precision="ieee")
        acc += tl.dot(x_hi, tl.trans(w_hi), input_precision="ieee")
    acc = acc * gscale
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & nmask[None, :])


def fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias):
    M, K = x.shape
    N = packed.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    BM, BN = 16, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _fp4_linear_kernel[grid](x, packed, scales, bias if bias is not None else y, y, M, N, K, packed.shape[1],
                             scales.shape[1], float(tensor_scale.reshape(-1)[0]), NV=scale_kind == 1,
                             HAS_BIAS=bias is not None, BM=BM, BN=BN)
    return y


@triton.jit
def _fp8_linear_kernel(x_ptr, c_ptr, s_ptr, b_ptr, y_ptr, M, N, K, E4M3: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        c = tl.load(c_ptr + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K), other=0).to(tl.int32)
        if E4M3:
            w = _e4m3(c)
        else:
            w = _e5m2(c)
        x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    acc = acc * tl.load(s_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def fp8_linear(x, codes, scales, fmt, bias):
    M, K = x.shape
    N = codes.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    BM, BN, BK = 16, 32, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _fp8_linear_kernel[grid](x, codes, scales, bias if bias is not None else y, y, M, N, K, E4M3=fmt == "e4m3",
                             HAS_BIAS=bias is not None, BM=BM, BN=BN, BK=BK)
    return y


@triton.jit
def _ternary_kernel(xq_ptr, pos_ptr, neg_ptr, f_ptr, b_ptr, y_ptr, M, N, K, NW, HAS_BIAS: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    j = tl.arange(0, 32)
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for w in range(0, NW):
        p = tl.load(pos_ptr + rn * NW + w, mask=rn < N, other=0)
        q = tl.load(neg_ptr + rn * NW + w, mask=rn < N, other=0)
        t = (((p[:, None] >> j[None, :]) & 1) - ((q[:, None] >> j[None, :]) & 1)).to(tl.int8)   # (BN, 32)
        kk = w * 32 + j
        xq = tl.load(xq_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        acc += tl.dot(xq, tl.trans(t), out_dtype=tl.int32)
    f = tl.load(f_ptr + rm, mask=rm < M, other=0.0)
    y = acc.to(tl.float32) * f[:, None]
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=(rm[:, None] < M) & (rn[None, :] < N))


def ternary_linear(x, pos, neg, wscale, bias):
    M, K = x.shape
    N, NW = pos.shape
    xq, step = ref.quantize_act_int8(x)           # per-token int8, same rule as the C++ kernel
    xq = xq.to(torch.int8).contiguous()
    f = (step * wscale.float()).contiguous()
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    BM, BN = 16, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _ternary_kernel[grid](xq, pos, neg, f, bias if bias is not None else y, y, M, N, K, NW,
                          HAS_BIAS=bias is not None, BM=BM, BN=BN)
    return y


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
    v, i = ref.topk_desc(chunk_vals, min(k, chunk_vals.shape[1]))
    i = i + offset
    if best is None:
        return v, i
    vals = torch.cat([best[0], v], 1)
    idx = torch.cat([best[1], i], 1)
    vv, pos = ref.topk_desc(vals, k)                 # earlier chunks first: ties keep the smaller index
    return vv, torch.gather(idx, 1, pos)


def embedding_search_int8(qq, qstep, keys, key_scale, k, chunk=65536):
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
