"""References of the low-bit float / ternary kernels, the Hadamard transform and quantized
embedding search (issue 7): decode the weights to float, then a plain matmul in float64.

Kernel layouts (shared with csrc/cpu/quant_lowbit.cpp and kernels/quant_lowbit.py):
  FP4 packed:  (N, ceil(K / 32) * 16) uint8; in chunk c (32 weights of one row) byte j holds weight
               32c + j in its low nibble and weight 32c + 16 + j in its high nibble (0 past K), so a
               zero-extended load of 16 bytes gives table indices for 16 consecutive weights.
  FP4 scales:  (N, K / block) uint8, E8M0 (scale_kind 0, MXFP4) or E4M3 (scale_kind 1, NVFP4),
               times a float32 per-tensor scale (1,) (1.0 for MXFP4).
  FP8:         (N, K) uint8 codes (E4M3 or E5M2) and a float32 scale per output row.
  Ternary:     two bit planes (N, ceil(K / 32)) int32: bit j of word w of `pos` is set when weight
               32w + j is +1, of `neg` when it is -1; a float32 per-tensor scale (1,).
  Int8 embeddings: keys (n, d) int8 with a float32 scale per key (the VNNI-packed copy lives in the
               codes object, the reference reads the plain one).
"""
import math

import torch

from ..quant import _minifloat as mf


# ---------------- Hadamard ----------------

def hadamard_matrix(b, dtype=torch.float64, device=None):
    """Sylvester Hadamard matrix H_b (entries +-1, H H^T = b I), b a power of two."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x, signs, block, inverse):
    """Blockwise random Hadamard transform along the last dim of x (M, K).
    forward: y = H (s * x) / sqrt(b) per block; inverse: x = s * (H y) / sqrt(b)."""
    M, K = x.shape
    H = hadamard_matrix(block, torch.float64, x.device) / math.sqrt(block)
    xd = x.double()
    s = signs.double()
    if not inverse:
        xd = xd * s
    y = (xd.reshape(M, K // block, block) @ H).reshape(M, K)
    if inverse:
        y = y * s
    return y.to(x.dtype)


# ---------------- FP4 ----------------

def pack_fp4(codes):
    """(N, K) uint8 4-bit codes -> (N, ceil(K/32) * 16) packed kernel layout."""
    N, K = codes.shape
    nc = (K + 31) // 32
    c = torch.zeros(N, nc * 32, dtype=torch.uint8, device=codes.device)
    c[:, :K] = codes
    c = c.reshape(N, nc, 2, 16)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(N, nc * 16).contiguous()


def unpack_fp4(packed, K):
    N = packed.shape[0]
    p = packed.reshape(N, -1, 16)
    c = torch.stack([p & 0xF, p >> 4], dim=2).reshape(N, -1)
    return c[:, :K].contiguous()


def fp4_scale_values(scales, scale_kind):
    return mf.e8m0_decode(scales) if scale_kind == 0 else mf.decode(scales, "e4m3")


def fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, K):
    """float32 (N, K) weight: (e2m1(code) * block_scale) * tensor_scale, rounded in float32."""
    codes = unpack_fp4(packed, K)
    vals = mf.decode(codes, "e2m1")
    s = fp4_scale_values(scales, scale_kind).repeat_interleave(block, dim=1)
    return (vals * s) * tensor_scale.float()


def fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias):
    w = fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, x.shape[1])
    y = x.double() @ w.double().T
    if bias is not None:
        y = y + bias.double()
    return y


# ---------------- FP8 ----------------

def fp8_dequantize(codes, scales, fmt):
    return mf.decode(codes, fmt) * scales.float()[:, None]


def fp8_linear(x, codes, scales, fmt, bias):
    y = x.double() @ fp8_dequantize(codes, scales, fmt).double().T
    if bias is not None:
        y = y + bias.double()
    return y


# ---------------- Ternary ----------------

def pack_bits(mask):
    """(N, K) bool -> (N, ceil(K/32)) int32, bit j of word w = mask[:, 32w + j]."""
    N, K = mask.shape
    nw = (K + 31) // 32
    m = torch.zeros(N, nw * 32, dtype=torch.int64, device=mask.device)
    m[:, :K] = mask.to(torch.int64)
    words = (m.reshape(N, nw, 32) << torch.arange(32, device=mask.device)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words, K):
    w = words.to(torch.int64) & 0xFFFFFFFF
    bits = (w[:, :, None] >> torch.arange(32, device=words.device)) & 1
    return bits.reshape(words.shape[0], -1)[:, :K].bool()


def ternary_weight(pos, neg, K):
    return unpack_bits(pos, K).to(torch.int8) - unpack_bits(neg, K).to(torch.int8)


def quantize_act_int8(x):
    """Per-row symmetric int8 (BitNet activations): xq = rint(x * (127 / absmax)), step absmax / 127.
    Computed in float32 exactly as the kernels do; a row with a non-finite value gets step NaN."""
    x = x.float()
    amax = x.abs().amax(dim=1, keepdim=True)
    bad = ~torch.isfinite(x).all(dim=1, keepdim=True)
    safe = torch.where((amax > 0) & ~bad, amax, torch.ones_like(amax))
    inv = 127.0 / safe
    xq = torch.round(x.nan_to_num(0.0, 0.0, 0.0) * inv).clamp(-127, 127)
    xq = torch.where((amax > 0) & ~bad, xq, torch.zeros_like(xq)).to(torch.int32)
    step = torch.where(amax > 0, safe / 127.0, torch.zeros_like(amax))
    step = torch.where(bad, torch.full_like(step, float("nan")), step)
    return xq, step[:, 0]


def ternary_linear(x, pos, neg, wscale, bias):
    """Exact int32 sums of int8 activations times {-1, 0, 1}, then float32 (acc * (xstep * wscale)) + bias."""
    K = x.shape[1]
    xq, step = quantize_act_int8(x)
    t = ternary_weight(pos, neg, K).to(torch.float64)
    acc = (xq.double() @ t.T).to(torch.int64)  # integers below 2^53: exact
    y = acc.float() * (step[:, None] * wscale.float())
    if bias is not None:
        y = y + bias.float()
    return y


# ---------------- embedding search ----------------

def topk_desc(scores, k):
    """Top-k by descending score, ties to the smaller index (the kernels' rule)."""
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return vals[:, :k].contiguous(), idx[:, :k].contiguous()


def int8_scores(qq, keys, key_scale):
    dots = (qq.double() @ keys.double().T).to(torch.int64)
    return dots.float() * key_scale.float()[None, :]


def search_int8(qq, qstep, keys, key_scale, k):
    v, i = topk_desc(int8_scores(qq, keys, key_scale), k)
    return v * qstep[:, None], i


def binary_scores(qbits, kbits, d):
    """qbits (Q, d/8), kbits (n, d/8) uint8 -> d - 2 * Hamming (the dot product of +-1 vectors)."""
    qb = ((qbits[:, :, None].long() >> torch.arange(8, device=qbits.device)) & 1).reshape(qbits.shape[0], -1)[:, :d]
    kb = ((kbits[:, :, None].long() >> torch.arange(8, device=kbits.device)) & 1).reshape(kbits.shape[0], -1)[:, :d]
    qs, ks = (2 * qb - 1).double(), (2 * kb - 1).double()
    return (qs @ ks.T).float()


def search_binary(qbits, kbits, d, k):
    return topk_desc(binary_scores(qbits, kbits, d), k)
