"""Reference (pure torch) of FP8Dynamic: float8 E4M3 weights with a float32 scale per output
channel, activations quantized per token to E4M3 at run time (torchao's
Float8DynamicActivationFloat8Weight with per-row granularity).

Per token m: sx_m = amax_k |x_mk| / 448 (1 for an all-zero row; NaN for a row holding inf / NaN),
qx_mk = e4m3(x_mk / sx_m) rounded to nearest, ties to even (the division in float32). Then
y_mn = float32(sum_k qx_mk * w_nk) * (sx_m * s_n) + b_n, the sum exact (float64: each product of
two E4M3 values has at most 8 significant bits and lies in [2^-18, 2^17], so K <= 2^20 terms sum
exactly in 53 bits). Weight codes: (N, K) uint8 E4M3 (OCP e4m3fn), as FP8WeightOnly stores them.
"""
import torch

from .quant_lowbit import decode_minifloat

E4M3_MAX = 448.0


def round_e4m3(v):
    """Finite float tensor -> the nearest E4M3 value (ties to even), saturating at +-448, float64."""
    a = v.double().abs().clamp(max=E4M3_MAX)
    _, ex = torch.frexp(a)                                  # a = f * 2^ex, f in [0.5, 1)
    e = torch.clamp(ex - 1, min=-6)                         # binade; subnormals share 2^-6's quantum
    quantum = torch.pow(2.0, (e - 3).double())
    r = torch.round(a / quantum) * quantum                  # torch.round: ties to even
    return torch.where(v < 0, -r, r)


def quantize_activations_fp8(x):
    """x (M, K) -> (qx (M, K) float32 holding E4M3 values, sx (M,) float32)."""
    x = x.float()
    amax = x.abs().amax(dim=1) if x.shape[1] > 0 else x.new_zeros(x.shape[0])
    sx = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    sx = torch.where(torch.isfinite(amax), sx, torch.full_like(amax, float("nan")))
    q = x / sx[:, None]
    q = round_e4m3(torch.where(torch.isfinite(q), q, torch.zeros_like(q))).float()
    return q, sx


def fp8_dynamic_linear(x, codes, scales, bias):
    q, sx = quantize_activations_fp8(x)
    w = decode_minifloat(codes, "e4m3")
    acc = q.double() @ w.double().T
    y = acc.float() * (sx[:, None] * scales.float()[None, :])
    if bias is not None:
        y = y + bias.float()
    return y
