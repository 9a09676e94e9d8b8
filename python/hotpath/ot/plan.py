"""Using a Sinkhorn solution on point clouds: P @ V streamed, the dense plan, the barycentric map.

P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) with (f, g) = (result.f, result.g), C the cost of
result.p. For p = 2 the products stream through the pairwise engine (softmax-weighted values,
no n x m); for p = 1 they go over row chunks of 256.
"""
import torch

from .. import _validate as V
from .._ops import pairwise as pairwise_ops
from ..reference import ot as ref
from .sinkhorn import SinkhornResult, _log_w


def _batch(result, x, y, V_=None):
    if not isinstance(result, SinkhornResult):
        raise TypeError(f"result must be a SinkhornResult, got {type(result).__name__}")
    if result.p not in (1, 2):
        raise ValueError("result must come from a point-cloud solver (hp.ot.sinkhorn), not sinkhorn_dense")
    V.tensor("x", x, ndims=(2, 3))
    V.tensor("y", y, ndims=(2, 3))
    batched = x.dim() == 3
    X = x if batched else x[None]
    Y = y if batched else y[None]
    f = result.f if result.f.dim() == 2 else result.f[None]
    g = result.g if result.g.dim() == 2 else result.g[None]
    if f.shape != X.shape[:2] or g.shape != Y.shape[:2]:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not match the result's potentials "
                         f"{tuple(result.f.shape)} / {tuple(result.g.shape)}")
    dt = f.dtype
    Vb = None
    if V_ is not None:
        V.tensor("V", V_, ndims=(2, 3))
        Vb = V_ if V_.dim() == 3 else V_[None].expand(X.shape[0], -1, -1)
        if Vb.shape[:2] != Y.shape[:2]:
            raise ValueError(f"V must have shape (m, k) or (B, m, k) with m = {Y.shape[1]}, got {tuple(V_.shape)}")
        Vb = Vb.to(dt).contiguous()
    return X.to(dt).contiguous(), Y.to(dt).contiguous(), f, g, Vb, batched


def _row_softmax_apply(result, X, Y, g, Vb):
    """(lse_i, out_i) with out_i = sum_j softmax_j(log b_j + (g_j - C_ij)/eps) V_j."""
    eps, p = result.eps, result.p
    h = (_log_w(result.b) + g / eps).contiguous()
    if p == 2:
        c = Y.mean(1, keepdim=True)
        return pairwise_ops.pairwise_lse_fwd(X - c, Y - c, h, Vb, 1.0 / (2 * eps), "sqeuclidean")
    lses, outs = [], []
    for i0 in range(0, X.shape[1], 256):
        s = h[:, None, :] - ref.cost_matrix(X[:, i0:i0 + 256], Y, 1) / eps
        lse = torch.logsumexp(s, 2)
        outs.append(torch.bmm(torch.exp(s - lse[..., None]), Vb))
        lses.append(lse)
    return torch.cat(lses, 1), torch.cat(outs, 1)


def apply_plan(result, x, y, V):
    """(P @ V) (n, k) / (B, n, k), streamed: (P V)_i = a_i exp(f_i/eps + lse_i) * softmax-weighted V."""
    X, Y, f, g, Vb, batched = _batch(result, x, y, V)
    lse, out = _row_softmax_apply(result, X, Y, g, Vb)
    w = result.a * torch.exp(f / result.eps + lse)
    w = torch.where(result.a > 0, w, torch.zeros((), dtype=w.dtype))
    res = w[..., None] * out
    return res if batched else res[0]


def barycentric_map(result, x, y):
    """x_i -> (P y)_i / (P 1)_i, the softmax-weighted mean of y for each x_i (streamed)."""
    X, Y, f, g, _, batched = _batch(result, x, y)
    _, out = _row_softmax_apply(result, X, Y, g, Y)
    return out if batched else out[0]


def transport_plan(result, x, y):
    """The dense plan P (n, m) / (B, n, m); for small problems (materializes n x m)."""
    X, Y, f, g, _, batched = _batch(result, x, y)
    C = ref.cost_matrix(X, Y, result.p)
    logP = _log_w(result.a)[:, :, None] + _log_w(result.b)[:, None, :] + (f[:, :, None] + g[:, None, :] - C) / result.eps
    P = torch.exp(logP)
    return P if batched else P[0]
