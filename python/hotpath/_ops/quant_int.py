"""Custom ops of the integer quantized linear layers (namespace hotpath).

Every op takes x as a contiguous (M, K) float32 tensor and the buffers of its format (in kernel
layout, see python/hotpath/reference/quant_int.py) and returns y (M, N) float32. CPU tensors run
the C++ kernels (csrc/cpu/quant_int.cpp), CUDA tensors (or TRITON_INTERPRET=1 with
backend="triton") the Triton kernels (kernels/quant_int.py), anything else the reference.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import _backend
from .._triton import kernels
from ..reference import quant_int as ref

# set when kernels/quant_int.py provides the Triton kernels (else "triton" runs the reference)
_HAS_TRITON_KERNELS = False


def _which(backend, x):
    return _backend.resolve(backend, x.device, has_triton_kernel=_HAS_TRITON_KERNELS)


@torch.library.custom_op("hotpath::int8_weight_only_linear", mutates_args=())
def int8_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, bias: Optional[Tensor],
                            backend: str) -> Tensor:
    which = _which(backend, x)
    if which == "cpu":
        return torch.ops.hotpath_cpu.int8_weight_only_linear(x, qweight, scale, bias)
    if which == "triton":
        return kernels("quant_int").int8_weight_only_linear(x, qweight, scale, bias)
    return ref.int8_weight_only_linear(x, qweight, scale, bias)


@int8_weight_only_linear.register_fake
def _(x, qweight, scale, bias, backend):
    return x.new_empty(x.shape[0], scale.shape[0])


@torch.library.custom_op("hotpath::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, colsum: Tensor, bias: Optional[Tensor],
                        backend: str) -> Tensor:
    which = _which(backend, x)
    if which == "cpu":
        return torch.ops.hotpath_cpu.int8_dynamic_linear(x, qweight, scale, colsum, bias)
    if which == "triton":
        return kernels("quant_int").int8_dynamic_linear(x, qweight, scale, colsum, bias)
    return ref.int8_dynamic_linear(x, qweight, scale, colsum, bias)


@int8_dynamic_linear.register_fake
def _(x, qweight, scale, colsum, bias, backend):
    return x.new_empty(x.shape[0], scale.shape[0])


@torch.library.custom_op("hotpath::int4_weight_only_linear", mutates_args=())
def int4_weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor],
                            backend: str) -> Tensor:
    which = _which(backend, x)
    if which == "cpu":
        return torch.ops.hotpath_cpu.int4_weight_only_linear(x, qweight, scale, zero, bias)
    if which == "triton":
        return kernels("quant_int").int4_weight_only_linear(x, qweight, scale, zero, bias)
    return ref.int4_weight_only_linear(x, qweight, scale, zero, bias)


@int4_weight_only_linear.register_fake
def _(x, qweight, scale, zero, bias, backend):
    return x.new_empty(x.shape[0], scale.shape[0])


@torch.library.custom_op("hotpath::int4_dynamic_linear", mutates_args=())
def int4_dynamic_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero: Tensor, bias: Optional[Tensor],
                        backend: str) -> Tensor:
    which = _which(backend, x)
    if which == "cpu":
        return torch.ops.hotpath_cpu.int4_dynamic_linear(x, qweight, scale, zero, bias)
    if which == "triton":
        return kernels("quant_int").int4_dynamic_linear(x, qweight, scale, zero, bias)
    return ref.int4_dynamic_linear(x, qweight, scale, zero, bias)


@int4_dynamic_linear.register_fake
def _(x, qweight, scale, zero, bias, backend):
    return x.new_empty(x.shape[0], scale.shape[1])
