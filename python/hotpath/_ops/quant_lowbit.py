"""Ops of the low-bit float / ternary formats, the Hadamard transform and quantized embedding
search. Inputs arrive validated and contiguous; x is float32 (bf16 / fp16 on CUDA; fwht: float32/64),
and the linear ops return y as _ops/linear_out.py says. Kernels: C++
(csrc/cpu/quant_lowbit.cpp, hadamard.cpp, embedding_search.cpp), Triton
(backends/triton/quant_lowbit.py, hadamard.py); the default kernel is the reference.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import quant_lowbit as ref
from .linear_out import fake, finish

_linear_fake = fake(lambda w, *rest: w.shape[0])   # N = the rows of the first weight buffer


# ---------------- Hadamard ----------------

@backends.op("fwht", triton="hadamard.fwht", fake=lambda x, signs, block, inverse: x.new_empty(x.shape))
def fwht(x: Tensor, signs: Tensor, block: int, inverse: bool) -> Tensor:
    return ref.fwht(x, signs, block, inverse).contiguous()


# ---------------- FP4 ----------------

@backends.op("fp4_linear", triton="quant_lowbit.fp4_linear", fake=_linear_fake)
def fp4_linear(x: Tensor, packed: Tensor, scales: Tensor, scale_kind: int, block: int, tensor_scale: Tensor,
               bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.fp4_linear(x, packed, scales, scale_kind, block, tensor_scale, bias))


@backends.op("fp4_dequantize", fake=lambda packed, scales, scale_kind, block, tensor_scale, K: packed.new_empty(
    packed.shape[0], K, dtype=torch.float32))
def fp4_dequantize(packed: Tensor, scales: Tensor, scale_kind: int, block: int, tensor_scale: Tensor, K: int) -> Tensor:
    return ref.fp4_dequantize(packed, scales, scale_kind, block, tensor_scale, K).contiguous()


# ---------------- FP8 ----------------

@backends.op("fp8_linear", triton="quant_lowbit.fp8_linear", fake=_linear_fake)
def fp8_linear(x: Tensor, codes: Tensor, scales: Tensor, fmt: str, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.fp8_linear(x, codes, scales, fmt, bias))


# ---------------- Ternary ----------------

@backends.op("ternary_linear", triton="quant_lowbit.ternary_linear", fake=_linear_fake)
def ternary_linear(x: Tensor, pos: Tensor, neg: Tensor, wscale: Tensor, bias: Optional[Tensor]) -> Tensor:
    return finish(x, ref.ternary_linear(x, pos, neg, wscale, bias))


# ---------------- embedding search ----------------

def _search_fake(q, *rest):
    k = rest[-1]
    return q.new_empty(q.shape[0], k, dtype=torch.float32), q.new_empty(q.shape[0], k, dtype=torch.int64)


@backends.op("embedding_search_int8", triton="quant_lowbit.embedding_search_int8_op", fake=_search_fake)
def embedding_search_int8(qq: Tensor, qstep: Tensor, keys: Tensor, packed: Tensor, key_scale: Tensor,
                          k: int) -> Tuple[Tensor, Tensor]:
    """qq (Q, d) int8 queries, qstep (Q,) their steps, keys (n, d) int8 (plain layout), packed: the
    same keys + 128 as uint8 in the VNNI layout (see embeddings.pack_int8_keys), key_scale (n,)."""
    return ref.search_int8(qq, qstep, keys, key_scale, k)


@backends.op("embedding_search_binary", triton="quant_lowbit.embedding_search_binary", fake=_search_fake)
def embedding_search_binary(qbits: Tensor, kbits: Tensor, d: int, k: int) -> Tuple[Tensor, Tensor]:
    """qbits (Q, ceil(d/64)*8) uint8, kbits (n, same) uint8 -> top-k of d - 2 * Hamming."""
    return ref.search_binary(qbits, kbits, d, k)
