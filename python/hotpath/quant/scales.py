"""Choosing quantization scales (and zero points) for integer weight formats.

Two methods, per row (int8: per output channel) or per group (int4):

- "rtn": round-to-nearest with the full range: symmetric scale = amax / qmax, asymmetric
  scale = (max - min) / (levels - 1) with an integer zero point. Cheap and exact at 8 bits.
- "mse": a clipping search. For every group, candidate ranges shrunk by a factor r in a grid
  (symmetric: amax * r, 20 steps of r in [0.5, 1]; asymmetric: [min * r_lo, max * r_hi] over a
  6 x 6 grid) are quantized and
  the one with the smallest squared weight error is kept. Clipping a few outliers buys a finer
  step for the bulk of the group, which at 4 bits lowers the error noticeably (it is the
  default for the int4 formats; int8 defaults to "rtn").

All scales are floored (SCALE_FLOOR) so all-zero rows and groups quantize to code 0 without NaN.
"""
import math

import torch

SCALE_FLOOR = 1e-12
METHODS = ("rtn", "mse")


def qrange(bits, symmetric):
    """Integer code range (qmin, qmax) of a format: symmetric codes are signed, asymmetric unsigned."""
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _sym_scale(amax, qmax):
    return (amax / qmax).clamp_min(SCALE_FLOOR)


def _asym_params(lo, hi, qmin, qmax):
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(SCALE_FLOOR)
    zero = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero


def fake_quant_values(w, scale, zero, qmin, qmax):
    """Quantize-dequantize of groups w (R, G) with per-group scale / zero (R, 1): float32."""
    q = (w / scale).round() + zero
    return (q.clamp(qmin, qmax) - zero) * scale


def choose_qparams(w, bits, symmetric, method="rtn", grid=20, min_ratio=0.5, code_range=None, grid2d=6):
    """w (R, G) float32 groups -> (scale (R,), zero (R,)) float32; zero is integer valued
    (0 for symmetric formats). See the module docstring for the methods."""
    if method not in METHODS:
        raise ValueError(f"scale_method must be one of {METHODS}, got {method!r}")
    w = w.float()
    qmin, qmax = code_range or qrange(bits, symmetric)
    if symmetric:
        amax = w.abs().amax(dim=1)
        scale = _sym_scale(amax, qmax)
        zero = torch.zeros_like(scale)
        if method == "rtn":
            return scale, zero
        best_err = _err(w, scale, zero, qmin, qmax)
        for r in torch.linspace(1.0, min_ratio, grid)[1:].tolist():
            s = _sym_scale(amax * r, qmax)
            err = _err(w, s, zero, qmin, qmax)
            better = err < best_err
            scale = torch.where(better, s, scale)
            best_err = torch.where(better, err, best_err)
        return scale, zero
    lo = w.amin(dim=1).clamp_max(0.0)
    hi = w.amax(dim=1).clamp_min(0.0)
    scale, zero = _asym_params(lo, hi, qmin, qmax)
    if method == "rtn":
        return scale, zero
    best_err = _err(w, scale, zero, qmin, qmax)
    ratios = torch.linspace(1.0, min_ratio, grid2d).tolist()  # grid2d**2 candidate ranges
    for r_lo in ratios:
        for r_hi in ratios:
            if r_lo == 1.0 and r_hi == 1.0:
                continue
            s, z = _asym_params(lo * r_lo, hi * r_hi, qmin, qmax)
            err = _err(w, s, z, qmin, qmax)
            better = err < best_err
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
            best_err = torch.where(better, err, best_err)
    return scale, zero


def _err(w, scale, zero, qmin, qmax):
    d = fake_quant_values(w, scale[:, None], zero[:, None], qmin, qmax) - w
    return (d * d).sum(dim=1)


def quantize_codes(w, scale, zero, qmin, qmax):
    """Integer codes (as float) of groups w (R, G) with scale / zero (R,)."""
    return ((w / scale[:, None]).round() + zero[:, None]).clamp(qmin, qmax)


# ---------------------------------------------------------------- fake quantization (QAT)

class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, v):
        return v.round()

    @staticmethod
    def backward(ctx, g):
        return g


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times `factor` backward (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, v, factor):
        ctx.factor = factor
        return v.view_as(v)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def lsq_fake_quantize(w, scale, zero, qmin, qmax):
    """Fake quantization of groups w (..., G) with scale / zero (..., 1).

    Values equal (clamp(round(w / s) + z, qmin, qmax) - z) * s, i.e. bit-identical to quantizing
    then dequantizing. Gradients: straight-through for w inside the clipping range (zero outside);
    LSQ for a learnable scale: d/ds = round(w/s) - w/s inside, the clipped code outside, scaled by
    1 / sqrt(G * qmax) (Esser et al., 2020). The zero point is integer and not learned.
    """
    if scale.requires_grad:
        scale = _GradScale.apply(scale, 1.0 / math.sqrt(w.shape[-1] * max(qmax, 1)))
    q = (_RoundSTE.apply(w / scale) + zero).clamp(qmin, qmax)
    return (q - zero) * scale


def fake_quantize_activations(x):
    """Per-token symmetric int8 fake quantization of x (..., K), as the dynamic kernels quantize
    activations (scale amax / 127 per row, detached); straight-through gradient."""
    xf = x.float()
    amax = xf.detach().abs().amax(dim=-1, keepdim=True)
    sx = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return ((_RoundSTE.apply(xf / sx)).clamp(-127, 127) * sx).to(x.dtype)
