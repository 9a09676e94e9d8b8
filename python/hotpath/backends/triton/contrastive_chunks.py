"""Triton epilogues of the library contrastive sweeps (backends/cuda/contrastive.py): one read of
a chunk's GEMM output g = x_chunk @ y.T (rows x m, float32 / float64, from cuBLAS) instead of
torch's elementwise passes (scaling, masking and logsumexp read and write the chunk about eight
times; the softmax weights take ten). Each program takes a BLOCK_R x BLOCK_C tile and scales
and masks the scores s = scale * g as it reads them.

  _lse_chunk_kernel       per tile: each row's and each column's (max, sum of e^{s - max}),
                          merged on the host (rows: final; columns: folded into the running
                          state the next chunk continues)
  _softmax_chunk_kernel   g <- ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j}, in place
  _siglip_chunk_kernel    row sums of softplus(s + bias), and / or g <- sigmoid(s + bias) in
                          place and its row sums

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
def _scores(S, s_s, r, m, s_hi, s_lo, diag0, EXCL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """scale * the GEMM's tile, as torch's mul rounds it; -inf outside the chunk and, with EXCL, on
    the diagonal (row i of the chunk against column diag0 + i). Also (pointers, in-chunk mask, rows)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_r[:, None] < r) & (offs_c[None, :] < m)
    ptr = S + offs_r[:, None].to(tl.int64) * s_s + offs_c[None, :]
    s = tl.load(ptr, mask=mask, other=0.0) * _scal(s_hi, s_lo, S.dtype.element_ty)
    keep = mask
    if EXCL:
        keep = keep & (offs_c[None, :] != offs_r[:, None] + diag0)
    return tl.where(keep, s, -float("inf")), ptr, mask, offs_r, offs_c


@triton.jit
def _lse_chunk_kernel(S, RMAX, RSUM, CMAX, CSUM, r, m, s_s, s_rp, s_cp, s_hi, s_lo, diag0, EXCL: tl.constexpr,
                      COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, _, _, offs_r, offs_c = _scores(S, s_s, r, m, s_hi, s_lo, diag0, EXCL, BLOCK_R, BLOCK_C)
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
def _softmax_chunk_kernel(S, RA, RL, CA, CL, r, m, s_s, s_hi, s_lo, diag0, EXCL: tl.constexpr,
                          HAS_R: tl.constexpr, HAS_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, ptr, mask, offs_r, offs_c = _scores(S, s_s, r, m, s_hi, s_lo, diag0, EXCL, BLOCK_R, BLOCK_C)
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
def _siglip_chunk_kernel(S, SP, SG, r, m, s_s, s_p, s_hi, s_lo, b_hi, b_lo, SOFTPLUS: tl.constexpr,
                         SIGMOID: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s, ptr, mask, offs_r, _ = _scores(S, s_s, r, m, s_hi, s_lo, 0, False, BLOCK_R, BLOCK_C)
    z = s + _scal(b_hi, b_lo, S.dtype.element_ty)
    e = tl.exp(-tl.abs(z))   # in (0, 1]: never overflows
    row = tl.program_id(1) * s_p + offs_r
    if SOFTPLUS:             # softplus(z) = max(z, 0) + log(1 + e^{-|z|})
        v = tl.maximum(z, 0.0) + tl.log(1.0 + e)
        tl.store(SP + row, tl.sum(tl.where(mask, v, 0.0), 1), mask=offs_r < r)
    if SIGMOID:
        q = 1.0 / (1.0 + e)
        p = tl.where(z >= 0, q, e * q)
        tl.store(ptr, p, mask=mask)
        tl.store(SG + row, tl.sum(tl.where(mask, p, 0.0), 1), mask=offs_r < r)


def _grid(s):
    return (triton.cdiv(s.shape[0], _block_r(s)), triton.cdiv(s.shape[1], BLOCK_C))


def _launch(kernel, s, *args, **meta):
    kernel[_grid(s)](s, *args, BLOCK_R=_block_r(s), BLOCK_C=BLOCK_C, num_warps=WARPS, **meta)


def lse_partials(g, scale, diag0, want_col):
    """For the chunk of scores scale * g (g: the raw GEMM output; diag0: the column of its first
    row's excluded diagonal, or None): ((row max, row sum) each (column tiles, rows), and with
    want_col (column max, column sum) each (row tiles, m), else None), sums relative to the
    finite-safe max."""
    grid = _grid(g)
    rmax, rsum = (g.new_empty(grid[1], g.shape[0]) for _ in range(2))
    cmax, csum = (g.new_empty(grid[0] if want_col else 0, g.shape[1]) for _ in range(2))
    _launch(_lse_chunk_kernel, g, rmax, rsum, cmax, csum, g.shape[0], g.shape[1], g.stride(0), rmax.stride(0),
            max(cmax.stride(0), 1), *split(scale), 0 if diag0 is None else diag0, EXCL=diag0 is not None,
            COLS=bool(want_col))
    return (rmax, rsum), ((cmax, csum) if want_col else None)


def softmax_weights_(g, scale, diag0, ra, rl, ca, cl):
    """g <- w, w_ij = ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j} for s = scale * g (diagonal
    excluded from diag0 as in lse_partials; a term absent when its pair is None)."""
    has_r, has_c = ra is not None, ca is not None
    dummy = g.new_empty(0)
    _launch(_softmax_chunk_kernel, g, ra.contiguous() if has_r else dummy, rl.contiguous() if has_r else dummy,
            ca.contiguous() if has_c else dummy, cl.contiguous() if has_c else dummy, g.shape[0], g.shape[1],
            g.stride(0), *split(scale), 0 if diag0 is None else diag0, EXCL=diag0 is not None, HAS_R=has_r,
            HAS_C=has_c)
    return g


def siglip_rows_(g, scale, bias, softplus, sigmoid):
    """(row sums of softplus(z) or None, row sums of sigmoid(z) or None), z = scale * g + bias;
    with sigmoid, sigmoid(z) is written over g."""
    part = g.new_empty(2, _grid(g)[1], g.shape[0])
    _launch(_siglip_chunk_kernel, g, part[0], part[1], g.shape[0], g.shape[1], g.stride(0), part.stride(1),
            *split(scale), *split(bias), SOFTPLUS=bool(softplus), SIGMOID=bool(sigmoid))
    sums = part.sum(1)
    return (sums[0] if softplus else None), (sums[1] if sigmoid else None)
