"""hp.pairwise_lse: the streaming pairwise log-sum-exp engine (public API and autograd)."""
import torch

from . import _validate as V
from . import backends
from ._ops import pairwise as ops

METRICS = ("dot", "sqeuclidean")


class PairwiseLSE(backends.Function):
    """Inputs are already validated, batched (3-D), contiguous and of one compute dtype."""

    @staticmethod
    def forward(ctx, x, y, col_bias, values, scale, scale_tensor, metric):
        lse, out = ops.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
        ctx.save_for_backward(x, y, col_bias, values, lse, out)
        ctx.cfg = (scale, metric)
        if values is None:
            ctx.mark_non_differentiable(out)
        return lse, out

    @staticmethod
    def backward(ctx, grad_lse, grad_out):
        x, y, col_bias, values, lse, out = ctx.saved_tensors
        scale, metric = ctx.cfg
        if grad_lse is None:
            grad_lse = torch.zeros_like(lse)
        if values is None:
            out, grad_out = None, None
        elif grad_out is None:
            grad_out = torch.zeros_like(out)
        need = ctx.needs_input_grad
        need_rows = need[0] or need[5]  # the scale gradient uses gx, and gy for sqeuclidean
        need_cols = need[1] or need[2] or need[3] or (need[5] and metric != "dot")
        gx, gy, gc, gv = ops.pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse.contiguous(),
                                              None if grad_out is None else grad_out.contiguous(),
                                              scale, metric, need_rows, need_cols)
        gscale = None
        if ctx.needs_input_grad[5]:
            # d score / d scale = score_without_scale, so the scale gradient follows from gx, gy.
            if metric == "dot":
                gscale = (x * gx).sum() / scale
            else:
                gscale = ((x * gx).sum() + (y * gy).sum()) / (2 * scale)
        return (gx if need[0] else None, gy if need[1] else None,
                gc if col_bias is not None and need[2] else None, gv if values is not None and need[3] else None,
                None, gscale, None)


@backends.takes_backend
def pairwise_lse(x, y, *, scale=1.0, metric="dot", col_bias=None, values=None, backend="auto"):
    """Row-wise log-sum-exp of pairwise scores, streamed (the n x m matrix is never stored).

    score_ij = scale * <x_i, y_j> + col_bias_j            (metric="dot")
    score_ij = -scale * |x_i - y_j|^2 + col_bias_j        (metric="sqeuclidean")

    x: (n, d) or (B, n, d); y: (m, d) or (B, m, d); col_bias: (m,) or (B, m), may hold -inf for
    masked columns; values: (m, k) or (B, m, k). scale: number or 0-d tensor (differentiable).
    Returns lse (n,) / (B, n), and with values also out_i = sum_j softmax_j(score_ij) values_j.
    A row whose columns are all -inf gets lse = -inf and out = 0.
    """
    V.one_of("metric", metric, METRICS)
    V.tensor("x", x, ndims=(2, 3))
    V.tensor("y", y, ndims=(2, 3))
    V.tensor("col_bias", col_bias, ndims=(1, 2), allow_none=True)
    V.tensor("values", values, ndims=(2, 3), allow_none=True)
    V.same_device(x=x, y=y, col_bias=col_bias, values=values,
                  scale=scale if isinstance(scale, torch.Tensor) else None)
    V.scalar("scale", scale, positive=(metric == "sqeuclidean"))
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature dimension d, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    batched = x.dim() == 3 or y.dim() == 3
    B = x.shape[0] if x.dim() == 3 else (y.shape[0] if y.dim() == 3 else 1)
    if x.dim() == 3 and y.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    m = y.shape[-2]
    if col_bias is not None:
        if col_bias.shape[-1] != m or (col_bias.dim() == 2 and col_bias.shape[0] != B):
            raise ValueError(f"col_bias must have shape ({m},) or ({B}, {m}), got {tuple(col_bias.shape)}")
    if values is not None:
        if values.shape[-2] != m or (values.dim() == 3 and values.shape[0] != B):
            raise ValueError(f"values must have shape ({m}, k) or ({B}, {m}, k), got {tuple(values.shape)}")

    dtype = V.compute_dtype(x, y, col_bias, values)
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    scale_f = float(scale.detach()) if scale_t is not None else float(scale)
    if scale_t is not None and scale_t.requires_grad and scale_f == 0:
        raise ValueError("scale must be nonzero when it requires a gradient")

    def prep(t, ndim):
        if t is None:
            return None
        t = t.to(dtype)
        if t.dim() == ndim - 1:
            t = t.unsqueeze(0).expand(B, *t.shape)
        return t.contiguous()

    xb, yb, cb, vb = prep(x, 3), prep(y, 3), prep(col_bias, 2), prep(values, 3)
    if metric == "sqeuclidean" and xb.shape[1] > 0 and yb.shape[1] > 0:
        # Translation invariance: centering keeps |x - y|^2 accurate when the clouds sit far from 0.
        center = yb.detach().mean(dim=1, keepdim=True)
        xb, yb = xb - center, yb - center
    lse, out = PairwiseLSE.apply(xb, yb, cb, vb, scale_f, scale_t, metric)
    if not batched:
        lse, out = lse[0], out[0]
    return (lse, out) if values is not None else lse
