"""Integer weight formats: shared machinery (_IntConfig) and the int8 formats.

Int8WeightOnly (W8A16): per-output-channel symmetric int8 weights, float activations.
Int8Dynamic (W8A8): the same weights (repacked for VNNI), activations quantized per token at run
time, exact int32 accumulation, dequantizing epilogue with bias.
"""
import dataclasses
from typing import Dict, Optional

import torch
from torch import Tensor

from ._base import QuantConfig, register_format
from ._lowbit_common import check_weight, kernel_activations
from . import scales as S
from .. import backends
from .._ops import quant_int as ops
from . import packing as P


@dataclasses.dataclass
class _IntConfig(QuantConfig):
    """Group-wise integer weights: codes = clamp(round(w / s) + z, qmin, qmax) per group.

    Subclasses set _BITS_RANGE and `_pack(codes_unsigned_or_signed, scale, zero, N, K)`.
    """
    _BITS_RANGE = (2, 8)

    def _check_common(self):
        lo, hi = self._BITS_RANGE
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not lo <= self.bits <= hi:
            raise ValueError(f"bits must be an integer in [{lo}, {hi}] for {type(self).__name__}, got {self.bits!r}")
        if self.scale_method not in S.METHODS:
            raise ValueError(f"scale_method must be one of {S.METHODS}, got {self.scale_method!r}")

    # -- group helpers ---------------------------------------------------------------------
    def _group(self, K):
        return K

    @property
    def _symmetric(self):
        return True

    def _range(self):
        return S.qrange(self.bits, self._symmetric)

    def validate_shape(self, out_features, in_features):
        if out_features < 1 or in_features < 1:
            raise ValueError(f"{type(self).__name__} needs in_features >= 1 and out_features >= 1, "
                             f"got ({out_features}, {in_features})")

    def _check_weight(self, weight):
        if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 2:
            raise TypeError(f"weight must be a 2-D floating-point tensor, got "
                            f"{getattr(weight, 'dtype', type(weight))} {tuple(getattr(weight, 'shape', ()))}")
        self.validate_shape(*weight.shape)

    def _qparams(self, w):
        """w (N, K) float32 -> scale, zero (N, K / G), float32 (zero integer valued)."""
        N, K = w.shape
        G = self._group(K)
        s, z = S.choose_qparams(w.reshape(N * (K // G), G), self.bits, self._symmetric, self.scale_method,
                                  code_range=self._range())
        return s.view(N, K // G), z.view(N, K // G)

    def qat_params(self, weight: Tensor) -> Dict[str, Tensor]:
        """Initial LSQ parameters: "scale" (learned) and "zero" (fixed), each (N, K / G)."""
        self._check_weight(weight)
        check_weight(weight)
        s, z = self._qparams(weight.detach().float())
        return {"scale": s, "zero": z}

    def gptq_quantizer(self, weight: Tensor):
        qp = self.qat_params(weight)
        s, z = qp["scale"].float(), qp["zero"].float()
        G = self._group(weight.shape[1])
        qmin, qmax = self._range()

        def round_columns(w, k0):
            g = torch.arange(k0, k0 + w.shape[1], device=w.device) // G
            sc, zc = s[:, g].to(w.dtype), z[:, g].to(w.dtype)
            return (torch.clamp(torch.round(w / sc) + zc, qmin, qmax) - zc) * sc

        return qp, round_columns

    def _codes(self, weight, qparams):
        self._check_weight(weight)
        # a NaN / inf weight would poison its whole row's (group's) scale: refuse, as every format does
        check_weight(weight)
        w = weight.detach().float()
        N, K = w.shape
        G = self._group(K)
        if qparams is None:
            s, z = self._qparams(w)
        else:
            s, z = qparams["scale"].detach().float(), qparams["zero"].detach().float()
        qmin, qmax = self._range()
        codes = S.quantize_codes(w.reshape(-1, G), s.reshape(-1), z.reshape(-1), qmin, qmax).view(N, K)
        return codes, s, z

    def fake_quantize(self, w: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Tensor:
        self._check_weight(w)
        N, K = w.shape
        G = self._group(K)
        if qparams is None:
            s, z = self._qparams(w.detach().float())
        else:
            s, z = qparams["scale"], qparams["zero"].detach()
        qmin, qmax = self._range()
        out = S.lsq_fake_quantize(w.float().reshape(N, K // G, G), s.float()[..., None], z.float()[..., None], qmin, qmax)
        return out.reshape(N, K).to(w.dtype)

    _x = staticmethod(kernel_activations)


class _Int8Range:
    def _range(self):
        # restricted symmetric range [-qmax, qmax]: -128 never occurs, so the AVX2 path's
        # sign trick (abs(a) x sign(w, a)) cannot overflow int8 and dot products stay exact
        qmax = (1 << (self.bits - 1)) - 1
        return -qmax, qmax


@register_format
@dataclasses.dataclass
class Int8WeightOnly(_Int8Range, _IntConfig):
    """W8A16: per-output-channel symmetric int8 weights (scale = amax / 127 by default)."""
    bits: int = 8
    scale_method: str = "rtn"

    def __post_init__(self):
        self._check_common()

    def quantize_weight(self, weight: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        codes, s, _ = self._codes(weight, qparams)
        return {"qweight": codes.to(torch.int8).contiguous(), "scale": s.reshape(-1).contiguous()}

    @backends.takes_backend
    def linear(self, x, q, bias, backend="auto"):
        return ops.int8_weight_only_linear(self._x(x), q["qweight"], q["scale"], bias)

    def dequantize_weight(self, q):
        return P.int8_rows_weight(q["qweight"], q["scale"])


@register_format
@dataclasses.dataclass
class Int8Dynamic(_Int8Range, _IntConfig):
    """W8A8: per-channel symmetric int8 weights, per-token dynamic int8 activations, int32 accumulation.

    Buffers: qweight in the VNNI layout, scale (N,), colsum (N,) int32 (sum of each channel's codes:
    the kernel adds 128 to the activation codes to feed u8 x s8 dot products and removes
    128 * colsum), k (0-d, in_features: the layout pads K to a multiple of 4).
    """
    bits: int = 8
    scale_method: str = "rtn"

    def __post_init__(self):
        self._check_common()

    def validate_shape(self, out_features, in_features):
        super().validate_shape(out_features, in_features)
        # 255 * 128 * K must stay below 2**31 for exact int32 accumulation
        if in_features > 65536:
            raise ValueError(f"Int8Dynamic supports in_features <= 65536 (exact int32 accumulation), got {in_features}")

    def quantize_weight(self, weight: Tensor, qparams: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        codes, s, _ = self._codes(weight, qparams)
        c8 = codes.to(torch.int8)
        return {"qweight": P.pack_int8_vnni(c8), "scale": s.reshape(-1).contiguous(),
                "colsum": c8.to(torch.int32).sum(dim=1, dtype=torch.int32).contiguous(),
                "k": torch.tensor(weight.shape[1], dtype=torch.int64)}

    @backends.takes_backend
    def linear(self, x, q, bias, backend="auto"):
        return ops.int8_dynamic_linear(self._x(x), q["qweight"], q["scale"], q["colsum"], bias)

    def dequantize_weight(self, q):
        return P.int8_vnni_weight(q["qweight"], q["scale"], int(q["k"]))

    def fake_quantize_input(self, x: Tensor) -> Tensor:
        return S.fake_quantize_activations(x)
