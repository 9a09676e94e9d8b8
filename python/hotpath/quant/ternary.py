"""Ternary (1.58-bit) weights, BitNet b1.58 style.

Weights: one float32 scale per tensor, gamma = mean |W| (absmean), codes t = clamp(round(W / gamma),
-1, 1), stored as two bit planes (2 bits per weight: `pos` and `neg`, bit j of word w = weight
32w + j). Activations: per-token symmetric int8, xq = rint(x * 127 / amax). The kernel sums
int8 activations where t = +1 and subtracts them where t = -1 (AVX-512 masked add / subtract on
int16 lanes): no multiplication in the weight path; y = acc * (amax / 127 * gamma) + bias.
"""
import dataclasses
from typing import Dict, Optional

import torch
from torch import Tensor

from .. import _validate as V
from .. import backends
from .._ops import quant_lowbit as ops
from . import packing as P
from ._base import QuantConfig, register_format
from ._lowbit_common import check_weight, finite_passthrough, host_int, prep_bias, prep_x, ste


def ternarize(w: Tensor, eps=1e-5):
    """(codes int8 in {-1, 0, 1}, gamma (1,) float32) for a float weight: absmean scale."""
    w = w.float()
    fin = torch.isfinite(w)
    wz = torch.where(fin, w, torch.zeros_like(w))
    gamma = wz.abs().mean().clamp_min(eps).reshape(1)   # non-finite entries count as 0 (QAT passthrough)
    t = torch.round(wz / gamma).clamp(-1, 1).to(torch.int8)
    return t, gamma


@register_format
@dataclasses.dataclass
class Ternary(QuantConfig):
    """BitNet b1.58: weights in {-1, 0, +1} times a per-tensor absmean scale, int8 activations
    per token. NaN / inf weights are rejected by quantize_weight (ValueError)."""

    eps: float = 1e-5

    def __post_init__(self):
        V.scalar("eps", self.eps, positive=True, allow_tensor=False)

    def validate_shape(self, out_features, in_features):
        if out_features < 1 or in_features < 1:
            raise ValueError(f"Ternary needs a non-empty weight, got ({out_features}, {in_features})")

    def quantize_weight(self, weight: Tensor) -> Dict[str, Tensor]:
        check_weight(weight)
        self.validate_shape(*weight.shape)
        t, gamma = ternarize(weight.detach(), self.eps)
        return {"pos": P.pack_bits(t > 0), "neg": P.pack_bits(t < 0), "wscale": gamma.contiguous(),
                "ternary_k": torch.tensor([weight.shape[1]], dtype=torch.int64, device=weight.device)}

    def dequantize_weight(self, q):
        K = self._k(q)
        return P.ternary_weight(q["pos"], q["neg"], K).float() * q["wscale"]

    def _k(self, q):
        if "ternary_k" in q:   # K (the bit planes are padded to 32)
            return host_int(q["ternary_k"])
        return q["pos"].shape[1] * 32

    @backends.takes_backend
    def linear(self, x, q, bias: Optional[Tensor] = None, backend: str = "auto"):
        N, nw = q["pos"].shape
        V.tensor("x", x, ndims=(2,))
        xf = prep_x(x, self._k(q))
        y = ops.ternary_linear(xf, q["pos"], q["neg"], q["wscale"], prep_bias(bias, N, x.device))
        return y.to(x.dtype)

    def fake_quantize_input(self, x):
        """QAT: the per-token int8 activation quantization the kernel applies (straight-through)."""
        return fake_quantize_act_int8(x)

    def fake_quantize(self, w):
        """Weights only (activations: fake_quantize_input)."""
        V.tensor("w", w)
        w2 = w.detach().reshape(-1, w.shape[-1]) if w.dim() else w.detach().reshape(1, 1)
        t, gamma = ternarize(w2, self.eps)
        wq = (t.float() * gamma).reshape(w.shape)
        return ste(w, finite_passthrough(w.detach(), wq))


def fake_quantize_act_int8(x: Tensor) -> Tensor:
    """Per-token int8 fake quantization of activations (BitNet QAT), straight-through gradient."""
    V.tensor("x", x)
    x2 = x.detach().reshape(-1, x.shape[-1])
    xq, step = P.quantize_act_int8(x2)
    return ste(x, (xq.float() * step[:, None]).reshape(x.shape))
