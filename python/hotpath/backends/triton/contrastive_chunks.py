"""Triton epilogues of the library contrastive sweeps (backends/cuda/contrastive.py): one read of
a chunk's GEMM output g = x_chunk @ y.T (rows x m, float32 / float64, from cuBLAS) instead of
torch's elementwise passes (scaling, masking and logsumexp read and write the chunk about eight
times; the softmax weights take ten). Each program takes a BLOCK_R x BLOCK_C tile and scales
and masks the scores s = scale * g as it reads them.

  _lse_chunk_kernel       per tile: each row's and each column's (max, sum of e^{s - max})
  _rows_lse_kernel        each row's partials merged into its log-sum-exp
  _cols_fold_kernel       each column's partials folded into its running pair over the chunks
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
MERGE_BLOCK = 256   # rows / columns per program of the partial merges


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


@triton.jit
def _merge(m, t, pm, ps):
    """A running (max, sum) pair merged with a partial one, sums relative to the finite-safe max.
    An exponent above 0 only arises for an empty pair (sum 0, max -inf, its safe value 0) or where
    the new max is +inf (safe value 0), whose sum is +inf whatever the factor: the factors are
    capped at 1 instead of overflowing."""
    m_new = tl.maximum(m, pm)
    safe = _finite_or_zero(m_new)
    t = tl.where(t == 0, t, t * tl.exp(tl.minimum(_finite_or_zero(m) - safe, 0.0)))
    return m_new, t + tl.where(ps == 0, ps, ps * tl.exp(tl.minimum(_finite_or_zero(pm) - safe, 0.0)))


@triton.jit
def _rows_lse_kernel(PMAX, PSUM, OUT, r, n_part, s_p, BLOCK: tl.constexpr):
    """OUT <- the log-sum-exp of each row's n_part partial pairs."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < r
    m = tl.full((BLOCK,), -float("inf"), PMAX.dtype.element_ty)
    t = tl.zeros((BLOCK,), PSUM.dtype.element_ty)
    for k in range(0, n_part):
        pm = tl.load(PMAX + k * s_p + offs, mask=mask, other=-float("inf"))
        ps = tl.load(PSUM + k * s_p + offs, mask=mask, other=0.0)
        m, t = _merge(m, t, pm, ps)
    lse = tl.where(t == 0, -float("inf"), _finite_or_zero(m) + tl.log(tl.where(t == 0, 1.0, t)))
    tl.store(OUT + offs, lse, mask=mask)


@triton.jit
def _cols_fold_kernel(PMAX, PSUM, RMAX, RSUM, m, n_part, s_p, BLOCK: tl.constexpr):
    """(RMAX, RSUM) <- each column's running pair merged with its n_part partial pairs, in place."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < m
    mx = tl.load(RMAX + offs, mask=mask, other=-float("inf"))
    t = tl.load(RSUM + offs, mask=mask, other=0.0)
    for k in range(0, n_part):
        pm = tl.load(PMAX + k * s_p + offs, mask=mask, other=-float("inf"))
        ps = tl.load(PSUM + k * s_p + offs, mask=mask, other=0.0)
        mx, t = _merge(mx, t, pm, ps)
    tl.store(RMAX + offs, mx, mask=mask)
    tl.store(RSUM + offs, t, mask=mask)


def _grid(s):
    return (triton.cdiv(s.shape[0], _block_r(s)), triton.cdiv(s.shape[1], BLOCK_C))


def _launch(kernel, s, *args, **meta):
    kernel[_grid(s)](s, *args, BLOCK_R=_block_r(s), BLOCK_C=BLOCK_C, num_warps=WARPS, **meta)


def chunk_lse_(g, scale, diag0, lse, col):
    """For the chunk of scores scale * g (g: the raw GEMM output; diag0: the column of its first
    row's excluded diagonal, or None): lse <- each row's log-sum-exp, and col = (max, sum), every
    column's running pair over the chunks so far (sums relative to the finite-safe max), folded
    with this chunk's rows in place (col None: rows only). Four launches a chunk, so that a
    forward of tens of chunks is not bound by the host's launches."""
    grid = _grid(g)
    r, m = g.shape
    rmax, rsum = (g.new_empty(grid[1], r) for _ in range(2))
    cmax, csum = (g.new_empty(grid[0] if col is not None else 0, m) for _ in range(2))
    _launch(_lse_chunk_kernel, g, rmax, rsum, cmax, csum, r, m, g.stride(0), rmax.stride(0), max(cmax.stride(0), 1),
            *split(scale), 0 if diag0 is None else diag0, EXCL=diag0 is not None, COLS=col is not None)
    _rows_lse_kernel[(triton.cdiv(r, MERGE_BLOCK),)](rmax, rsum, lse, r, grid[1], rmax.stride(0), BLOCK=MERGE_BLOCK)
    if col is not None:
        _cols_fold_kernel[(triton.cdiv(m, MERGE_BLOCK),)](cmax, csum, col[0], col[1], m, grid[0], cmax.stride(0),
                                                          BLOCK=MERGE_BLOCK)


def softmax_weights_(g, scale, diag0, ra, rl, ca, cl):
    """g <- w, w_ij = ra_i e^{s_ij - rl_i} + ca_j e^{s_ij - cl_j} for s = scale * g (diagonal
    excluded from diag0 as in chunk_lse_; a term absent when its pair is None)."""
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
