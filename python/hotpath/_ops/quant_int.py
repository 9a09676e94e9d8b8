"""Ops of the integer quantized linear layers (hotpath::int8_* / int4_*).

Every op takes x as a contiguous (M, K) tensor, float32 (bf16 / fp16 on CUDA), and the buffers of
its format (in kernel layout, see reference/quant_int.py) and returns y (M, N) as _ops/linear_out.py
says (16-bit for 16-bit x, else float32; NaN rows for non-finite rows of x). Kernels: C++
(csrc/cpu/quant_int.cpp), Triton (backends/triton/quant_int.py); the default kernel is the
reference.
"""
from typing import Optional

from torch import Tensor

from .. import backends
from ..reference import quant_int as ref
from .linear_out import fake
from .linear_out import finish


@backends.op("int8_weight_only_linear", triton="quant_int.int8_weight_only_linear",
             fake=fake(lambda qweight, scale, bias: scale.shape[0]))
def int8_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.int8_weight_only_linear(x, qweight, scale, bias))


@backends.op("int8_dynamic_linear", triton="quant_int.int8_dynamic_linear",
             fake=fake(lambda qweight, scale, colsum, bias: scale.shape[0]))
def int8_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, colsum: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.int8_dynamic_linear(x, qweight, scale, colsum, bias))


@backends.op("int4_weight_only_linear", triton="quant_int.int4_weight_only_linear",
             fake=fake(lambda qweight, scale, zero, bias: scale.shape[0]))
def int4_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.int4_weight_only_linear(x, qweight, scale, zero, bias))


@backends.op("int4_dynamic_linear", triton="quant_int.int4_dynamic_linear",
             fake=fake(lambda qweight, scale, zero, bias: scale.shape[1]))
def int4_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.int4_dynamic_linear(x, qweight, scale, zero, bias))
