"""FP8 (E4M3 / E5M2) encoders, decoders and the FP8WeightOnly format.

FP8WeightOnly: per-output-channel float32 scale s_n = amax_n / fmax (448 for E4M3, 57344 for
E5M2; an all-zero row gets s = 1), codes = fp8(w / s_n) rounded to nearest even, saturating.
The kernel decodes to float32 on the fly (W8A16 / W8A32): y = s_n * sum_k x_k fp8(c_nk) + b_n.
"""
import dataclasses
from typing import Dict, Optional

import torch
from torch import Tensor

from .. import _validate as V
from .. import backends
from .._ops import quant_lowbit as ops
from . import _minifloat as mf
from ._base import QuantConfig, register_format
from ._lowbit_common import check_rounding, check_weight, finite_passthrough, prep_bias, prep_x, ste

FP8_FORMATS = ("e4m3", "e5m2")


def _fmt(fmt, name="fmt"):
    V.one_of(name, fmt, FP8_FORMATS)
    return mf.FORMATS[fmt]


def encode_fp8(x: Tensor, fmt: str = "e4m3", *, rounding="nearest", seed=0, generator=None) -> Tensor:
    """float tensor -> uint8 FP8 codes (OCP). E4M3: saturating at +-448, NaN -> 0x7F / 0xFF,
    +-inf -> +-448. E5M2: finite overflow saturates at +-57344, +-inf and NaN are kept.
    rounding: "nearest" (ties to even) or "stochastic" (seeded by `seed` or `generator`)."""
    V.tensor("x", x)
    check_rounding(rounding)
    return mf.encode(x, _fmt(fmt), rounding, seed, generator)


def decode_fp8(codes: Tensor, fmt: str = "e4m3") -> Tensor:
    """uint8 FP8 codes -> float32 values."""
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    return mf.decode(codes, _fmt(fmt))


def round_fp8(x: Tensor, fmt: str = "e4m3", *, rounding="nearest", seed=0, generator=None) -> Tensor:
    """x rounded to FP8 values (float, same dtype as x): decode(encode(x))."""
    V.tensor("x", x)
    check_rounding(rounding)
    return mf.round_to_format(x, _fmt(fmt), rounding, seed, generator).to(x.dtype)


def _row_scales(w, fmt):
    amax = torch.where(torch.isfinite(w), w, torch.zeros_like(w)).abs().amax(dim=1).float()
    return torch.where(amax > 0, amax / fmt.max, torch.ones_like(amax))


@register_format
@dataclasses.dataclass
class FP8WeightOnly(QuantConfig):
    """8-bit float weights (E4M3 by default, or E5M2), one float32 scale per output channel,
    float activations. NaN / inf weights are rejected by quantize_weight (ValueError)."""

    fmt: str = "e4m3"
    rounding: str = "nearest"
    seed: int = 0

    def __post_init__(self):
        _fmt(self.fmt)
        check_rounding(self.rounding)

    def validate_shape(self, out_features, in_features):
        if out_features < 1 or in_features < 1:
            raise ValueError(f"FP8WeightOnly needs a non-empty weight, got ({out_features}, {in_features})")

    def _encode(self, w, scales=None):
        fmt = mf.FORMATS[self.fmt]
        s = _row_scales(w, fmt) if scales is None else scales.detach().float()
        codes = mf.encode(w.float() / s[:, None], fmt, self.rounding, self.seed)
        return codes, s

    def quantize_weight(self, weight: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """qparams: {"scales": (N,)} to use given row scales (GPTQ) instead of amax / fmax."""
        check_weight(weight)
        self.validate_shape(*weight.shape)
        codes, s = self._encode(weight.detach(), None if qparams is None else qparams["scales"])
        return {"codes": codes.contiguous(), "scales": s.contiguous()}

    def gptq_quantizer(self, weight: Tensor):
        check_weight(weight)
        fmt = mf.FORMATS[self.fmt]
        s = _row_scales(weight.detach().float(), fmt)

        def round_columns(w, k0):
            sc = s[:, None].to(w.dtype)
            return mf.decode(mf.encode((w / sc).float(), fmt, "nearest", 0), fmt).to(w.dtype) * sc

        return {"scales": s}, round_columns

    def dequantize_weight(self, q):
        return mf.decode(q["codes"], self.fmt) * q["scales"][:, None]

    @backends.takes_backend
    def linear(self, x, q, bias: Optional[Tensor] = None, backend: str = "auto"):
        N, K = q["codes"].shape
        xf = prep_x(x, K)
        y = ops.fp8_linear(xf, q["codes"], q["scales"], self.fmt, prep_bias(bias, N, x.device))
        return y.to(x.dtype)

    def fake_quantize(self, w):
        V.tensor("w", w)
        w2 = w.reshape(-1, w.shape[-1]) if w.dim() != 2 else w
        codes, s = self._encode(w2.detach())
        wq = (mf.decode(codes, self.fmt) * s[:, None]).reshape(w.shape)
        return ste(w, finite_passthrough(w.detach(), wq))
