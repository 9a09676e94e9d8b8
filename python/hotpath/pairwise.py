"""hp.pairwise_lse: the streaming pairwise log-sum-exp engine (public API and autograd)."""
import torch

from . import _validate as V
from . import backends
from ._ops import pairwise as ops

METRICS = ("dot", "sqeuclidean")


def _nonfinite(x, y, col_bias, values):
    """The NaN rule's masks, O(inputs): (masked (B, m) or None, NaN rows (B, n), NaN channels
    (B, k) or None). A -inf col_bias masks its column; any other non-finite input poisons what it
    reaches: x_i its row, an unmasked column's y_j or col_bias_j (NaN, +inf) every row of its
    batch, an unmasked values_j[c] channel c of out."""
    masked = col_bias == -float("inf") if col_bias is not None else None
    bad_col = ~torch.isfinite(y).all(-1)
    if col_bias is not None:
        bad_col = (bad_col | torch.isnan(col_bias) | (col_bias == float("inf"))) & ~masked
    nan_rows = ~torch.isfinite(x).all(-1) | bad_col.any(-1, keepdim=True)
    nan_chan = None
    if values is not None:
        bad_v = ~torch.isfinite(values)
        if masked is not None:
            bad_v = bad_v & ~masked[..., None]
        nan_chan = bad_v.any(1)
    return masked, nan_rows, nan_chan


def _finite(t, keep=None):
    """t with its non-finite entries (and the entries keep excludes) read as 0."""
    ok = torch.isfinite(t) if keep is None else torch.isfinite(t) & keep
    return torch.where(ok, t, torch.zeros((), dtype=t.dtype, device=t.device))


def _dot32(a, b):
    """sum(a * b) in float32 at least (16-bit operands would round every product)."""
    at = backends.stat_dtype(a.dtype)
    return torch.dot(a.reshape(-1).to(at), b.reshape(-1).to(at))


class PairwiseLSE(backends.Function):
    """Inputs are already validated, batched (3-D) and contiguous; x, y and values share one
    operand dtype (backends.operand_dtype), col_bias is in its statistics dtype.

    The NaN rule (pairwise_lse's docstring) is enforced here, the same for every backend: the
    kernels only ever see finite inputs (a -inf col_bias aside), and NaN is put in afterwards
    with O(inputs) masks, in the outputs and in the gradients of what a NaN output depends on."""

    @staticmethod
    def forward(ctx, x, y, col_bias, values, scale, scale_t, metric):
        masked, nan_rows, nan_chan = _nonfinite(x, y, col_bias, values)
        keep = None if masked is None else ~masked[..., None]
        x, y = _finite(x), _finite(y, keep)
        if col_bias is not None:
            col_bias = torch.where(masked, col_bias, _finite(col_bias))
        if values is not None:
            values = _finite(values, keep)
        if metric == "sqeuclidean" and x.shape[1] > 0 and y.shape[1] > 0 and x.element_size() > 2:
            # Translation invariance: centering keeps |x - y|^2 accurate when the clouds sit far from 0.
            # Not for 16-bit operands: rounding the centered points to 16 bits (2^-9 |x - c|) would
            # cost more than the float32 cancellation of the uncentered norms (2^-24 |x|^2).
            center = y.mean(dim=1, keepdim=True)
            x, y = x - center, y - center
        lse, out = ops.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
        nan = torch.full((), float("nan"), dtype=lse.dtype, device=lse.device)
        lse = torch.where(nan_rows, nan, lse)
        if values is not None:
            out = torch.where(nan_rows[..., None] | nan_chan[:, None, :], nan, out)
        ctx.save_for_backward(x, y, col_bias, values, lse, out)
        ctx.cfg = (scale, metric)
        ctx.set_materialize_grads(False)  # an unused output reaches no gradient with its NaN
        if values is None:
            ctx.mark_non_differentiable(out)
        return lse, out

    @staticmethod
    def backward(ctx, grad_lse, grad_out):
        x, y, col_bias, values, lse, out = ctx.saved_tensors
        scale, metric = ctx.cfg
        if values is None:
            grad_out = None
        if grad_lse is None and grad_out is None:
            return (None,) * 7
        # Which gradients a NaN output reaches: its row's x, and every unmasked column of its batch
        # (y, col_bias, and the values channel it reads).
        nan_rows = torch.zeros_like(lse, dtype=torch.bool)
        if grad_lse is not None:
            nan_rows = nan_rows | torch.isnan(lse)
        nan_chan = None
        if grad_out is not None:
            out_nan = torch.isnan(out)
            nan_rows = nan_rows | out_nan.any(-1)
            nan_chan = out_nan.any(1)
        nan_batch = nan_rows.any(-1)
        # The kernels then see only finite work: a row whose lse is not finite (+inf: overflow,
        # -inf: every column masked, NaN) has softmax weights 0, so it reads as x_i = 0 with
        # lse_i = -inf, which every kernel takes as an empty row.
        live = torch.isfinite(lse)
        ninf = torch.full((), -float("inf"), dtype=lse.dtype, device=lse.device)
        xk, lk = torch.where(live[..., None], x, torch.zeros_like(x)), torch.where(live, lse, ninf)
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
        outk = None
        if values is not None:
            outk = torch.where(torch.isnan(out), torch.zeros_like(out), out)
            grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        need = ctx.needs_input_grad
        need_rows = need[0] or need[5]  # the scale gradient uses gx, and gy for sqeuclidean
        need_cols = need[1] or need[2] or need[3] or (need[5] and metric != "dot")
        gx, gy, gc, gv = ops.pairwise_lse_bwd(xk, y, col_bias, values, lk, outk, grad_lse.contiguous(),
                                              None if grad_out is None else grad_out.contiguous(),
                                              scale, metric, need_rows, need_cols)
        nan = torch.full((), float("nan"), dtype=lse.dtype, device=lse.device)
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
        masked = col_bias == -float("inf") if col_bias is not None else None

        def cols(g, nan_here):  # a masked column is never read: its gradient is 0
            if g.shape[:2] != lse.shape[:1] + y.shape[1:2]:
                return g  # a pass nobody needs may come back empty
            g = torch.where(nan_here, nan, g)
            return g if masked is None else torch.where(masked.view(masked.shape + (1,) * (g.dim() - 2)), zero, g)

        gx = torch.where(nan_rows[..., None], nan, gx)
        gy = cols(gy, nan_batch[:, None, None])
        if col_bias is not None:
            gc = cols(gc, nan_batch[:, None])
        if values is not None and nan_chan is not None:
            gv = cols(gv, nan_chan[:, None, :])
        gscale = None
        if ctx.needs_input_grad[5]:
            # d score / d scale = score_without_scale, so the scale gradient follows from gx, gy.
            if metric == "dot":
                gscale = _dot32(x, gx) / scale
            else:
                gscale = (_dot32(x, gx) + _dot32(y, gy)) / (2 * scale)
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
    float16 / bfloat16 x, y (and values) are read as they are by the GPU kernels (tensor-core
    tiles, backends.operand_dtype); lse and out are float32 for them on every backend.

    NaN rule (every backend, values and gradients alike):
    - col_bias_j = -inf masks column j: its y_j, values_j and col_bias_j are never read (not even
      a NaN there) and get gradient 0. A row whose columns are all masked gets lse = -inf, out = 0.
    - Any other NaN or +-inf input makes NaN every output it reaches: a non-finite x_i row i's lse
      and out; a non-finite y_j or a NaN / +inf col_bias_j (unmasked) every row of its batch;
      a non-finite values_j[c] (unmasked) channel c of out in every row of its batch.
    - The gradient of every input a NaN output depends on is NaN (x_i: row i; y, col_bias,
      values: every unmasked column of the batch; values channel c: out's channel c), counting
      only outputs that are used in the graph.
    - Finite inputs whose scores overflow follow torch.logsumexp: a +inf score gives lse = +inf
      with softmax weights 0 (out = 0, gradient 0 through that row), an all -inf row -inf, an
      inf - inf score NaN (and the gradients it reaches NaN, as above).
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

    # col_bias is a statistic (like the potentials it usually holds): it does not decide the
    # operand dtype, except that float64 anywhere means float64 everywhere
    dtype = backends.operand_dtype(x, y, values, col_bias if col_bias is not None and col_bias.dtype == torch.float64
                                   else None)
    stat = backends.stat_dtype(dtype)
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    scale_f = float(scale.detach()) if scale_t is not None else float(scale)
    if scale_t is not None and scale_t.requires_grad and scale_f == 0:
        raise ValueError("scale must be nonzero when it requires a gradient")

    def prep(t, ndim, dt=dtype):
        if t is None:
            return None
        t = t.to(dt)
        if t.dim() == ndim - 1:
            t = t.unsqueeze(0).expand(B, *t.shape)
        return t.contiguous()

    xb, yb, cb, vb = prep(x, 3), prep(y, 3), prep(col_bias, 2, stat), prep(values, 3)
    lse, out = PairwiseLSE.apply(xb, yb, cb, vb, scale_f, scale_t, metric)
    if not batched:
        lse, out = lse[0], out[0]
    return (lse, out) if values is not None else lse
