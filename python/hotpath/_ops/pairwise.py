"""Custom ops of the streaming pairwise engine: pairwise_lse forward and backward."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend
from .._ext import has_op
from .._triton import kernels
from ..reference import pairwise as ref

METRICS = ("dot", "sqeuclidean")


def _empty_like_k(x, k=0):
    return x.new_zeros(x.shape[0], x.shape[1], k)


@torch.library.custom_op("hotpath::pairwise_lse_fwd", mutates_args=())
def pairwise_lse_fwd(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                     scale: float, metric: str, backend: str) -> Tuple[Tensor, Tensor]:
    """x (B, n, d), y (B, m, d), col_bias (B, m), values (B, m, k) -> lse (B, n), out (B, n, k|0)."""
    narrow = x.shape[-1] <= 16 and (values is None or values.shape[-1] <= 16)
    cuda_kernel = x.is_cuda and narrow and has_op("hotpath_cuda", "pairwise_lse_fwd")
    which = _backend.resolve(backend, x.device, has_cuda_kernel=cuda_kernel)
    if which == "cuda":
        with torch.cuda.device(x.device):
            lse, out = torch.ops.hotpath_cuda.pairwise_lse_fwd(x, y, col_bias, values, scale, metric == "sqeuclidean",
                                                               torch.cuda.current_stream().cuda_stream)
    elif which == "cpu":
        lse, out = torch.ops.hotpath_cpu.pairwise_lse_fwd(x, y, col_bias, values, scale, metric == "sqeuclidean")
    elif which == "triton":
        lse, out = kernels("pairwise").pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
    else:
        lse, out = ref.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
    return lse, (out if out is not None else _empty_like_k(x))


@pairwise_lse_fwd.register_fake
def _(x, y, col_bias, values, scale, metric, backend):
    k = 0 if values is None else values.shape[-1]
    return x.new_empty(x.shape[0], x.shape[1]), x.new_empty(x.shape[0], x.shape[1], k)


@torch.library.custom_op("hotpath::pairwise_lse_bwd", mutates_args=())
def pairwise_lse_bwd(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                     lse: Tensor, out: Tensor, grad_lse: Tensor, grad_out: Optional[Tensor],
                     scale: float, metric: str, need_rows: bool, need_cols: bool,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (gx, gy, gcol_bias (B, m) or empty, gvalues (B, m, k) or empty), streamed.
    need_rows: the row pass (gx); need_cols: the column pass (gy, gcol_bias, gvalues). The
    kernels skip a pass nobody needs and leave its gradients 0."""
    which = _backend.resolve(backend, x.device)
    if values is None:
        out, grad_out = None, None
    elif grad_out is None:
        grad_out = torch.zeros_like(out)
    if which == "cpu":
        gx, gy, gc, gv = torch.ops.hotpath_cpu.pairwise_lse_bwd(
            x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric == "sqeuclidean", need_rows, need_cols)
    elif which == "triton":
        gx, gy, gc, gv = kernels("pairwise").pairwise_lse_bwd(
            x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric, need_rows, need_cols)
    else:
        gx, gy, gc, gv = ref.pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric)
    if gc is None or col_bias is None:
        gc = x.new_zeros(0)
    if gv is None or values is None:
        gv = x.new_zeros(0)
    return gx, gy, gc, gv


@pairwise_lse_bwd.register_fake
def _(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric, need_rows, need_cols, backend):
    gc = x.new_empty(col_bias.shape) if col_bias is not None else x.new_empty(0)
    gv = x.new_empty(values.shape) if values is not None else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(y), gc, gv
