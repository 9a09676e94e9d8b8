"""hp.ot.wasserstein_1d and hp.ot.histogram_wasserstein: batched, weighted 1-D optimal transport.

Conventions follow POT's ot.wasserstein_1d: the value returned is W_p^p (no p-th root), samples
lie along the first dimension and every trailing dimension is a batch of independent problems.
Weights are normalized per problem (POT expects them normalized already; then both agree).
"""
import math
import numbers

import numpy as np
import torch

from .. import _validate as V
from .. import backends
from . import _pot_io
from .._ops import wasserstein1d as ops
from ..reference import wasserstein1d as ref


def check_p(name, p):
    if isinstance(p, torch.Tensor) or not isinstance(p, numbers.Real) or isinstance(p, bool):
        raise TypeError(f"{name} must be a real number >= 1, got {type(p).__name__}")
    p = float(p)
    if not math.isfinite(p) or p < 1:
        raise ValueError(f"{name} must be a finite number >= 1, got {p}")
    return p


def check_weights(name, w, *, dim=-1):
    """Non-negative with a positive total per problem (two reductions, one host sync). NaN
    weights are not an error: they propagate to the result like NaN values do."""
    if w.numel() == 0:
        return
    wd = w.detach()
    if bool(wd.amin() < 0):
        raise ValueError(f"{name} must be non-negative")
    if bool((wd.sum(dim) <= 0).any()):
        raise ValueError(f"{name} must have a positive total weight in every problem (got a zero total)")


class _W1D(backends.Function):
    """Rows are problems: u (B, n), v (B, m). The op returns the gradients with the value."""

    @staticmethod
    def forward(ctx, u, v, uw, vw, p, presorted):
        nig = ctx.needs_input_grad
        gvals = bool(nig[0] or nig[1])
        gw = bool((uw is not None and nig[2]) or (vw is not None and nig[3]))
        cost, gu, gv, guw, gvw = ops.wasserstein1d_fwd(u, v, uw, vw, p, presorted, gvals, gw)
        # the inputs too: with create_graph=True the gradient is recomputed from them
        ctx.save_for_backward(gu, gv, guw, gvw, u, v, uw, vw)
        ctx.flags = (gvals, gw, uw is not None, vw is not None)
        ctx.p, ctx.presorted = p, presorted
        return cost

    @staticmethod
    def backward(ctx, g):
        gu, gv, guw, gvw, u, v, uw, vw = ctx.saved_tensors
        gvals, gw, has_uw, has_vw = ctx.flags
        if torch.is_grad_enabled():
            # create_graph=True (gradient penalties): the saved gradients carry no graph, so the
            # gradient is recomputed by the reference's closed form, written in differentiable
            # torch ops (same value as the kernel's except at ties, where both are one-sided)
            _, gu, gv, guw, gvw = ref.wasserstein_1d_grads(u, v, uw, vw, ctx.p, ctx.presorted, gvals, gw)
        g = g[:, None]
        out = [None] * 6
        if gvals:
            out[0], out[1] = g * gu, g * gv
        if gw:
            out[2] = g * guw if has_uw else None
            out[3] = g * gvw if has_vw else None
        return tuple(out)


def _rows(name, w, values, n):
    """Weights of shape (n,) or broadcastable to values (n, ...) -> (B, n) rows."""
    if w is None:
        return None
    V.tensor(name, w)
    if w.dim() == 0 or w.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries along dim 0 (one per sample), got shape {tuple(w.shape)}")
    if w.dim() == 1 and values.dim() > 1:
        w = w.reshape(n, *([1] * (values.dim() - 1)))
    try:
        w = torch.broadcast_to(w, values.shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(w.shape)} does not match the values' shape {tuple(values.shape)}") from None
    return w


@backends.takes_backend
def wasserstein_1d(u_values, v_values, u_weights=None, v_weights=None, p=1, require_sort=True, *, backend="auto"):
    """W_p^p between 1-D empirical distributions, as POT's ot.wasserstein_1d.

    u_values (n, ...) and v_values (m, ...): samples along dim 0, the trailing dimensions (equal on
    both sides) index independent problems. u_weights / v_weights: (n,) shared by all problems, or
    of the values' shape; None means uniform. Weights are normalized per problem (must be
    non-negative with a positive total). p: any real >= 1 (1 and 2 are fast paths).
    require_sort=False promises the values are already sorted along dim 0.
    Returns W_p^p with the trailing shape of the values (a 0-d tensor for 1-D inputs).
    Differentiable w.r.t. values and weights (twice: create_graph=True gives a differentiable
    gradient). POT drop-in: numpy arrays / lists in give numpy out; `[]` weights mean uniform.
    """
    as_numpy = _pot_io.numpy_mode(u_values, v_values, u_weights, v_weights)
    dev = _pot_io.first_device(u_values, v_values, u_weights, v_weights)
    u_values = _pot_io.as_tensor("u_values", u_values, device=dev)
    v_values = _pot_io.as_tensor("v_values", v_values, device=dev)
    u_weights = _pot_io.as_tensor("u_weights", u_weights, device=dev, empty_is_none=True)
    v_weights = _pot_io.as_tensor("v_weights", v_weights, device=dev, empty_is_none=True)
    if not isinstance(require_sort, (bool, np.bool_)):
        raise TypeError(f"require_sort must be a bool, got {type(require_sort).__name__}")
    out = _wasserstein_1d(u_values, v_values, u_weights, v_weights, p, bool(require_sort))
    return _pot_io.to_numpy(out) if as_numpy else out


def _wasserstein_1d(u_values, v_values, u_weights, v_weights, p, require_sort):
    V.tensor("u_values", u_values)
    V.tensor("v_values", v_values)
    p = check_p("p", p)
    if u_values.dim() == 0 or v_values.dim() == 0:
        raise ValueError("u_values and v_values must have at least one dimension (samples along dim 0)")
    if u_values.shape[1:] != v_values.shape[1:]:
        raise ValueError(f"u_values and v_values must have the same trailing (batch) shape, got "
                         f"{tuple(u_values.shape)} and {tuple(v_values.shape)}")
    n, m = u_values.shape[0], v_values.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"u_values and v_values must hold at least one sample, got n={n}, m={m}")
    V.same_device(u_values=u_values, v_values=v_values, u_weights=u_weights, v_weights=v_weights)
    uw = _rows("u_weights", u_weights, u_values, n)
    vw = _rows("v_weights", v_weights, v_values, m)
    for name, w in (("u_weights", uw), ("v_weights", vw)):
        if w is not None:
            check_weights(name, w, dim=0)
    dtype = V.compute_dtype(u_values, v_values, uw, vw)
    batch = u_values.shape[1:]

    def rows(t, k):
        return None if t is None else t.to(dtype).reshape(k, -1).t().contiguous()

    cost = _W1D.apply(rows(u_values, n), rows(v_values, m), rows(uw, n), rows(vw, m), p, not require_sort)
    out = cost.reshape(batch)
    if u_values.dtype in (torch.float16, torch.bfloat16):
        out = out.to(u_values.dtype)
    return out


def _raise_bad_mass(bad):
    for flag, msg in zip(bad, ("p must be non-negative",
                               "p must have a positive total weight in every problem (got a zero total)",
                               "q must be non-negative",
                               "q must have a positive total weight in every problem (got a zero total)")):
        if flag:
            raise ValueError(msg)


class _HistW1(backends.Function):
    @staticmethod
    def forward(ctx, p, q, support):
        need_p, need_q = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        cost, gp, gq, stats = ops.histogram_w1_fwd(p, q, support, need_p, need_q)
        ctx.save_for_backward(gp, gq, p, q, support)
        ctx.need = (need_p, need_q)
        ctx.mark_non_differentiable(stats)
        return cost, stats

    @staticmethod
    def backward(ctx, g, _gstats):
        gp, gq, p, q, support = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: differentiable closed form of the same gradient (see _W1D)
            _, gp, gq = ref.histogram_wasserstein_grads(p, q, support, *ctx.need)
        # always a fresh tensor: a saved buffer handed out as .grad would be accumulated into
        # (retain_graph) or zeroed in place (zero_grad(set_to_none=False)) by autograd
        g = g[:, None]
        return (g * gp if ctx.need[0] else None), (g * gq if ctx.need[1] else None), None


@backends.takes_backend
def histogram_wasserstein(p, q, support=None, order=1, *, backend="auto"):
    """W_order^order between histograms on an ordered 1-D support (like wasserstein_1d, no root).

    p, q: (K,) or (B, K) non-negative masses (normalized per row; e.g. softmax outputs), broadcast
    against each other. support: (K,) or (B, K) bin positions, non-decreasing and finite; default
    0..K-1. order 1 is the integral of |CDF_p - CDF_q| (fused forward + backward kernel); higher
    orders go through the quantile functions. Differentiable w.r.t. p and q (and support).
    Returns (B,) or a 0-d tensor for 1-D inputs.
    """
    V.tensor("p", p, ndims=(1, 2))
    V.tensor("q", q, ndims=(1, 2))
    order = check_p("order", order)
    V.same_device(p=p, q=q, support=support)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of bins, got {tuple(p.shape)} and {tuple(q.shape)}")
    K = p.shape[-1]
    if K == 0:
        raise ValueError("p and q must have at least one bin")
    if p.dim() == 2 and q.dim() == 2 and p.shape[0] != q.shape[0]:
        raise ValueError(f"p and q must have the same number of rows, got {p.shape[0]} and {q.shape[0]}")
    batched = p.dim() == 2 or q.dim() == 2
    dtype = V.compute_dtype(p, q, support)
    if support is None:
        support = torch.arange(K, dtype=dtype, device=p.device)
    else:
        V.tensor("support", support, ndims=(1, 2))
        if support.shape[-1] != K:
            raise ValueError(f"support must have {K} entries (one per bin), got shape {tuple(support.shape)}")
        sd = support.detach()
        if not bool(torch.isfinite(sd).all()):
            raise ValueError("support must be finite")
        if K > 1 and bool((sd.diff(dim=-1) < 0).any()):
            raise ValueError("support must be sorted in non-decreasing order along its last dimension")
        batched = batched or support.dim() == 2
    P2 = p.to(dtype).reshape(-1, K)
    Q2 = q.to(dtype).reshape(-1, K)
    S2 = support.to(dtype).reshape(-1, K)
    rows = [t.shape[0] for t in (P2, Q2, S2) if t.shape[0] != 1]
    B = rows[0] if rows else 1
    for name, t in (("p", P2), ("q", Q2), ("support", S2)):
        if t.shape[0] not in (1, B):
            raise ValueError(f"{name} has {t.shape[0]} rows, expected 1 or {B}")
    P2, Q2 = P2.expand(B, K).contiguous(), Q2.expand(B, K).contiguous()
    if order == 1 and not support.requires_grad:
        # the kernel reports each row's min and total mass from its first sweep: validation
        # without reading p and q again (nothing is returned before the check)
        cost, stats = _HistW1.apply(P2, Q2, S2.contiguous())
        if B:
            _raise_bad_mass(torch.stack([stats[:, 0].min() < 0, (stats[:, 1] <= 0).any(),
                                         stats[:, 2].min() < 0, (stats[:, 3] <= 0).any()]).tolist())
    else:
        check_weights("p", P2)
        check_weights("q", Q2)
        if order == 1:
            # gradient w.r.t. the bin positions: the plain torch formula carries it
            cost = ref.histogram_wasserstein(P2, Q2, S2.expand(B, K), 1)
        else:
            Sb = S2.expand(B, K).contiguous()
            cost = _W1D.apply(Sb, Sb, P2, Q2, order, True)
    if not batched:
        cost = cost.reshape(())
    if p.dtype in (torch.float16, torch.bfloat16):
        cost = cost.to(p.dtype)
    return cost
