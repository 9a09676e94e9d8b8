"""Triton blockwise random Hadamard transform, tiled so every launch fits the shared memory of any
GPU: one program per (row tile, output column chunk of one Hadamard block). The Sylvester matrix
is never stored: each (BI, BJ) piece of it is generated in registers (H_ij = (-1)^popcount(i & j))
and multiplied with tl.dot, accumulating over the block's input chunks; the random signs are
applied before (forward) or after (inverse). float32 dots keep float32 accuracy (IEEE or 3xTF32 by
the precision policy, never plain TF32: the rotation must match the CPU kernel to float rounding);
float64 is IEEE.

The former kernel held the whole (block, block) matrix and a (16, block) row tile in shared
memory: 278,528 B for block = 256 in float32, over the 227 KB of an H100 / H200 (seen on an H200). Now a
program needs smem_bytes(BM, BJ, BI, e, 0, stages, b_op_bytes=e) (backends/triton/_qgemm.py), at
most 64 KB in float32, and the configuration is checked against the device before launch.
"""
import math

import torch
import triton
import triton.language as tl

from . import _qgemm as Q
from .pairwise import dot_precision, full_fp32


@triton.jit
def _fwht_kernel(x_ptr, s_ptr, y_ptr, M, K, norm, BLOCK: tl.constexpr, LOG2B: tl.constexpr,
                 BM: tl.constexpr, BJ: tl.constexpr, BI: tl.constexpr, INVERSE: tl.constexpr, F64: tl.constexpr,
                 PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < M
    blk0 = ((pid_j * BJ) // BLOCK) * BLOCK        # first column of this chunk's Hadamard block
    jl = (pid_j * BJ - blk0) + tl.arange(0, BJ)   # output columns, local to the block
    if F64:
        acc = tl.zeros([BM, BJ], dtype=tl.float64)
    else:
        acc = tl.zeros([BM, BJ], dtype=tl.float32)
    for i0 in tl.static_range(0, BLOCK, BI):
        il = i0 + tl.arange(0, BI)
        x = tl.load(x_ptr + rows[:, None] * K + (blk0 + il)[None, :], mask=rmask[:, None], other=0.0)
        if not INVERSE:
            x = x * tl.load(s_ptr + blk0 + il)[None, :]
        a = il[:, None] & jl[None, :]
        par = tl.zeros([BI, BJ], dtype=tl.int32)
        for b in tl.static_range(LOG2B):
            par = par ^ ((a >> b) & 1)
        H = (1 - 2 * par).to(x.dtype)
        acc += tl.dot(x, H, input_precision=PREC)
    y = acc * norm
    cols = blk0 + jl
    if INVERSE:
        y = y * tl.load(s_ptr + cols)[None, :]
    tl.store(y_ptr + rows[:, None] * K + cols[None, :], y, mask=rmask[:, None])


# (BM, BJ, BI, num_warps, num_stages), best-first; BJ / BI are capped at the Hadamard block.
# 16-bit inputs run tensor-core dots. IEEE float32 / float64 dots are FMAs whose operand rows stay
# in registers: compiled for sm_90, (64, 64, 64) spills 27 KB a thread in float32, (32, 64, 32)
# none. 3xTF32 (tensor cores, both operands split in registers): (64, 64, 64) spills 3-5 KB,
# (64, 64, 32) over 8 warps 0.4-1.1 KB, (32, 64, 32) none.
FWHT_CONFIGS = [(64, 64, 64, 4, 3), (64, 64, 32, 4, 2), (32, 32, 32, 4, 2), (16, 32, 16, 4, 1)]
FWHT_FMA_CONFIGS = [(32, 64, 32, 4, 2), (32, 32, 32, 4, 2), (16, 32, 16, 4, 1)]
FWHT_X3_CONFIGS = [(32, 64, 32, 4, 2), (32, 32, 32, 4, 2), (16, 32, 16, 4, 1)]


def fwht_smem(cfg, block, elem_bytes):
    """Shared memory (bytes) of one program of _fwht_kernel with cfg = (BM, BJ, BI, warps, stages)."""
    BM, BJ, BI, _, stages = cfg
    BJ, BI = min(BJ, block), min(BI, block)
    # x chunks are pipelined; the generated H piece is written once in the dot-operand layout
    return Q.smem_bytes(BM, BJ, BI, elem_bytes, 0, stages, b_op_bytes=elem_bytes, out_bytes=elem_bytes)


def fwht_config(block, elem_bytes, limit, prec="ieee"):
    base = FWHT_CONFIGS if elem_bytes < 4 else (FWHT_FMA_CONFIGS if prec == "ieee" else FWHT_X3_CONFIGS)
    cfgs = [(bm, min(bj, block), min(bi, block), w, s) for bm, bj, bi, w, s in base]
    return Q.pick(cfgs, lambda c: fwht_smem(c, block, elem_bytes), limit)


def fwht(x, signs, block, inverse):
    M, K = x.shape
    x = x.contiguous()
    signs = signs.to(x.dtype).contiguous()
    y = torch.empty_like(x)
    if M == 0 or K == 0:
        return y
    prec = dot_precision(x.dtype, x.device)
    prec = full_fp32(x.device) if prec == "tf32" else prec   # float32 accuracy even where TF32 is allowed
    BM, BJ, BI, warps, stages = fwht_config(block, x.element_size(), Q.smem_limit(x.device), prec)
    grid = (triton.cdiv(M, BM), K // BJ)
    _fwht_kernel[grid](x, signs, y, M, K, 1.0 / math.sqrt(block), BLOCK=block, LOG2B=int(math.log2(block)),
                       BM=BM, BJ=BJ, BI=BI, INVERSE=bool(inverse), F64=x.dtype == torch.float64, PREC=prec,
                       num_warps=warps, num_stages=stages)
    return y
