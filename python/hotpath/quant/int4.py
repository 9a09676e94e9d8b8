"""Group-wise int4 weight formats (codes packed two per byte).

Int4WeightOnly (W4A16): float activations, weights dequantized on the fly.
Int4Dynamic (W4A8): the same codes (repacked for VNNI) with per-token int8 activations; exact
integer accumulation inside each group, float sum over groups.

Codes are stored unsigned (0..2**bits - 1) with a per-group integer zero point: asymmetric
formats choose it, symmetric ones use the fixed 2**(bits-1) (signed code + offset).
bits may be 2, 3 or 4 (same kernels: smaller codes in the same nibbles).
"""
import dataclasses
from typing import Dict, Optional

import torch
from torch import Tensor

from ._base import register_format
from . import scales as S
from .int8 import _IntConfig
from .. import backends
from .._ops import quant_int as ops
from . import packing as P


@dataclasses.dataclass
class _Int4Config(_IntConfig):
    _BITS_RANGE = (2, 4)

    def __post_init__(self):
        self._check_common()
        gs = self.group_size
        if not isinstance(gs, int) or isinstance(gs, bool) or gs < 32 or gs % 32:
            raise ValueError(f"group_size must be a positive multiple of 32 (32, 64, 128, ...), got {gs!r}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {type(self.symmetric).__name__}")

    def _group(self, K):
        return self.group_size

    @property
    def _symmetric(self):
        return self.symmetric

    def validate_shape(self, out_features, in_features):
        super().validate_shape(out_features, in_features)
        if in_features % self.group_size:
            raise ValueError(f"in_features ({in_features}) must be divisible by group_size ({self.group_size}) "
                             f"for {type(self).__name__}")

    def _unsigned(self, weight, qparams):
        codes, s, z = self._codes(weight, qparams)
        qmin, _ = self._range()
        # shift signed (symmetric) codes to unsigned nibbles; the zero point moves with them
        return (codes - qmin).to(torch.uint8), s.contiguous(), (z - qmin).to(torch.uint8)


@register_format
@dataclasses.dataclass
class Int4WeightOnly(_Int4Config):
    """W4A16, group-wise scales (and zero points when asymmetric). Default scale choice: the
    per-group clipping search ("mse"); "rtn" is plain round-to-nearest."""
    group_size: int = 128
    symmetric: bool = False
    bits: int = 4
    scale_method: str = "mse"

    def quantize_weight(self, weight: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        codes, s, z = self._unsigned(weight, qparams)
        return {"qweight": P.pack_int4_rows(codes), "scale": s, "zero": z.contiguous()}

    @backends.takes_backend
    def linear(self, x, q, bias, backend="auto"):
        return ops.int4_weight_only_linear(self._x(x), q["qweight"], q["scale"], q["zero"], bias)

    def dequantize_weight(self, q):
        return P.int4_rows_weight(q["qweight"], q["scale"], q["zero"], q["scale"].shape[1] * self.group_size)


@register_format
@dataclasses.dataclass
class Int4Dynamic(_Int4Config):
    """W4A8: int4 group-wise weights, per-token int8 activations. scale / zero stored (K/G, N)."""
    group_size: int = 128
    symmetric: bool = False
    bits: int = 4
    scale_method: str = "mse"

    def quantize_weight(self, weight: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        codes, s, z = self._unsigned(weight, qparams)
        return {"qweight": P.pack_int4_vnni(codes), "scale": s.t().contiguous(), "zero": z.t().contiguous()}

    @backends.takes_backend
    def linear(self, x, q, bias, backend="auto"):
        return ops.int4_dynamic_linear(self._x(x), q["qweight"], q["scale"], q["zero"], bias)

    def dequantize_weight(self, q):
        return P.int4_vnni_weight(q["qweight"], q["scale"], q["zero"], q["scale"].shape[0] * self.group_size)

    def fake_quantize_input(self, x: Tensor) -> Tensor:
        return S.fake_quantize_activations(x)
