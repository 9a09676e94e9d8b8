"""Triton blockwise random Hadamard transform: one program per (row tile, Hadamard block); the
Sylvester matrix is generated in registers (H_ij = (-1)^popcount(i & j)) and applied with tl.dot
(tensor cores on GPU), the random signs before (forward) or after (inverse) it."""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _fwht_kernel(x_ptr, s_ptr, y_ptr, M, K, norm, BLOCK: tl.constexpr, LOG2B: tl.constexpr,
                 BM: tl.constexpr, INVERSE: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_b * BLOCK + tl.arange(0, BLOCK)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    s = tl.load(s_ptr + cols)
    if not INVERSE:
        x = x * s[None, :]
    i = tl.arange(0, BLOCK)
    a = i[:, None] & i[None, :]
    par = tl.zeros([BLOCK, BLOCK], dtype=tl.int32)
    for b in tl.static_range(LOG2B):
        par = par ^ ((a >> b) & 1)
    H = (1 - 2 * par).to(x.dtype)
    if IEEE:
        y = tl.dot(x, H, input_precision="ieee")
    else:
        y = tl.dot(x, H)
    y = y * norm
    if INVERSE:
        y = y * s[None, :]
    tl.store(y_ptr + rows[:, None] * K + cols[None, :], y, mask=mask)


def fwht(x, signs, block, inverse):
    M, K = x.shape
    y = torch.empty_like(x)
    BM = 16
    grid = (triton.cdiv(M, BM), K // block)
    _fwht_kernel[grid](x, signs, y, M, K, 1.0 / math.sqrt(block), BLOCK=block, LOG2B=int(math.log2(block)),
                       BM=BM, INVERSE=bool(inverse), IEEE=True)
    return y
