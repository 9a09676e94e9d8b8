"""The contrastive sweeps on CUDA tensors: the fused Triton kernels, or torch's library GEMMs over
row chunks ("library").

The fused gradient sweeps keep their output accumulators in registers. For float32 / float64
operands those hold fewer features than 16-bit ones (TF32 operands take twice the registers,
3xTF32 four times, FMA dots hold their operand rows), so at d = 512 a sweep recomputes every
score tile 2 (TF32), 4 (3xTF32) or 8 (IEEE FMA) times, once per feature span. The library
strategy scores a chunk of rows with one GEMM into a bounded scratch (CHUNK_BYTES), applies the
epilogue with elementwise ops, and accumulates with a second GEMM: each side's gradient costs
two GEMMs at cuBLAS's efficiency whatever d is, plus a few passes over the scratch; the memory
stays O(chunk x m), not n x m.

HOTPATH_CONTRASTIVE = auto | fused | library, read per call. auto picks "library" where the
fused sweep's dots are FMAs (float64; float32 at full precision without Hopper's 3xTF32, or
under HOTPATH_FP32_DOT=ieee) and it would recompute the scores (more than one feature span), and
where Triton is missing; else the fused kernels. By estimate (H200: one fused TF32 / 3xTF32 score
pass against one cuBLAS GEMM plus the scratch passes) the tensor-core cases are even or favour the
fused sweeps; `bench contrastive --device cuda` times both strategies side by side in every
float32 row to move this line. The forward sweeps follow the same choice, so that the forward and
the backward score each chunk with the same GEMM.

The library sweeps are plain torch and run on any device (tests run them on CPU tensors).
16-bit operands are widened to float32 there: cuBLAS would round their scores to 16 bits.
"""
import os

import torch

from .. import OPS, triton_available, widen

ENV = "HOTPATH_CONTRASTIVE"
MODES = ("auto", "fused", "library")
# score scratch per chunk of rows (an epilogue holds about two of these); a few percent of the
# n x m logits a materializing loss holds at B = 32,768 (4 GiB in float32)
CHUNK_BYTES = 1 << 26


def strategy(x, y):
    """"fused" or "library" for a sweep of x's rows against y's (see the module docstring)."""
    mode = os.environ.get(ENV, "auto") or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    if not triton_available():
        return "library"
    from ..triton import contrastive as tc
    if not tc.fma(x.dtype) or x.shape[1] == 0:
        return "fused"
    return "library" if tc._acc_width(x.shape[1], x.dtype, x.device)[2] > 1 else "fused"


def _pick(name, x, y, *args):
    """The op's kernel for this call: a library sweep here, else the Triton launcher (the
    reference where Triton is absent and "fused" was asked for)."""
    if strategy(x, y) == "library":
        return globals()[f"{name}_library"](x, y, *args)
    if not triton_available():
        return OPS[f"contrastive_{name}"].default(x, y, *args)
    from ..triton import contrastive as tc
    return getattr(tc, name)(x, y, *args)


def lse_sweep(x, y, scale, want_col, exclude_diag):
    return _pick("lse_sweep", x, y, scale, want_col, exclude_diag)


def softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag):
    return _pick("softmax_acc", x, y, scale, ra, rl, ca, cl, exclude_diag)


def siglip_rows(x, y, scale, bias):
    return _pick("siglip_rows", x, y, scale, bias)


def siglip_acc(x, y, scale, bias):
    return _pick("siglip_acc", x, y, scale, bias)


# -- the library sweeps ------------------------------------------------------------------------------

def _chunks(n, m, itemsize):
    rows = max(1, CHUNK_BYTES // (itemsize * max(m, 1)))
    return ((r0, min(n, r0 + rows)) for r0 in range(0, n, rows))


def _scores(x, y, r0, r1, scale, exclude_diag):
    """scale * (x[r0:r1] @ y.T), the diagonal at -inf when excluded. The product is scaled after
    the GEMM, as in the references: only that order rounds s_ij alike on both sides."""
    s = torch.mm(x[r0:r1], y.T).mul_(scale)
    if exclude_diag and r0 < y.shape[0]:
        i = torch.arange(r0, min(r1, y.shape[0]), device=s.device)
        s[i - r0, i] = -float("inf")
    return s


def _finite_or_zero(v):
    return torch.where(torch.isfinite(v), v, torch.zeros((), dtype=v.dtype, device=v.device))


def _dead_to_inf(lse):
    """lse with -inf (a row whose every score is masked) as +inf: exp(s - lse) is then 0, also
    for the masked s = -inf, where the reference's softmax weight is 0."""
    return torch.where(lse == -float("inf"), float("inf"), lse)


def lse_sweep_library(x, y, scale, want_col, exclude_diag):
    x, y = widen(x.contiguous(), y.contiguous())
    n, m = x.shape[0], y.shape[0]
    lse = x.new_full((n,), -float("inf"))
    col_sum = x.new_zeros(m if want_col else 0)
    col_shift = x.new_zeros(m if want_col else 0)   # col_sum is relative to exp(col_shift)
    col_max = x.new_full((m if want_col else 0,), -float("inf"))
    if n == 0 or m == 0:
        return lse, (col_max if want_col else x.new_zeros(0))
    for r0, r1 in _chunks(n, m, x.element_size()):
        s = _scores(x, y, r0, r1, scale, exclude_diag)
        torch.logsumexp(s, 1, out=lse[r0:r1])
        if want_col:
            # online column log-sum-exp: a running max (never decreasing) and the sum relative to it;
            # +inf and NaN shift by 0, so they reach the sum as the reference's logsumexp has them
            col_max = torch.maximum(col_max, s.amax(0))
            shift = _finite_or_zero(col_max)
            # (an empty sum stays 0: its old shift may be 0 and the new one far below)
            col_sum = torch.where(col_sum == 0, col_sum, col_sum * torch.exp(col_shift - shift))
            col_sum.add_(s.sub_(shift).exp_().sum(0))
            col_shift = shift
    return lse, (col_sum.log_().add_(col_shift) if want_col else x.new_zeros(0))


def softmax_acc_library(x, y, scale, ra, rl, ca, cl, exclude_diag):
    x, y = widen(x.contiguous(), y.contiguous())
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    acc = x.new_zeros(n, d)
    if n == 0 or m == 0 or d == 0 or (ra is None and ca is None):
        return acc
    rl = _dead_to_inf(rl) if ra is not None else None
    cl = _dead_to_inf(cl)[None, :] if ca is not None else None
    for r0, r1 in _chunks(n, m, x.element_size()):
        s = _scores(x, y, r0, r1, scale, exclude_diag)
        w = None
        if ra is not None:   # ra_i exp(s_ij - rl_i)
            w = torch.sub(s, rl[r0:r1, None]).exp_().mul_(ra[r0:r1, None])
        if ca is not None:   # + ca_j exp(s_ij - cl_j), in s's own storage
            c = s.sub_(cl).exp_().mul_(ca[None, :])
            w = c if w is None else w.add_(c)
        torch.mm(w, y, out=acc[r0:r1])
    return acc


def siglip_rows_library(x, y, scale, bias):
    return _siglip_library(x, y, scale, bias, False)[1]


def siglip_acc_library(x, y, scale, bias):
    return _siglip_library(x, y, scale, bias, True)


def _siglip_library(x, y, scale, bias, grad):
    """(acc_i = sum_j sigmoid(z_ij) y_j if grad, rows_i = sum_j softplus(z_ij) or, with grad,
    sum_j sigmoid(z_ij)), z = scale <x_i, y_j> + bias."""
    x, y = widen(x.contiguous(), y.contiguous())
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    rows = x.new_zeros(n)
    acc = x.new_zeros(n, d if grad else 0)
    if n == 0 or m == 0:
        return acc, rows
    for r0, r1 in _chunks(n, m, x.element_size()):
        z = _scores(x, y, r0, r1, scale, False).add_(bias)
        if not grad:
            torch.sum(torch.nn.functional.softplus(z), 1, out=rows[r0:r1])
            continue
        p = z.sigmoid_()
        torch.sum(p, 1, out=rows[r0:r1])
        torch.mm(p, y, out=acc[r0:r1])
    return acc, rows
