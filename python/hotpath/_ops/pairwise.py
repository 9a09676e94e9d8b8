"""Ops of the streaming pairwise engine: pairwise_lse forward and backward.

Kernels: C++ (csrc/cpu/pairwise_lse.cpp), Triton (backends/triton/pairwise.py), CUDA
(backends/cuda/pairwise.py: the CUDA C++ kernel for narrow features, else Triton); the default
kernel is the reference (reference/pairwise.py).
"""
from typing import Optional, Tuple

from torch import Tensor

from .. import backends
from ..reference import pairwise as ref


def _fwd_fake(x, y, col_bias, values, scale, metric):
    k = 0 if values is None else values.shape[-1]
    return backends.new_stat(x, x.shape[0], x.shape[1]), backends.new_stat(x, x.shape[0], x.shape[1], k)


@backends.op("pairwise_lse_fwd", fake=_fwd_fake, triton="pairwise.pairwise_lse_fwd", cuda="pairwise.pairwise_lse_fwd")
def pairwise_lse_fwd(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                     scale: float, metric: str) -> Tuple[Tensor, Tensor]:
    """x (B, n, d), y (B, m, d), col_bias (B, m), values (B, m, k) -> lse (B, n), out (B, n, k|0).
    x, y and values may be float16 / bfloat16 (kernels on the GPU read them as tensor-core tiles);
    lse and out are float32 then (float64 for float64), as are the statistics inside."""
    x, y, values = backends.widen(x, y, values)
    lse, out = ref.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
    return lse, (out if out is not None else x.new_zeros(x.shape[0], x.shape[1], 0))


def _bwd_fake(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric, need_rows, need_cols):
    gc = x.new_empty(col_bias.shape) if col_bias is not None else x.new_empty(0)
    gv = x.new_empty(values.shape) if values is not None else x.new_empty(0)
    return x.new_empty(x.shape), y.new_empty(y.shape), gc, gv


@backends.op("pairwise_lse_bwd", fake=_bwd_fake, triton="pairwise.pairwise_lse_bwd")
def pairwise_lse_bwd(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                     lse: Tensor, out: Optional[Tensor], grad_lse: Tensor, grad_out: Optional[Tensor],
                     scale: float, metric: str, need_rows: bool, need_cols: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (gx, gy, gcol_bias (B, m) or empty, gvalues (B, m, k) or empty), streamed.
    With values, out and grad_out are given too. need_rows: the row pass (gx); need_cols: the
    column pass (gy, gcol_bias, gvalues); kernels skip a pass nobody needs and leave its zeros.
    Each gradient comes back in its input's dtype."""
    dts = (x.dtype, y.dtype, None if values is None else values.dtype)
    x, y, values = backends.widen(x, y, values)
    gx, gy, gc, gv = ref.pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric)
    return (gx.to(dts[0]), gy.to(dts[1]), gc if col_bias is not None else x.new_zeros(0),
            gv.to(dts[2]) if values is not None else x.new_zeros(0))
