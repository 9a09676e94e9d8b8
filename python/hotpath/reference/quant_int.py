"""Reference (pure torch) for the integer quantized linear layers: weight packing / unpacking in
the kernel layouts, per-token activation quantization and the four linear ops.

Layouts (what the C++ kernels read; hotpath.quant.packing packs them at quantization time; the
unpacking below is the reference's own, an independent oracle of that packing):

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

Activations of the dynamic formats are quantized per token, symmetric: sx = amax / 127 (1 for an
all-zero row), qx = round_half_even(x / sx) in [-127, 127]. A row with a non-finite value gives a
NaN output row.
"""
import torch


def _roundup(a, b):
    return (a + b - 1) // b * b


# ---------------------------------------------------------------- unpacking

def unpack_int8_vnni(packed, N, K):
    nb, k4, _ = packed.shape
    w = packed.view(nb, k4, 16, 4).permute(0, 2, 1, 3).reshape(nb * 16, k4 * 4)
    return w[:N, :K]


def unpack_int4_rows(packed, K):
    N = packed.shape[0]
    p = packed.view(N, -1, 32)
    c = torch.stack([p & 15, p >> 4], dim=2)  # (N, Kp/64, 2, 32)
    return c.reshape(N, -1)[:, :K]


def unpack_int4_vnni(packed, N, K):
    nb, k8, _ = packed.shape
    p = packed.view(nb, k8, 16, 4)
    t = torch.stack([p & 15, p >> 4], dim=-1)  # (nb, k8, c, j, half)
    return t.permute(0, 2, 1, 4, 3).reshape(nb * 16, k8 * 8)[:N, :K]


# ---------------------------------------------------------------- activations

def quantize_activations(x):
    """x (M, K) float32 -> (qx (M, K) float32 holding integers in [-127, 127], sx (M,) float32)."""
    x = x.float()
    amax = x.abs().amax(dim=1) if x.shape[1] > 0 else x.new_zeros(x.shape[0])
    sx = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    sx = torch.where(torch.isfinite(amax), sx, torch.full_like(amax, float("nan")))
    qx = (x / sx[:, None]).round().clamp(-127, 127)
    return qx, sx


# ---------------------------------------------------------------- dequantized weights

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


# ---------------------------------------------------------------- linear ops (x is (M, K) float32)

def _bias(y, bias):
    return y if bias is None else y + bias.float()


def int8_weight_only_linear(x, qweight, scale, bias):
    """W8A16: float64 matmul of x with the dequantized weight."""
    w = int8_rows_weight(qweight, scale)
    return _bias((x.double() @ w.double().t()).float(), bias)


def int4_weight_only_linear(x, qweight, scale, zero, bias):
    w = int4_rows_weight(qweight, scale, zero, x.shape[1])
    return _bias((x.double() @ w.double().t()).float(), bias)


def int8_dynamic_accumulate(x, qweight, N):
    """Exact int32 accumulators acc[m, n] = sum_k qx[m, k] * qw[n, k] (as int64) and sx."""
    K = x.shape[1]
    qx, sx = quantize_activations(x)
    qw = unpack_int8_vnni(qweight, N, K)
    # float64 is exact here: |acc| < 127 * 128 * K << 2**53
    acc = (torch.nan_to_num(qx).double() @ qw.double().t()).to(torch.int64)
    return acc, sx


def int8_dynamic_linear(x, qweight, scale, colsum, bias):
    """W8A8: exact integer accumulation, then y = acc * (sx * sw) + bias in float32."""
    N = scale.shape[0]
    acc, sx = int8_dynamic_accumulate(x, qweight, N)
    y = acc.float() * (sx[:, None] * scale.float()[None, :])
    return _bias(y, bias)


def int4_dynamic_group_accumulate(x, qweight, scale, zero):
    """Exact per-group int accumulators acc[m, n, g] = sum_{k in g} qx[m, k] * (q[n, k] - z[n, g])."""
    ng, N = scale.shape
    K = x.shape[1]
    G = K // ng
    qx, sx = quantize_activations(x)
    q = unpack_int4_vnni(qweight, N, K).double().view(N, ng, G) - zero.t().double()[:, :, None]
    acc = torch.einsum("mgk,ngk->mng", torch.nan_to_num(qx).double().view(-1, ng, G), q).to(torch.int64)
    return acc, sx


def int4_dynamic_linear(x, qweight, scale, zero, bias):
    """W4A8: exact int accumulation per group, float32 sum over groups of scale * acc, times sx."""
    ng, N = scale.shape
    M, K = x.shape
    G = K // ng
    qx, sx = quantize_activations(x)
    qxd = torch.nan_to_num(qx).double()
    q = unpack_int4_vnni(qweight, N, K).double()
    y = x.new_zeros(M, N, dtype=torch.float32)
    for g in range(ng):  # one group at a time: memory stays O(M N)
        sl = slice(g * G, (g + 1) * G)
        acc = qxd[:, sl] @ (q[:, sl] - zero[g].double()[:, None]).t()
        y = y + acc.float() * scale[g].float()[None, :]
    y = y * sx[:, None]
    return _bias(y, bias)
