"""Weight layouts of the quantized kernels: packing at quantization time, unpacking and
dequantizing for QuantLinear.dequantize / gradients, and the per-row int8 activation rule.

The kernels (C++, Triton) and the pure-torch references (hotpath.reference.quant_int /
quant_lowbit, which keep their own unpacking as independent oracles) read these layouts.

Integer formats (packing happens once, at quantization time):

- int8 row-major: codes (N, K) int8. Used by Int8WeightOnly (W8A16).
- int8 VNNI: codes padded to (Np, Kp) = (roundup(N, 16), roundup(K, 4)) and stored as
  (Np/16, Kp/4, 64) int8: block of 16 output channels x 4 consecutive k, channel-major inside,
  i.e. one 512-bit register = the 16 int32 lanes that _mm512_dpbusd_epi32 multiplies against a
  broadcast of 4 activation bytes. Used by Int8Dynamic (W8A8).
- int4 row-major halves: unsigned codes (N, K) padded to Kp = roundup(K, 64), each 64-block of
  one row stored in 32 bytes, byte i = code[i] | code[32 + i] << 4 (low nibbles hold the first
  32 k of the block, high nibbles the next 32): unpacked with one shift and one mask per register.
  Used by Int4WeightOnly (W4A16).
- int4 VNNI: unsigned codes (N, K) padded to Np, stored as (Np/16, K/8, 64) uint8: for 16 channels
  x 8 consecutive k, byte 4 * c + j = code[c, 8t + j] | code[c, 8t + 4 + j] << 4, so a mask gives
  the u8 operand of one dpbusd (k 8t..8t+3) and a shift the next (k 8t+4..8t+7). Used by
  Int4Dynamic (W4A8).

Low-bit float / ternary formats (csrc/cpu/quant_lowbit.cpp, backends/triton/quant_lowbit.py):
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
import torch


# ---------------------------------------------------------------- integer layouts

def _roundup(a, b):
    return (a + b - 1) // b * b


def pack_int8_vnni(codes):
    """codes (N, K) int8 -> (Np/16, Kp/4, 64) int8."""
    N, K = codes.shape
    Np, Kp = _roundup(max(N, 1), 16), _roundup(max(K, 1), 4)
    w = codes.new_zeros(Np, Kp)
    w[:N, :K] = codes
    return w.view(Np // 16, 16, Kp // 4, 4).permute(0, 2, 1, 3).contiguous().view(Np // 16, Kp // 4, 64)


def unpack_int8_vnni(packed, N, K):
    nb, k4, _ = packed.shape
    w = packed.view(nb, k4, 16, 4).permute(0, 2, 1, 3).reshape(nb * 16, k4 * 4)
    return w[:N, :K]


def pack_int4_rows(codes):
    """unsigned codes (N, K) in [0, 15] -> (N, Kp/2) uint8, Kp = roundup(K, 64)."""
    N, K = codes.shape
    Kp = _roundup(max(K, 1), 64)
    c = torch.zeros(N, Kp, dtype=torch.uint8, device=codes.device)
    c[:, :K] = codes.to(torch.uint8)
    c = c.view(N, Kp // 64, 2, 32)
    return (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(N, Kp // 2)


def unpack_int4_rows(packed, K):
    N = packed.shape[0]
    p = packed.view(N, -1, 32)
    c = torch.stack([p & 15, p >> 4], dim=2)  # (N, Kp/64, 2, 32)
    return c.reshape(N, -1)[:, :K]


def pack_int4_vnni(codes):
    """unsigned codes (N, K), K % 8 == 0 -> (Np/16, K/8, 64) uint8."""
    N, K = codes.shape
    if K % 8:
        raise ValueError(f"int4 VNNI packing needs K % 8 == 0, got K={K}")
    Np = _roundup(max(N, 1), 16)
    c = torch.zeros(Np, K, dtype=torch.uint8, device=codes.device)
    c[:N] = codes.to(torch.uint8)
    t = c.view(Np // 16, 16, K // 8, 2, 4).permute(0, 2, 1, 4, 3)  # (nb, k8, c, j, half)
    return (t[..., 0] | (t[..., 1] << 4)).contiguous().view(Np // 16, K // 8, 64)


def unpack_int4_vnni(packed, N, K):
    nb, k8, _ = packed.shape
    p = packed.view(nb, k8, 16, 4)
    t = torch.stack([p & 15, p >> 4], dim=-1)  # (nb, k8, c, j, half)
    return t.permute(0, 2, 1, 4, 3).reshape(nb * 16, k8 * 8)[:N, :K]


# ---------------------------------------------------------------- integer weights, dequantized

def int8_rows_weight(qweight, scale):
    return qweight.float() * scale.float()[:, None]


def int8_vnni_weight(qweight, scale, K):
    N = scale.shape[0]
    return unpack_int8_vnni(qweight, N, K).float() * scale.float()[:, None]


def int4_rows_weight(qweight, scale, zero, K):
    """scale / zero (N, K/G)."""
    N, ng = scale.shape
    G = K // ng
    q = unpack_int4_rows(qweight, K).float().view(N, ng, G)
    return ((q - zero.float()[:, :, None]) * scale.float()[:, :, None]).view(N, K)


def int4_vnni_weight(qweight, scale, zero, K):
    """scale / zero stored transposed, (K/G, N)."""
    ng, N = scale.shape
    G = K // ng
    q = unpack_int4_vnni(qweight, N, K).float().view(N, ng, G)
    return ((q - zero.t().float()[:, :, None]) * scale.t().float()[:, :, None]).view(N, K)


# ---------------------------------------------------------------- FP4 / ternary layouts

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


# ---------------------------------------------------------------- activations, top-k

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


def topk_desc(scores, k):
    """Top-k by descending score, ties to the smaller index (the kernels' rule)."""
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return vals[:, :k].contiguous(), idx[:, :k].contiguous()
