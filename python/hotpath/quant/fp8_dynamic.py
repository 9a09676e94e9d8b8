"""FP8Dynamic: float8 E4M3 weights with one float32 scale per output channel (as FP8WeightOnly
stores them) and activations quantized per token to E4M3 at run time, scale amax / 448
(torchao's Float8DynamicActivationFloat8Weight with per-row granularity is the anchor).

    hp.quant.quantize_(model, hp.quant.FP8Dynamic())

y = (sum_k e4m3(x_mk / sx_m) w_nk) * sx_m * s_n + b_n. On a GPU with fp8 tensor cores (sm_89+:
Ada, Hopper, Blackwell) the Triton kernel runs fp8 x fp8 tl.dot with fp32 accumulation; on other
GPUs and in the interpreter the same E4M3 values feed a bf16 / fp32 dot (exact products). The
CPU path is the reference (reference/quant_fp8.py): E4M3 rounding emulated exactly, the dot
product summed exactly in float64. Buffers: codes (N, K) uint8, scales (N,) float32.
"""
import dataclasses
from typing import Optional

import torch
from torch import Tensor

from .. import _validate as V
from .. import backends
from .._ops import quant_fp8 as ops
from ._minifloat import E4M3, round_to_format
from ._base import register_format
from ._lowbit_common import prep_bias, prep_x
from .fp8 import FP8WeightOnly


class _RoundE4M3STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        return round_to_format(v, E4M3).to(v.dtype)  # nearest-even, saturating at +-448

    @staticmethod
    def backward(ctx, g):
        return g


@register_format
@dataclasses.dataclass
class FP8Dynamic(FP8WeightOnly):
    """E4M3 weights per output channel, E4M3 activations per token (dynamic). Only fmt="e4m3"."""

    fmt: str = "e4m3"

    def __post_init__(self):
        super().__post_init__()
        if self.fmt != "e4m3":
            raise ValueError(f"FP8Dynamic stores E4M3 weights and activations: fmt must be 'e4m3', got {self.fmt!r}")

    @backends.takes_backend
    def linear(self, x, q, bias: Optional[Tensor] = None, backend: str = "auto"):
        N, K = q["codes"].shape
        xf = prep_x(x, K)
        y = ops.fp8_dynamic_linear(xf, q["codes"], q["scales"], prep_bias(bias, N, x.device))
        return y.to(x.dtype)

    def fake_quantize_input(self, x: Tensor) -> Tensor:
        """Per-token E4M3 fake quantization of x (..., K) (scale detached), straight-through gradient."""
        V.tensor("x", x)
        xf = x.float()
        amax = xf.detach().abs().amax(dim=-1, keepdim=True)
        sx = torch.where(amax > 0, amax / E4M3.max, torch.ones_like(amax))
        return (_RoundE4M3STE.apply(xf / sx) * sx).to(x.dtype)
