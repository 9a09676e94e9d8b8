"""FP4 E2M1 elements and the block formats MXFP4 and NVFP4 (with an optional random Hadamard
rotation along K).

MXFP4 (OCP MX v1.0): blocks of 32 along K share an E8M0 scale X = 2^(floor(log2 amax) - 2)
(2 = the largest E2M1 exponent), elements e2m1(w / X) rounded to nearest even, saturating at +-6.
NVFP4: blocks of 16 share an E4M3 scale s_b = e4m3(amax_b / (6 g)), with a float32 per-tensor
scale g = amax / (448 * 6) (1 for an all-zero tensor); elements e2m1(w / (s_b g)).
With hadamard=True the weight rows are rotated by the seeded blockwise Hadamard transform T
before quantization and the activations by the same T in `linear` (x W^T = (x T^T)(W T^T)^T):
outliers are spread over the Hadamard block, lowering the error of the 4-bit grid.
hadamard_mode="auto" (default) keeps the rotation of a layer only when it lowers that weight's
quantization error (NVFP4's 16-element E4M3-scaled blocks already adapt to heavy tails, so the
rotation, which makes every block Gaussian-like, can cost it a little); "always" rotates every
layer. The decision is recorded in the buffers (had_block = 0: not rotated).
"""
import abc
import dataclasses
from typing import Dict, Optional

import torch
from torch import Tensor

from .. import _validate as V
from .. import backends
from .._ops import quant_lowbit as ops
from . import packing as P
from . import _minifloat as mf
from ._base import QuantConfig, register_format
from ._lowbit_common import check_rounding, check_weight, finite_passthrough, host_int, prep_bias, prep_x, ste
from .hadamard import check_block, default_block, hadamard_signs

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def encode_fp4(x: Tensor, *, rounding="nearest", seed=0, generator=None) -> Tensor:
    """float tensor -> uint8 E2M1 codes (0..15; bit 3 = sign), saturating at +-6.
    E2M1 has no NaN: a NaN input is a ValueError."""
    V.tensor("x", x)
    check_rounding(rounding)
    return mf.encode(x, mf.E2M1, rounding, seed, generator)


def decode_fp4(codes: Tensor) -> Tensor:
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    return mf.decode(codes, mf.E2M1)


def _blocks(w, block):
    N, K = w.shape
    return w.reshape(N, K // block, block)


def _finite_amax(wb):
    return torch.where(torch.isfinite(wb), wb, torch.zeros_like(wb)).abs().amax(dim=-1)


def mx_quantize(w: Tensor, block=32, rounding="nearest", seed=0):
    """(N, K) float -> (codes (N, K) uint8 E2M1, scales (N, K/block) uint8 E8M0). Non-finite
    entries are left out of the block scale (callers reject or pass them through)."""
    wb = _blocks(w.float(), block)
    sc = mf.e8m0_encode_floor_log2(_finite_amax(wb), emax_elem=2)
    X = mf.e8m0_decode(sc)
    q = wb / X[..., None]
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    codes = mf.encode(q, mf.E2M1, rounding, seed).reshape(w.shape)
    return codes, sc


def mx_dequantize(codes, scales, block=32):
    N, K = codes.shape
    return (mf.decode(codes, mf.E2M1).reshape(N, K // block, block) * mf.e8m0_decode(scales)[..., None]).reshape(N, K)


def nv_tensor_scale(w):
    fin = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    amax = fin.abs().amax().float() if w.numel() else torch.zeros((), dtype=torch.float32)
    return torch.where(amax > 0, amax / (448.0 * 6.0), torch.ones_like(amax)).reshape(1)


def nv_quantize(w: Tensor, block=16, rounding="nearest", seed=0, tensor_scale=None):
    """(N, K) float -> (codes (N, K) uint8 E2M1, scales (N, K/block) uint8 E4M3, tensor_scale (1,) float32)."""
    w = w.float()
    g = nv_tensor_scale(w) if tensor_scale is None else tensor_scale.float().reshape(1)
    wb = _blocks(w, block)
    sb = _finite_amax(wb) / (6.0 * g)
    sc = mf.encode(sb, mf.E4M3)                       # RNE, saturating at 448
    denom = mf.decode(sc, mf.E4M3) * g               # float32, as the kernel multiplies
    q = torch.where(denom[..., None] > 0, wb / denom[..., None], torch.zeros_like(wb))
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    codes = mf.encode(q, mf.E2M1, rounding, seed).reshape(w.shape)
    return codes, sc, g


def nv_dequantize(codes, scales, tensor_scale, block=16):
    N, K = codes.shape
    v = mf.decode(codes, mf.E2M1).reshape(N, K // block, block) * mf.decode(scales, mf.E4M3)[..., None]
    return (v * tensor_scale.float()).reshape(N, K)


class _FP4Base(QuantConfig):
    block = 32
    scale_kind = 0

    def __post_init__(self):  # shared by the dataclass subclasses
        check_rounding(self.rounding)
        if not isinstance(self.hadamard, bool):
            raise TypeError(f"hadamard must be a bool, got {type(self.hadamard).__name__}")
        if self.hadamard_block is not None:
            check_block(self.hadamard_block, name="hadamard_block")
        V.one_of("hadamard_mode", self.hadamard_mode, ("auto", "always"))

    def _had_block(self, K):
        if self.hadamard_block is not None:
            if K % self.hadamard_block:
                raise ValueError(f"hadamard_block={self.hadamard_block} must divide in_features={K}")
            return self.hadamard_block
        return default_block(K)

    def validate_shape(self, out_features, in_features):
        if out_features < 1 or in_features < 1:
            raise ValueError(f"{type(self).__name__} needs a non-empty weight, got ({out_features}, {in_features})")
        if in_features % self.block:
            raise ValueError(f"{type(self).__name__}: in_features={in_features} must be a multiple of the block size "
                             f"{self.block} (pad the layer or leave it unquantized)")
        if self.hadamard:
            self._had_block(in_features)

    @abc.abstractmethod
    def _quantize(self, w):
        """float (N, K) -> (codes, scales, tensor_scale) in the rotated space when hadamard."""

    def _rotate(self, w, inverse=False, signs=None, block=None):
        K = w.shape[1]
        block = block or self._had_block(K)
        signs = hadamard_signs(K, self.seed, torch.float32, w.device) if signs is None else signs
        return ops.fwht(w.float().contiguous(), signs, block, inverse), signs, block

    def _encode(self, w):
        """Finite (N, K) float32 -> (codes, scales, tensor_scale, signs or None, hadamard block (0 = not
        rotated), the float32 weight the codes decode to in the original space)."""
        if not self.hadamard:
            codes, scales, g = self._quantize(w)
            return codes, scales, g, None, 0, self._dequant_codes(codes, scales, g)
        wt, signs, block = self._rotate(w)
        codes, scales, g = self._quantize(wt)
        deq, _, _ = self._rotate(self._dequant_codes(codes, scales, g), inverse=True, signs=signs, block=block)
        if self.hadamard_mode == "auto":
            # keep the rotation only where it lowers this weight's quantization error (on MiniLM the
            # rotation costs NVFP4 ~0.07 dB on average and gains MXFP4 ~0.15 dB: it is layer-dependent)
            pc, ps, pg = self._quantize(w)
            pdeq = self._dequant_codes(pc, ps, pg)
            if float((pdeq - w).pow(2).sum()) < float((deq - w).pow(2).sum()):
                return pc, ps, pg, signs, 0, pdeq
        return codes, scales, g, signs, block, deq

    def quantize_weight(self, weight: Tensor) -> Dict[str, Tensor]:
        check_weight(weight)
        self.validate_shape(*weight.shape)
        codes, scales, g, signs, block, _ = self._encode(weight.detach().float())
        q = {}
        if self.hadamard:
            q["had_signs"] = signs.contiguous()
            q["had_block"] = torch.tensor([block], dtype=torch.int64, device=weight.device)
        q.update(packed=P.pack_fp4(codes), scales=scales.contiguous(), tensor_scale=g.contiguous())
        return q

    @staticmethod
    def _rotation(q):
        if "had_signs" not in q:
            return None
        block = host_int(q["had_block"])
        return (q["had_signs"], block) if block > 0 else None

    @backends.takes_backend
    def dequantize_weight(self, q, backend="auto"):
        K = q["scales"].shape[1] * self.block
        w = ops.fp4_dequantize(q["packed"], q["scales"], self.scale_kind, self.block, q["tensor_scale"], K)
        rot = self._rotation(q)
        if rot is not None:
            w = ops.fwht(w, rot[0], rot[1], True)
        return w

    @backends.takes_backend
    def linear(self, x, q, bias: Optional[Tensor] = None, backend: str = "auto"):
        N = q["packed"].shape[0]
        K = q["scales"].shape[1] * self.block
        xf = prep_x(x, K)
        rot = self._rotation(q)
        if rot is not None:
            xf = ops.fwht(xf, rot[0], rot[1], False)
        y = ops.fp4_linear(xf, q["packed"], q["scales"], self.scale_kind, self.block, q["tensor_scale"],
                           prep_bias(bias, N, x.device))
        return y.to(x.dtype)

    def fake_quantize(self, w):
        V.tensor("w", w)
        w2 = w.detach().reshape(-1, w.shape[-1]).float()
        self.validate_shape(*w2.shape)
        wz = torch.where(torch.isfinite(w2), w2, torch.zeros_like(w2))
        wq = self._encode(wz)[5]
        return ste(w, finite_passthrough(w.detach(), wq.reshape(w.shape)))


@register_format
@dataclasses.dataclass
class MXFP4(_FP4Base):
    """OCP MXFP4: E2M1 weights in blocks of 32 along K with an E8M0 power-of-two scale;
    float activations (rotated by the Hadamard transform when hadamard=True)."""

    hadamard: bool = False
    hadamard_block: Optional[int] = None
    hadamard_mode: str = "auto"
    rounding: str = "nearest"
    seed: int = 0
    block = 32
    scale_kind = 0

    def _quantize(self, w):
        codes, sc = mx_quantize(w, 32, self.rounding, self.seed)
        return codes, sc, torch.ones(1, dtype=torch.float32, device=w.device)

    def _dequant_codes(self, codes, scales, g):
        return mx_dequantize(codes, scales, 32)


@register_format
@dataclasses.dataclass
class NVFP4(_FP4Base):
    """NVFP4: E2M1 weights in blocks of 16 along K with an E4M3 scale and a float32 per-tensor
    scale; random Hadamard rotation along K by default (hadamard_block: the largest power of two
    up to 256 dividing K unless given)."""

    hadamard: bool = True
    hadamard_block: Optional[int] = None
    hadamard_mode: str = "auto"
    rounding: str = "nearest"
    seed: int = 0
    block = 16
    scale_kind = 1

    def _quantize(self, w):
        return nv_quantize(w, 16, self.rounding, self.seed)

    def _dequant_codes(self, codes, scales, g):
        return nv_dequantize(codes, scales, g, 16)
