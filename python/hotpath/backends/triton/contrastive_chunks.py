"""Triton epilogues of the library contrastive sweeps (backends/cuda/contrastive.py): one read of
a chunk's score scratch s (rows x m, float32 / float64, written by a cuBLAS GEMM) instead of
torch's elementwise passes (logsumexp alone reads and writes the chunk about six times; the
softmax weights take eight passes). Each program takes a BLOCK_R x BLOCK_C tile.

  _lse_chunk_kernel       per tile: each row's and each column's (max, sum of e^{s - max}),
                          merged on the host (rows: final; columns: folded into the running
                          state the next chunk continues)
  _softmax_chunk_kernel   s <- ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j}, in place
  _siglip_chunk_kernel    s <- sigmoid(s + bias) in place and its row sums, or the row sums of
                          softplus(s + bias)

Partial sums are relative to the partial max where it is finite, else to 0 (so +inf, NaN and
all -inf tiles keep torch.logsumexp's results: +inf, NaN, -inf). Natural exp / log, not exp2 with
log2(e) folded in: these kernels are bound by memory, and a float64 chunk keeps its precision
(Triton rounds a Python float constant to float32).
"""
import torch
import triton
import triton.language as tl

from .pairwise import _scal, split

BLOCK_C, WARPS = 128, 4


def _block_r(s):
    # float64's exp / log are libdevice calls: 32 rows of them take ~250 registers, 8 rows ~100
    return 8 if s.dtype == torch.float64 else 32


@triton.jit
def _finite_or_zero(v):
    return tl.where(tl.abs(v) == float("inf"), 0.0, v)


@triton.jit
def _tile(S, s_s, r, m, other, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_r[:, None] < r) & (offs_c[None, :] < m)
    ptr = S + offs_r[:, None].to(tl.int64) * s_s + offs_c[None, :]
    return tl.load(ptr, mask=mask, other=other), ptr, mask, offs_r, offs_c


@triton.jit
def _lse_chunk_kernel(S, RMAX, RSUM, CMAX, CSUM, r, m, s_s, s_rp, s_cp, COLS: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, _, _, offs_r, offs_c = _tile(S, s_s, r, m, -float("inf"), BLOCK_R, BLOCK_C)
    rmax = tl.max(s, 1)
    rsum = tl.sum(tl.exp(s - _finite_or_zero(rmax)[:, None]), 1)
    tl.store(RMAX + tl.program_id(1) * s_rp + offs_r, rmax, mask=offs_r < r)
    tl.store(RSUM + tl.program_id(1) * s_rp + offs_r, rsum, mask=offs_r < r)
    if COLS:
        cmax = tl.max(s, 0)
        csum = tl.sum(tl.exp(s - _finite_or_zero(cmax)[None, :]), 0)
        tl.store(CMAX + tl.program_id(0) * s_cp + offs_c, cmax, mask=offs_c < m)
        tl.store(CSUM + tl.program_id(0) * s_cp + offs_c, csum, mask=offs_c < m)


@triton.jit
def _softmax_chunk_kernel(S, RA, RL, CA, CL, r, m, s_s, HAS_R: tl.constexpr, HAS_C: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, ptr, mask, offs_r, offs_c = _tile(S, s_s, r, m, 0.0, BLOCK_R, BLOCK_C)
    w = tl.zeros_like(s)
    if HAS_R:
        ra = tl.load(RA + offs_r, mask=offs_r < r, other=0.0)
        rl = tl.load(RL + offs_r, mask=offs_r < r, other=0.0)
        w += ra[:, None] * tl.exp(s - rl[:, None])
    if HAS_C:
        ca = tl.load(CA + offs_c, mask=offs_c < m, other=0.0)
        cl = tl.load(CL + offs_c, mask=offs_c < m, other=0.0)
        w += ca[None, :] * tl.exp(s - cl[None, :])
    tl.store(ptr, w, mask=mask)


@triton.jit
def _siglip_chunk_kernel(S, RPART, r, m, s_s, s_p, b_hi, b_lo, GRAD: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, ptr, mask, offs_r, _ = _tile(S, s_s, r, m, 0.0, BLOCK_R, BLOCK_C)
    z = s + _scal(b_hi, b_lo, S.dtype.element_ty)
    e = tl.exp(-tl.abs(z))   # in (0, 1]: never overflows
    if GRAD:
        q = 1.0 / (1.0 + e)
        v = tl.where(z >= 0, q, e * q)      # sigmoid(z)
        tl.store(ptr, v, mask=mask)
    else:                                    # softplus(z) = max(z, 0) + log(1 + e^{-|z|})
        v = tl.maximum(z, 0.0) + tl.log(1.0 + e)
    tl.store(RPART + tl.program_id(1) * s_p + offs_r, tl.sum(tl.where(mask, v, 0.0), 1), mask=offs_r < r)


def _grid(s):
    return (triton.cdiv(s.shape[0], _block_r(s)), triton.cdiv(s.shape[1], BLOCK_C))


def lse_partials(s, want_col):
    """((row max, row sum) each (column tiles, rows), (column max, column sum) each (row tiles, m)
    or None): the chunk's partial log-sum-exp pairs, sums relative to the finite-safe max."""
    g = _grid(s)
    rmax, rsum = (s.new_empty(g[1], s.shape[0]) for _ in range(2))
    cmax, csum = (s.new_empty(g[0] if want_col else 0, s.shape[1]) for _ in range(2))
    _lse_chunk_kernel[g](s, rmax, rsum, cmax, csum, s.shape[0], s.shape[1], s.stride(0), rmax.stride(0),
                         max(cmax.stride(0), 1), COLS=bool(want_col), BLOCK_R=_block_r(s), BLOCK_C=BLOCK_C,
                         num_warps=WARPS)
    return (rmax, rsum), ((cmax, csum) if want_col else None)


def softmax_weights_(s, ra, rl, ca, cl):
    """s <- ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j} in place (a term absent when its pair is None)."""
    has_r, has_c = ra is not None, ca is not None
    dummy = s.new_empty(0)
    _softmax_chunk_kernel[_grid(s)](s, ra.contiguous() if has_r else dummy, rl.contiguous() if has_r else dummy,
                                    ca.contiguous() if has_c else dummy, cl.contiguous() if has_c else dummy,
                                    s.shape[0], s.shape[1], s.stride(0), HAS_R=has_r, HAS_C=has_c,
                                    BLOCK_R=_block_r(s), BLOCK_C=BLOCK_C, num_warps=WARPS)
    return s


def siglip_rows_(s, bias, grad):
    """Row sums of sigmoid(s + bias), written over s, if grad; else of softplus(s + bias)."""
    g = _grid(s)
    part = s.new_empty(g[1], s.shape[0])
    b_hi, b_lo = split(bias)
    _siglip_chunk_kernel[g](s, part, s.shape[0], s.shape[1], s.stride(0), part.stride(0), b_hi, b_lo,
                            GRAD=bool(grad), BLOCK_R=_block_r(s), BLOCK_C=BLOCK_C, num_warps=WARPS)
    return part.sum(0)
