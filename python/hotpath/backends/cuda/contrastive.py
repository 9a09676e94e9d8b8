"""The contrastive sweeps on CUDA tensors: the fused Triton kernels, or torch's library GEMMs over
row chunks ("library").

The fused gradient sweeps keep their output accumulators in registers. For float32 / float64
operands those hold fewer features than 16-bit ones (TF32 operands take twice the registers,
3xTF32 four times, FMA dots hold their operand rows), so at d = 512 a sweep recomputes every
score tile 2 (TF32), 4 (3xTF32) or 8 (IEEE FMA) times, once per feature span. The library
strategy scores a chunk of rows with one GEMM into a bounded scratch (CHUNK_BYTES), applies the
epilogue in one Triton pass over it (triton/contrastive_chunks.py), and accumulates with GEMMs
of the weights: the x side's gradient rows with w @ y, the y side's with w.T @ x added over the
chunks (softmax_acc_xy, siglip_grads). So a CLIP loss costs one GEMM forward and three backward
(scores, then one per side) at cuBLAS's efficiency whatever d is, and a SigLIP loss three in all
(its forward forms the gradient: the loss's gradient in the scores needs no statistic of the
whole matrix), plus the scores' memory traffic; the memory stays O(chunk x m).

HOTPATH_CONTRASTIVE = auto | fused | library, read per call. auto picks "library" for float32 /
float64 operands where the fused sweep would recompute the scores (more than one feature span:
d = 512 under TF32, 3xTF32 or IEEE FMA dots), and where Triton is missing; else the fused
kernels. Why, by count (B = 32,768, d = 512, one "unit" = one B x B x d product): the fused
backward forms each side's scores once per span and accumulates once, (spans + 1) units a side,
6 under TF32 and 10 under 3xTF32 (each a 3-pass product); the library takes 3 units for both
sides at cuBLAS's efficiency plus five passes over the scores in memory (written, read and
rewritten by the epilogue, read by two GEMMs: ~20 GB, ~5 ms at 4.8 TB/s). 16-bit operands stay
fused under auto: one span at d <= 512. The library takes them too (HOTPATH_CONTRASTIVE=library):
torch's out_dtype GEMMs score them on the 16-bit tensor cores into a float32 scratch (exact
products, float32 sums, as the fused dots), and the weights are rounded to 16 bits for the
accumulating GEMMs, as the fused kernels round them for their dots. By count that is 4 GEMMs for
CLIP against open_clip's 6 in bf16, so it may well beat the fused sweeps there too. `bench
contrastive --device cuda` times both strategies side by side in every row to move this line.
The forward sweeps follow the same choice, so that the forward and the backward score each chunk
with the same GEMM.

The library sweeps run on any device: off CUDA (and without Triton) their epilogues are torch's
elementwise passes, about six to eight reads and writes of the chunk (tests run both kinds on
CPU tensors, the Triton one through the interpreter). 16-bit operands are widened to float32 for
each GEMM there (no out_dtype GEMM on the CPU): the same exact products.
"""
import os

import torch

from .. import OPS, triton_available

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
    if x.dtype not in (torch.float32, torch.float64) or x.shape[1] == 0:
        return "fused"   # 16-bit: the library would score in float32, off the 16-bit tensor cores
    from ..triton import contrastive as tc
    return "library" if tc._acc_width(x.shape[1], x.dtype, x.device)[2] > 1 else "fused"


def _pick(name, x, y, *args):
    """The op's kernel for this call: a library sweep here, else the fused one."""
    if strategy(x, y) == "library":
        return globals()[f"{name}_library"](x, y, *args)
    return _fused(name, x, y, *args)


def _fused(name, x, y, *args):
    """The Triton launcher (the reference where Triton is absent and "fused" was asked for)."""
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


# Both sides' gradients: the library scores each chunk once for the two (three GEMMs, not four);
# the fused kernels keep their accumulators in registers, one side per sweep. SigLIP's forward
# forms them while it has the scores (siglip_grads): fwd + bwd is one sweep a side (fused) or three
# GEMMs (library).

def softmax_acc_xy(x, y, scale, ra, rl, ca, cl, exclude_diag):
    if strategy(x, y) == "library":
        return softmax_acc_xy_library(x, y, scale, ra, rl, ca, cl, exclude_diag)
    return (_fused("softmax_acc", x, y, scale, ra, rl, ca, cl, exclude_diag),
            _fused("softmax_acc", y, x, scale, ca, cl, ra, rl, exclude_diag))


def siglip_grads(x, y, scale, bias, want_y):
    if strategy(x, y) == "library":
        return siglip_grads_library(x, y, scale, bias, want_y)
    return _fused("siglip_grads", x, y, scale, bias, want_y)


# -- the library sweeps ------------------------------------------------------------------------------

def _chunks(n, m, itemsize):
    rows = max(1, CHUNK_BYTES // (itemsize * max(m, 1)))
    return ((r0, min(n, r0 + rows)) for r0 in range(0, n, rows))


_SIXTEEN = (torch.float16, torch.bfloat16)
_OUT_DTYPE_MM = [True]   # torch's mm / addmm with out_dtype (16-bit operands, float32 output) work here


def _operands(x, y):
    """x, y contiguous, and the dtype of the scores and accumulators: float32 for 16-bit operands
    (which stay 16-bit: _mm scores them on the 16-bit tensor cores with float32 sums)."""
    return x.contiguous(), y.contiguous(), torch.float32 if x.dtype in _SIXTEEN else x.dtype


def _mm(a, b, out=None, accumulate=False):
    """a @ b (out = / += a @ b with out) with float32 results for 16-bit a and b: exact products,
    float32 sums, as in a tensor-core dot. On CUDA, torch's out_dtype GEMMs do that at 16-bit
    speed; elsewhere (and where this torch lacks them) the operands are widened to float32."""
    if a.dtype in _SIXTEEN and a.is_cuda and _OUT_DTYPE_MM[0]:
        try:
            if accumulate:
                return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        except torch.cuda.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError, NotImplementedError):   # a torch without them
            _OUT_DTYPE_MM[0] = False
    if a.dtype in _SIXTEEN:
        a, b = a.float(), b.float()
    if accumulate:
        return out.addmm_(a, b)
    return torch.mm(a, b, out=out)


def _gemm(x, y, r0, r1):
    return _mm(x[r0:r1], y.T)


def _weights_for(w, v):
    """The score-shaped weights as the accumulating GEMM's operand: v's dtype for 16-bit v (the
    fused kernels round them so for their 16-bit dots too)."""
    return w.to(v.dtype) if v.dtype in _SIXTEEN else w


def _scores(x, y, r0, r1, scale, exclude_diag):
    """scale * (x[r0:r1] @ y.T), the diagonal at -inf when excluded. The product is scaled after
    the GEMM, as in the references: only that order rounds s_ij alike on both sides."""
    s = _gemm(x, y, r0, r1).mul_(scale)
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


def _chunk_kernels(x):
    """The Triton chunk epilogues (one read of the scratch) for CUDA operands where Triton is
    installed, else None: torch's elementwise passes."""
    if x.device.type != "cuda" or not triton_available():
        return None
    from ..triton import contrastive_chunks
    return contrastive_chunks


def _fold(pmax, psum):
    """(max, sum) of partial log-sum-exp pairs along axis 0, each sum relative to its max where
    that is finite and to 0 where not: +inf stays +inf, NaN NaN, an all-empty pair (-inf, 0)."""
    mx = pmax.amax(0)
    w = torch.where(psum == 0, psum, psum * torch.exp(_finite_or_zero(pmax) - _finite_or_zero(mx)))
    return mx, w.sum(0)


def _lse_of(mx, total):
    return torch.where(total == 0, -float("inf"), _finite_or_zero(mx) + torch.log(total))


def _chunk_lse(x, y, r0, r1, scale, exclude_diag, lse, col, kernels):
    """lse <- the log-sum-exps of the chunk's rows; col (the columns' running (max, sum) pair, or
    None) <- folded with the chunk's rows. Returns col."""
    if kernels is not None:
        kernels.chunk_lse_(_gemm(x, y, r0, r1), scale, r0 if exclude_diag else None, lse, col)
        return col
    s = _scores(x, y, r0, r1, scale, exclude_diag)
    torch.logsumexp(s, 1, out=lse)
    if col is None:
        return None
    cmax = s.amax(0)   # +inf and NaN shift by 0, so they reach the sum as logsumexp has them
    part = (cmax, s.sub_(_finite_or_zero(cmax)).exp_().sum(0))
    return _fold(torch.stack([col[0], part[0]]), torch.stack([col[1], part[1]]))


def lse_sweep_library(x, y, scale, want_col, exclude_diag):
    x, y, cd = _operands(x, y)
    n, m = x.shape[0], y.shape[0]
    lse = x.new_full((n,), -float("inf"), dtype=cd)
    # every column's running (max, sum) over the chunks so far, as _fold keeps it
    col = (x.new_full((m,), -float("inf"), dtype=cd), x.new_zeros(m, dtype=cd)) if want_col else None
    kernels = _chunk_kernels(x)
    for r0, r1 in _chunks(n, m, cd.itemsize) if m > 0 else ():
        col = _chunk_lse(x, y, r0, r1, scale, exclude_diag, lse[r0:r1], col, kernels)
    return lse, (_lse_of(*col) if want_col else x.new_zeros(0, dtype=cd))


def _softmax_weights(x, y, r0, r1, scale, exclude_diag, ra, rl, ca, cl, kernels):
    """The chunk's w_ij = ra_i exp(s_ij - rl_i) + ca_j exp(s_ij - cl_j) (terms whose pair is None
    left out; ra, rl: the chunk's rows)."""
    if kernels is not None:
        return kernels.softmax_weights_(_gemm(x, y, r0, r1), scale, r0 if exclude_diag else None, ra, rl, ca, cl)
    s = _scores(x, y, r0, r1, scale, exclude_diag)
    w = None
    if ra is not None:
        w = torch.sub(s, rl[:, None]).exp_().mul_(ra[:, None])
    if ca is not None:   # in s's own storage
        c = s.sub_(cl[None, :]).exp_().mul_(ca[None, :])
        w = c if w is None else w.add_(c)
    return w


def softmax_acc_library(x, y, scale, ra, rl, ca, cl, exclude_diag):
    return _softmax_library(x, y, scale, ra, rl, ca, cl, exclude_diag, False)[0]


def softmax_acc_xy_library(x, y, scale, ra, rl, ca, cl, exclude_diag):
    return _softmax_library(x, y, scale, ra, rl, ca, cl, exclude_diag, True)


def _softmax_library(x, y, scale, ra, rl, ca, cl, exclude_diag, both):
    """(acc_x, acc_y): acc_x_i = sum_j w_ij y_j and, if both, acc_y_j = sum_i w_ij x_i (else an
    empty tensor), w_ij = ra_i exp(s_ij - rl_i) + ca_j exp(s_ij - cl_j)."""
    x, y, cd = _operands(x, y)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    acc = x.new_zeros(n, d, dtype=cd)
    acc_y = x.new_zeros(m if both else 0, d, dtype=cd)
    if n == 0 or m == 0 or d == 0 or (ra is None and ca is None):
        return acc, acc_y
    rl = _dead_to_inf(rl) if ra is not None else None
    cl = _dead_to_inf(cl) if ca is not None else None
    kernels = _chunk_kernels(x)
    for r0, r1 in _chunks(n, m, cd.itemsize):
        w = _weights_for(_softmax_weights(x, y, r0, r1, scale, exclude_diag, None if ra is None else ra[r0:r1],
                                          None if ra is None else rl[r0:r1], ca, cl, kernels), y)
        _mm(w, y, out=acc[r0:r1])
        if both:
            _mm(w.T, x[r0:r1], out=acc_y, accumulate=True)
    return acc, acc_y


def siglip_rows_library(x, y, scale, bias):
    return _siglip_library(x, y, scale, bias, True, False, False)[0]


def siglip_acc_library(x, y, scale, bias):
    _, acc, _, rsum = _siglip_library(x, y, scale, bias, False, True, False)
    return acc, rsum


def siglip_grads_library(x, y, scale, bias, want_y):
    return _siglip_library(x, y, scale, bias, True, True, want_y)


def _siglip_rows(g, scale, bias, softplus, sigmoid, kernels):
    """(row sums of softplus(z) or None, row sums of sigmoid(z) or None), z = scale * g + bias;
    with sigmoid, sigmoid(z) is written over g."""
    if kernels is not None:
        return kernels.siglip_rows_(g, scale, bias, softplus, sigmoid)
    z = g.mul_(scale).add_(bias)
    sp = torch.nn.functional.softplus(z).sum(1) if softplus else None
    return sp, (z.sigmoid_().sum(1) if sigmoid else None)


def _siglip_library(x, y, scale, bias, loss, grad, both):
    """(loss_i = sum_j softplus(z_ij) if loss, acc_x_i = sum_j sigmoid(z_ij) y_j if grad,
    acc_y_j = sum_i sigmoid(z_ij) x_i if both, rsum_i = sum_j sigmoid(z_ij) if grad),
    z = scale <x_i, y_j> + bias; empty tensors for what is not asked."""
    x, y, cd = _operands(x, y)
    n, m, d = x.shape[0], y.shape[0], y.shape[1]
    sp = x.new_zeros(n if loss else 0, dtype=cd)
    rsum = x.new_zeros(n if grad else 0, dtype=cd)
    acc = x.new_zeros(n if grad else 0, d, dtype=cd)
    acc_y = x.new_zeros(m if both else 0, d, dtype=cd)
    if n == 0 or m == 0:
        return sp, acc, acc_y, rsum
    kernels = _chunk_kernels(x)
    for r0, r1 in _chunks(n, m, cd.itemsize):
        p = _gemm(x, y, r0, r1)
        sp_c, rs_c = _siglip_rows(p, scale, bias, loss, grad, kernels)
        if loss:
            sp[r0:r1] = sp_c
        if grad:
            rsum[r0:r1] = rs_c
            p = _weights_for(p, y)
            _mm(p, y, out=acc[r0:r1])
        if both:
            _mm(p.T, x[r0:r1], out=acc_y, accumulate=True)
    return sp, acc, acc_y, rsum
