"""Custom ops of the low-bit float / ternary formats, the Hadamard transform and quantized
embedding search (issue 7). Inputs arrive validated, contiguous, float32 (fwht: float32/64)."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from .._triton import kernels
from ..reference import quant_lowbit as ref


def _out(y, x):
    return y.to(torch.float32).contiguous()


# ---------------- Hadamard ----------------

@torch.library.custom_op("hotpath::fwht", mutates_args=())
def fwht(x: Tensor, signs: Tensor, block: int, inverse: bool, backend: str) -> Tensor:
    which = _backend.resolve(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.fwht(x, signs, block, inverse)
    if which == "triton":
        return kernels("hadamard").fwht(x, signs, block, inverse)
    return ref.fwht(x, signs, block, inverse).contiguous()


@fwht.register_fake
def _(x, signs, block, inverse, backend):
    return torch.empty_like(x)


# ---------------- FP4 ----------------

@torch.library.custom_op("hotpath::fp4_linear", mutates_args=())
def fp4_linear(x: Tensor, packed: Tensor, scales: Tensor, scale_kind: int, block: int, tensor_scale: Tensor,
               bias: Optional[Tensor], backend: str) -> Tensor:
    which = _backend.resolve(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias)
    if which == "triton":
        return kernels("quant_lowbit").fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias)
    return _out(ref.fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias), x)


@fp4_linear.register_fake
def _(x, packed, scales, scale_kind, block, tensor_scale, bias, backend):
    return x.new_empty(x.shape[0], packed.shape[0], dtype=torch.float32)


@torch.library.custom_op("hotpath::fp4_dequantize", mutates_args=())
def fp4_dequantize(packed: Tensor, scales: Tensor, scale_kind: int, block: int, tensor_scale: Tensor, K: int,
                   backend: str) -> Tensor:
    which = _backend.resolve(backend, packed.device, has_triton_kernel=False)
    if which == "cpu":
        return torch.ops.hotpath_cpu.fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, K)
    return ref.fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, K).contiguous()


@fp4_dequantize.register_fake
def _(packed, scales, scale_kind, block, tensor_scale, K, backend):
    return packed.new_empty(packed.shape[0], K, dtype=torch.float32)


# ---------------- FP8 ----------------

@torch.library.custom_op("hotpath::fp8_linear", mutates_args=())
def fp8_linear(x: Tensor, codes: Tensor, scales: Tensor, fmt: str, bias: Optional[Tensor], backend: str) -> Tensor:
    which = _backend.resolve(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.fp8_linear(x, codes, scales, fmt == "e4m3", bias)
    if which == "triton":
        return kernels("quant_lowbit").fp8_linear(x, codes, scales, fmt, bias)
    return _out(ref.fp8_linear(x, codes, scales, fmt, bias), x)


@fp8_linear.register_fake
def _(x, codes, scales, fmt, bias, backend):
    return x.new_empty(x.shape[0], codes.shape[0], dtype=torch.float32)


# ---------------- Ternary ----------------

@torch.library.custom_op("hotpath::ternary_linear", mutates_args=())
def ternary_linear(x: Tensor, pos: Tensor, neg: Tensor, wscale: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    which = _backend.resolve(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.ternary_linear(x, pos, neg, wscale, bias)
    if which == "triton":
        return kernels("quant_lowbit").ternary_linear(x, pos, neg, wscale, bias)
    return _out(ref.ternary_linear(x, pos, neg, wscale, bias), x)


@ternary_linear.register_fake
def _(x, pos, neg, wscale, bias, backend):
    return x.new_empty(x.shape[0], pos.shape[0], dtype=torch.float32)


# ---------------- embedding search ----------------

@torch.library.custom_op("hotpath::embedding_search_int8", mutates_args=())
def embedding_search_int8(qq: Tensor, qstep: Tensor, keys: Tensor, packed: Tensor, key_scale: Tensor,
                          k: int, backend: str) -> Tuple[Tensor, Tensor]:
    """qq (Q, d) int8 queries, qstep (Q,) their steps, keys (n, d) int8 (plain layout), packed: the
    same keys + 128 as uint8 in the VNNI layout (see embeddings.pack_int8_keys), key_scale (n,)."""
    which = _backend.resolve(backend, qq.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.embedding_search_int8(qq, qstep, packed, key_scale, keys.shape[0], k)
    if which == "triton":
        return kernels("quant_lowbit").embedding_search_int8(qq, qstep, keys, key_scale, k)
    return ref.search_int8(qq, qstep, keys, key_scale, k)


@embedding_search_int8.register_fake
def _(qq, qstep, keys, packed, key_scale, k, backend):
    return qq.new_empty(qq.shape[0], k, dtype=torch.float32), qq.new_empty(qq.shape[0], k, dtype=torch.int64)


@torch.library.custom_op("hotpath::embedding_search_binary", mutates_args=())
def embedding_search_binary(qbits: Tensor, kbits: Tensor, d: int, k: int, backend: str) -> Tuple[Tensor, Tensor]:
    """qbits (Q, ceil(d/64)*8) uint8, kbits (n, same) uint8 -> top-k of d - 2 * Hamming."""
    which = _backend.resolve(backend, qbits.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.embedding_search_binary(qbits, kbits, d, k)
    if which == "triton":
        return kernels("quant_lowbit").embedding_search_binary(qbits, kbits, d, k)
    return ref.search_binary(qbits, kbits, d, k)


@embedding_search_binary.register_fake
def _(qbits, kbits, d, k, backend):
    return qbits.new_empty(qbits.shape[0], k, dtype=torch.float32), qbits.new_empty(qbits.shape[0], k, dtype=torch.int64)
