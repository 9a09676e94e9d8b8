"""References of the low-bit float / ternary kernels, the Hadamard transform and quantized
embedding search : decode the weights to float, then a plain matmul in float64.

Kernel layouts (packed by hotpath.quant.packing; read by csrc/cpu/quant_lowbit.cpp and
backends/triton/quant_lowbit.py; the decoding below is the reference's own):
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



# ---------------- small float formats, decoded from their bit fields ----------------

_FIELDS = {"e4m3": (4, 3, 7), "e5m2": (5, 2, 15), "e2m1": (2, 1, 1)}


def decode_minifloat(codes, fmt):
    """uint8 codes -> float32: sign, exponent and mantissa fields read one by one. E4M3 (OCP fn)
    has NaN at magnitude 0x7F and no infinities; E5M2 has IEEE-style inf / NaN; E2M1 neither."""
    ebits, mbits, bias = _FIELDS[fmt]
    c = codes.to(torch.int64) & ((1 << (1 + ebits + mbits)) - 1)
    sign = torch.where((c >> (ebits + mbits)) & 1 == 1, -1.0, 1.0).double()
    e = (c >> mbits) & ((1 << ebits) - 1)
    m = (c & ((1 << mbits) - 1)).double()
    normal = (1 + m / (1 << mbits)) * torch.pow(2.0, (e - bias).double())
    sub = m * 2.0 ** (1 - bias - mbits)
    v = sign * torch.where(e == 0, sub, normal)
    mag = c & ((1 << (ebits + mbits)) - 1)
    if fmt == "e4m3":
        v = torch.where(mag == 0x7F, float("nan"), v)
    elif fmt == "e5m2":
        top = e == (1 << ebits) - 1
        v = torch.where(top & (m == 0), sign * float("inf"), v)
        v = torch.where(top & (m != 0), float("nan"), v)
    return v.float()


def decode_e8m0(codes):
    """E8M0 block scales: 2^(c - 127); 0xFF is NaN."""
    c = codes.to(torch.int64)
    return torch.where(c == 255, float("nan"), torch.pow(2.0, (c - 127).double())).float()


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

def unpack_fp4(packed, K):
    N = packed.shape[0]
    p = packed.reshape(N, -1, 16)
    c = torch.stack([p & 0xF, p >> 4], dim=2).reshape(N, -1)
    return c[:, :K].contiguous()


def fp4_scale_values(scales, scale_kind):
    return decode_e8m0(scales) if scale_kind == 0 else decode_minifloat(scales, "e4m3")


def fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, K):
    """float32 (N, K) weight: (e2m1(code) * block_scale) * tensor_scale, rounded in float32."""
    codes = unpack_fp4(packed, K)
    vals = decode_minifloat(codes, "e2m1")
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
    return decode_minifloat(codes, fmt) * scales.float()[:, None]


def fp8_linear(x, codes, scales, fmt, bias):
    y = x.double() @ fp8_dequantize(codes, scales, fmt).double().T
    if bias is not None:
        y = y + bias.double()
    return y


# ---------------- Ternary ----------------

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
    qb = ((qbits[:, :, None].long() >> torch.arange(8, device=qbits.device)) & 1).reshape(qbits.shape[0], 8 * qbits.shape[1])[:, :d]
    kb = ((kbits[:, :, None].long() >> torch.arange(8, device=kbits.device)) & 1).reshape(kbits.shape[0], 8 * kbits.shape[1])[:, :d]
    qs, ks = (2 * qb - 1).double(), (2 * kb - 1).double()
    return (qs @ ks.T).float()


def search_binary(qbits, kbits, d, k):
    return topk_desc(binary_scores(qbits, kbits, d), k)
