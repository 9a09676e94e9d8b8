"""Custom ops of the contrastive family (torch.ops.hotpath.contrastive_*).

Each op streams (row block) x (column tile) score tiles s_ij = scale * <x_i, y_j> through an
epilogue; none stores the n x m matrix. CPU tensors run the C++ kernels
(csrc/cpu/contrastive.cpp), CUDA tensors (or TRITON_INTERPRET=1 with backend="triton") the
Triton kernels (kernels/contrastive.py), anything else the reference below.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, _ext
from .._triton import kernels


def _which(backend, device):
    return _backend.resolve(backend, device)


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

@torch.library.custom_op("hotpath::contrastive_lse_sweep", mutates_args=())
def lse_sweep(x: Tensor, y: Tensor, scale: float, want_col: bool, exclude_diag: bool,
              backend: str) -> Tuple[Tensor, Tensor]:
    """lse_row_i = LSE_j scale <x_i, y_j> (j != i if exclude_diag); lse_col_j likewise over i
    when want_col (else an empty tensor)."""
    which = _which(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_lse_sweep(x, y, scale, want_col, exclude_diag)
    if which == "triton":
        k = kernels("contrastive")
        lr = k.lse_rows(x, y, scale, exclude_diag)
        lc = k.lse_rows(y, x, scale, exclude_diag) if want_col else x.new_zeros(0)
        return lr, lc
    s = _mask_diag(scale * x @ y.T, exclude_diag)
    return _lse(s, 1), (_lse(s, 0) if want_col else x.new_zeros(0))


@lse_sweep.register_fake
def _(x, y, scale, want_col, exclude_diag, backend):
    return x.new_empty(x.shape[0]), x.new_empty(y.shape[0] if want_col else 0)


@torch.library.custom_op("hotpath::contrastive_softmax_acc", mutates_args=())
def softmax_acc(x: Tensor, y: Tensor, scale: float, ra: Optional[Tensor], rl: Optional[Tensor],
                ca: Optional[Tensor], cl: Optional[Tensor], exclude_diag: bool, backend: str) -> Tensor:
    """acc_i = sum_j w_ij y_j, w_ij = ra_i exp(s_ij - rl_i) + ca_j exp(s_ij - cl_j) (terms optional):
    the softmax backward of row (ra, rl) and column (ca, cl) log-sum-exps, for the x side."""
    which = _which(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag)
    if which == "triton":
        return kernels("contrastive").softmax_acc(x, y, scale, ra, rl, ca, cl, exclude_diag)
    s = _mask_diag(scale * x @ y.T, exclude_diag)
    w = torch.zeros_like(s)

    def soft(l):  # exp(s - lse), 0 where lse = -inf (every entry masked)
        dead = l == -float("inf")
        return torch.where(dead, 0.0, torch.exp(s - torch.where(dead, 0.0, l)))

    if ra is not None:
        w = w + ra[:, None] * soft(rl[:, None])
    if ca is not None:
        w = w + ca[None, :] * soft(cl[None, :])
    return w @ y


@softmax_acc.register_fake
def _(x, y, scale, ra, rl, ca, cl, exclude_diag, backend):
    return x.new_empty(x.shape[0], y.shape[1])


# -- SigLIP ------------------------------------------------------------------------------------------

@torch.library.custom_op("hotpath::contrastive_siglip_rows", mutates_args=())
def siglip_rows(x: Tensor, y: Tensor, scale: float, bias: float, backend: str) -> Tensor:
    """out_i = sum_j softplus(scale <x_i, y_j> + bias)."""
    which = _which(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_siglip_rows(x, y, scale, bias)
    if which == "triton":
        return kernels("contrastive").siglip_rows(x, y, scale, bias)
    return torch.nn.functional.softplus(scale * x @ y.T + bias).sum(1)


@siglip_rows.register_fake
def _(x, y, scale, bias, backend):
    return x.new_empty(x.shape[0])


@torch.library.custom_op("hotpath::contrastive_siglip_acc", mutates_args=())
def siglip_acc(x: Tensor, y: Tensor, scale: float, bias: float, backend: str) -> Tuple[Tensor, Tensor]:
    """(acc_i = sum_j sigmoid(z_ij) y_j, rsum_i = sum_j sigmoid(z_ij)), z = scale <x_i, y_j> + bias."""
    which = _which(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_siglip_acc(x, y, scale, bias)
    if which == "triton":
        return kernels("contrastive").siglip_acc(x, y, scale, bias)
    p = torch.sigmoid(scale * x @ y.T + bias)
    return p @ y, p.sum(1)


@siglip_acc.register_fake
def _(x, y, scale, bias, backend):
    return x.new_empty(x.shape[0], y.shape[1]), x.new_empty(x.shape[0])


# -- batch-hard mining -------------------------------------------------------------------------------

@torch.library.custom_op("hotpath::contrastive_hard_mine", mutates_args=())
def hard_mine(x: Tensor, labels: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    """Per row: index of the farthest same-label other row and of the nearest different-label row
    by Euclidean distance (-1 where none)."""
    which = _which(backend, x.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_hard_mine(x, labels)
    if which == "triton":
        return kernels("contrastive").hard_mine(x, labels)
    from ..reference.contrastive import hard_mine as ref
    return ref(x, labels)


@hard_mine.register_fake
def _(x, labels, backend):
    return labels.new_empty(x.shape[0]), labels.new_empty(x.shape[0])


# -- top-k -------------------------------------------------------------------------------------------

@torch.library.custom_op("hotpath::contrastive_topk", mutates_args=())
def topk(queries: Tensor, keys: Tensor, k: int, backend: str) -> Tuple[Tensor, Tensor]:
    """Exact top-k keys by inner product per query: values (n, k) descending, indices (n, k)."""
    which = _which(backend, queries.device)
    if which == "cpu":
        return torch.ops.hotpath_cpu.contrastive_topk_dot(queries, keys, k)
    if which == "triton":
        return kernels("contrastive").topk(queries, keys, k)
    from ..reference.contrastive import topk_chunked
    return topk_chunked(queries, keys, k)


@topk.register_fake
def _(queries, keys, k, backend):
    n = queries.shape[0]
    return queries.new_empty(n, k), queries.new_empty(n, k, dtype=torch.long)


@torch.library.custom_op("hotpath::contrastive_topk_screened", mutates_args=())
def topk_screened(queries: Tensor, keys: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The exact top-k of float32 CPU inputs from a bfloat16 GEMM screen plus float32 rescoring:
    (values, indices, flagged (n,) bool: queries the screen could not settle, to redo exactly)."""
    if not _ext.has_op("hotpath_cpu", "contrastive_topk_dot_screened"):
        raise RuntimeError("topk_screened needs the hotpath C++ extension, which is not available")
    return torch.ops.hotpath_cpu.contrastive_topk_dot_screened(queries, keys, k)


@topk_screened.register_fake
def _(queries, keys, k):
    n = queries.shape[0]
    return (queries.new_empty(n, k), queries.new_empty(n, k, dtype=torch.long),
            queries.new_empty(n, dtype=torch.bool))
