"""Ops of the contrastive family (hotpath::contrastive_*).

Each op streams (row block) x (column tile) score tiles s_ij = scale * <x_i, y_j> through an
epilogue; none stores the n x m matrix. Kernels: C++ (csrc/cpu/contrastive.cpp,
topk_screened.cpp), Triton (backends/triton/contrastive.py); on CUDA the log-sum-exp and SigLIP
sweeps choose between Triton and cuBLAS row chunks (backends/cuda/contrastive.py). The default
kernels are the materializing references below and in reference/contrastive.py.

Operands may be float16 / bfloat16 (backends.operand_dtype: GPU kernels read them as tensor-core
tiles); statistics, accumulators and top-k values are float32 then (float64 for float64).
The C++ kernels take float32 and float64 only.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import contrastive as ref


def _mask_diag(s, exclude_diag):
    if exclude_diag:
        n = min(s.shape)
        idx = torch.arange(n, device=s.device)
        s = s.clone()
        s[idx, idx] = -float("inf")
    return s


def _lse(s, dim):
    if s.shape[dim] == 0:
        shape = list(s.shape)
        shape.pop(dim)
        return s.new_full(shape, -float("inf"))
    return torch.logsumexp(s, dim=dim)


# -- log-sum-exp over rows (and columns) ------------------------------------------------------------

def _lse_sweep_fake(x, y, scale, want_col, exclude_diag):
    return backends.new_stat(x, x.shape[0]), backends.new_stat(x, y.shape[0] if want_col else 0)


@backends.op("contrastive_lse_sweep", fake=_lse_sweep_fake, triton="contrastive.lse_sweep", cuda="contrastive.lse_sweep")
def lse_sweep(x: Tensor, y: Tensor, scale: float, want_col: bool, exclude_diag: bool) -> Tuple[Tensor, Tensor]:
    """lse_row_i = LSE_j scale <x_i, y_j> (j != i if exclude_diag); lse_col_j likewise over i
    when want_col (else an empty tensor)."""
    # scale * (x @ y.T), not (scale * x) @ y.T: softmax_acc's column side scores y @ x.T, and only
    # scaling the product rounds s_ij alike on both sides (at |s| ~ 1e31 the two orders differ by
    # 1e24, and exp(s - lse) overflows)
    x, y = backends.widen(x, y)
    s = _mask_diag(scale * (x @ y.T), exclude_diag)
    return _lse(s, 1), (_lse(s, 0) if want_col else x.new_zeros(0))


@backends.op("contrastive_softmax_acc", triton="contrastive.softmax_acc", cuda="contrastive.softmax_acc",
             fake=lambda x, y, scale, ra, rl, ca, cl, exclude_diag: backends.new_stat(x, x.shape[0], y.shape[1]))
def softmax_acc(x: Tensor, y: Tensor, scale: float, ra: Optional[Tensor], rl: Optional[Tensor],
                ca: Optional[Tensor], cl: Optional[Tensor], exclude_diag: bool) -> Tensor:
    """acc_i = sum_j w_ij y_j, w_ij = ra_i exp(s_ij - rl_i) + ca_j exp(s_ij - cl_j) (terms optional):
    the softmax backward of row (ra, rl) and column (ca, cl) log-sum-exps, for the x side."""
    x, y = backends.widen(x, y)
    s = _mask_diag(scale * (x @ y.T), exclude_diag)
    w = torch.zeros_like(s)

    def soft(l):  # exp(s - lse), 0 where lse = -inf (every entry masked)
        dead = l == -float("inf")
        return torch.where(dead, 0.0, torch.exp(s - torch.where(dead, 0.0, l)))

    if ra is not None:
        w = w + ra[:, None] * soft(rl[:, None])
    if ca is not None:
        w = w + ca[None, :] * soft(cl[None, :])
    return w @ y


def _softmax_acc_both(x, y, scale, ra, rl, ca, cl, exclude_diag):
    """Both sides as two one-sided sweeps (the kernels that score each side separately)."""
    return (softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag),
            softmax_acc(y, x, scale, ca, cl, ra, rl, exclude_diag))


@backends.op("contrastive_softmax_acc_xy", cuda="contrastive.softmax_acc_xy", composite=_softmax_acc_both,
             fake=lambda x, y, scale, ra, rl, ca, cl, exclude_diag: (
                 backends.new_stat(x, x.shape[0], y.shape[1]), backends.new_stat(x, y.shape[0], x.shape[1])))
def softmax_acc_xy(x: Tensor, y: Tensor, scale: float, ra: Optional[Tensor], rl: Optional[Tensor],
                   ca: Optional[Tensor], cl: Optional[Tensor], exclude_diag: bool) -> Tuple[Tensor, Tensor]:
    """(acc_x, acc_y): softmax_acc for the x side, acc_x_i = sum_j w_ij y_j, and with the same
    weights for the y side, acc_y_j = sum_i w_ij x_i: the gradients of both operands. The cuBLAS
    row-chunk sweeps (backends/cuda/contrastive.py) score each chunk once for both sides."""
    one_side = backends.OPS["contrastive_softmax_acc"].default
    return one_side(x, y, scale, ra, rl, ca, cl, exclude_diag), one_side(y, x, scale, ca, cl, ra, rl, exclude_diag)


# -- SigLIP ------------------------------------------------------------------------------------------

@backends.op("contrastive_siglip_rows", triton="contrastive.siglip_rows", cuda="contrastive.siglip_rows",
             fake=lambda x, y, scale, bias: backends.new_stat(x, x.shape[0]))
def siglip_rows(x: Tensor, y: Tensor, scale: float, bias: float) -> Tensor:
    """out_i = sum_j softplus(scale <x_i, y_j> + bias)."""
    x, y = backends.widen(x, y)
    return torch.nn.functional.softplus(scale * x @ y.T + bias).sum(1)


@backends.op("contrastive_siglip_acc", triton="contrastive.siglip_acc", cuda="contrastive.siglip_acc",
             fake=lambda x, y, scale, bias: (backends.new_stat(x, x.shape[0], y.shape[1]), backends.new_stat(x, x.shape[0])))
def siglip_acc(x: Tensor, y: Tensor, scale: float, bias: float) -> Tuple[Tensor, Tensor]:
    """(acc_i = sum_j sigmoid(z_ij) y_j, rsum_i = sum_j sigmoid(z_ij)), z = scale <x_i, y_j> + bias."""
    x, y = backends.widen(x, y)
    p = torch.sigmoid(scale * x @ y.T + bias)
    return p @ y, p.sum(1)


def _siglip_grads_split(x, y, scale, bias, want_y):
    """The loss rows and both sides' gradients as one-sided sweeps (the C++ CPU kernels)."""
    ax, rsum = siglip_acc(x, y, scale, bias)
    ay = siglip_acc(y, x, scale, bias)[0] if want_y else ax.new_zeros(0, x.shape[1])
    return siglip_rows(x, y, scale, bias), ax, ay, rsum


def _siglip_grads_fake(x, y, scale, bias, want_y):
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    return (backends.new_stat(x, n), backends.new_stat(x, n, d), backends.new_stat(x, m if want_y else 0, d),
            backends.new_stat(x, n))


@backends.op("contrastive_siglip_grads", triton="contrastive.siglip_grads", cuda="contrastive.siglip_grads",
             composite=_siglip_grads_split, fake=_siglip_grads_fake)
def siglip_grads(x: Tensor, y: Tensor, scale: float, bias: float, want_y: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss_i = sum_j softplus(z_ij), acc_x_i = sum_j sigmoid(z_ij) y_j, acc_y_j = sum_i
    sigmoid(z_ij) x_i (empty unless want_y), rsum_i = sum_j sigmoid(z_ij)), z = scale <x_i, y_j> +
    bias: SigLIP's loss rows with everything its backward needs, for a forward that forms the
    gradient while it has the scores (the fused kernels and the cuBLAS row chunks: the loss
    from the x side's gradient sweep; the C++ CPU kernels: one sweep each)."""
    x, y = backends.widen(x, y)
    z = scale * x @ y.T + bias
    p = torch.sigmoid(z)
    ay = p.T @ x if want_y else x.new_zeros(0, x.shape[1])
    return torch.nn.functional.softplus(z).sum(1), p @ y, ay, p.sum(1)


# -- batch-hard mining -------------------------------------------------------------------------------

@backends.op("contrastive_hard_mine", triton="contrastive.hard_mine",
             fake=lambda x, labels: (labels.new_empty(x.shape[0]), labels.new_empty(x.shape[0])))
def hard_mine(x: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    """Per row: index of the farthest same-label other row and of the nearest different-label row
    by Euclidean distance (-1 where none)."""
    return ref.hard_mine(*backends.widen(x), labels)


# -- top-k -------------------------------------------------------------------------------------------

def _topk_fake(queries, keys, k):
    n = queries.shape[0]
    return backends.new_stat(queries, n, k), queries.new_empty(n, k, dtype=torch.long)


@backends.op("contrastive_topk", fake=_topk_fake, triton="contrastive.topk")
def topk(queries: Tensor, keys: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Exact top-k keys by inner product per query: values (n, k) descending, indices (n, k)."""
    return ref.topk_chunked(*backends.widen(queries, keys), k)


def _screened_fake(queries, keys, k):
    n = queries.shape[0]
    return (queries.new_empty(n, k), queries.new_empty(n, k, dtype=torch.long),
            queries.new_empty(n, dtype=torch.bool))


@backends.op("contrastive_topk_screened", fake=_screened_fake)
def topk_screened(queries: Tensor, keys: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The exact top-k of float32 CPU inputs from a bfloat16 GEMM screen plus float32 rescoring:
    (values, indices, flagged (n,) bool: queries the screen could not settle, to redo exactly).
    Only the C++ kernel exists; elsewhere every query is flagged, so the caller redoes them all."""
    n = queries.shape[0]
    return (queries.new_zeros(n, k), queries.new_zeros(n, k, dtype=torch.long),
            queries.new_ones(n, dtype=torch.bool))
