"""Op of the FP8Dynamic format (hotpath::fp8_dynamic_linear): x (M, K) float32 (bf16 / fp16 on
CUDA), codes (N, K) uint8 E4M3, scales (N,) float32, optional bias (N,) -> y (M, N) as
_ops/linear_out.py says.
Kernels: Triton (backends/triton/quant_lowbit.py, fp8 tensor cores on sm_89+); the default
kernel, which CPU tensors run, is the reference (reference/quant_fp8.py)."""
from typing import Optional

from torch import Tensor

from .. import backends
from ..reference import quant_fp8 as ref
from .linear_out import fake, finish


@backends.op("fp8_dynamic_linear", triton="quant_lowbit.fp8_dynamic_linear",
             fake=fake(lambda codes, scales, bias: codes.shape[0]))
def fp8_dynamic_linear(x: Tensor, codes: Tensor, scales: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.fp8_dynamic_linear(x, codes, scales, bias))
