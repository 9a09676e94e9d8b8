"""Ops of the integer quantized linear layers (hotpath::int8_* / int4_*).

Every op takes x as a contiguous (M, K) float32 tensor and the buffers of its format (in kernel
layout, see reference/quant_int.py) and returns y (M, N) float32. Kernels: C++
(csrc/cpu/quant_int.cpp), Triton (backends/triton/quant_int.py); the default kernel is the
reference.
"""
from typing import Optional

from torch import Tensor

from .. import backends
from ..reference import quant_int as ref


def _rows_by(n_of):
    """Fake implementation: (M, N) float32 with N read off a buffer."""
    return lambda x, *bufs: x.new_empty(x.shape[0], n_of(*bufs))


@backends.op("int8_weight_only_linear", triton="quant_int.int8_weight_only_linear",
             fake=_rows_by(lambda qweight, scale, bias: scale.shape[0]))
def int8_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    return ref.int8_weight_only_linear(x, qweight, scale, bias)


@backends.op("int8_dynamic_linear", triton="quant_int.int8_dynamic_linear",
             fake=_rows_by(lambda qweight, scale, colsum, bias: scale.shape[0]))
def int8_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, colsum: Tensor, bias: Optional[Tensor]) -> Tensor:
    return ref.int8_dynamic_linear(x, qweight, scale, colsum, bias)


@backends.op("int4_weight_only_linear", triton="quant_int.int4_weight_only_linear",
             fake=_rows_by(lambda qweight, scale, zero, bias: scale.shape[0]))
def int4_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor]) -> Tensor:
    return ref.int4_weight_only_linear(x, qweight, scale, zero, bias)


@backends.op("int4_dynamic_linear", triton="quant_int.int4_dynamic_linear",
             fake=_rows_by(lambda qweight, scale, zero, bias: scale.shape[1]))
def int4_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor]) -> Tensor:
    return ref.int4_dynamic_linear(x, qweight, scale, zero, bias)
