"""References for 1-D Wasserstein, sliced Wasserstein and histogram Wasserstein.

Written for clarity in the POT style (merge of quantile functions through searchsorted); they
materialize freely and work in any floating dtype (tests run them in float64). Layout used by the
ops: one 1-D problem per row, u (B, n), v (B, m), weights (B, n) / (B, m) or None (uniform).
"""
import torch


def _normalize(w, like):
    if w is None:
        return torch.full_like(like, 1.0 / like.shape[-1])
    return w / w.sum(-1, keepdim=True)


def cost(d, p):
    a = d.abs()
    if p == 1:
        return a
    if p == 2:
        return d * d
    return a ** p


def wasserstein_1d(u, v, uw=None, vw=None, p=1.0, presorted=False):
    """W_p^p between the rows of u (B, n) and v (B, m) with weights (normalized here)."""
    uw = _normalize(uw, u)
    vw = _normalize(vw, v)
    if not presorted:
        u, iu = torch.sort(u, dim=-1, stable=True)
        v, iv = torch.sort(v, dim=-1, stable=True)
        uw = torch.gather(uw, -1, iu)
        vw = torch.gather(vw, -1, iv)
    n, m = u.shape[-1], v.shape[-1]
    cu = torch.cumsum(uw, -1)
    cv = torch.cumsum(vw, -1)
    # The last breakpoint is exactly 1 (total mass after normalization), as in the kernels.
    one = torch.ones_like(cu[..., -1:])
    cu = torch.cat([cu[..., :-1], one], -1)
    cv = torch.cat([cv[..., :-1], one], -1)
    qs, _ = torch.sort(torch.cat([cu, cv], -1), -1)
    # u index of a segment ending at q: first u breakpoint >= q (ties: u breakpoints first).
    iu = torch.searchsorted(cu.contiguous(), qs.contiguous(), right=False).clamp_(max=n - 1)
    iv = torch.searchsorted(cv.contiguous(), qs.contiguous(), right=False).clamp_(max=m - 1)
    delta = torch.diff(qs, dim=-1, prepend=torch.zeros_like(qs[..., :1]))
    d = torch.gather(u, -1, iu) - torch.gather(v, -1, iv)
    return (delta * cost(d, p)).sum(-1)


def random_projections(d, n_projections, *, generator=None, dtype=torch.float32, device="cpu"):
    """(d, n_projections) directions uniform on the sphere, as POT's get_random_projections."""
    theta = torch.randn(d, n_projections, generator=generator, dtype=dtype, device=device)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_wasserstein(x, y, a, b, theta, p=2.0):
    """Plain torch: matmul + sort + 1-D distance per direction. x (B, N, D), y (B, M, D),
    a (B, N) / b (B, M) or None, theta (D, L). Returns (mean_l W_p^p)^(1/p), shape (B,)."""
    B, L = x.shape[0], theta.shape[1]
    px = torch.matmul(x, theta).transpose(1, 2).reshape(B * L, -1)
    py = torch.matmul(y, theta).transpose(1, 2).reshape(B * L, -1)
    aa = None if a is None else a.repeat_interleave(L, 0)
    bb = None if b is None else b.repeat_interleave(L, 0)
    costs = wasserstein_1d(px, py, aa, bb, p).reshape(B, L)
    return costs.mean(-1) ** (1.0 / p)


def sliced_wasserstein_sorted_equal(x, y, theta, p=2.0):
    """The plain torch baseline users write for uniform weights and N == M: matmul, sort, diff."""
    px, _ = torch.sort(torch.matmul(x, theta), dim=-2)
    py, _ = torch.sort(torch.matmul(y, theta), dim=-2)
    return (cost(px - py, p).mean(dim=(-2, -1))) ** (1.0 / p)


def histogram_wasserstein(p, q, support, order=1.0):
    """W_order^order between histograms p, q (B, K) (normalized here) on support (B, K) sorted."""
    p = p / p.sum(-1, keepdim=True)
    q = q / q.sum(-1, keepdim=True)
    if order == 1:
        # W1 = integral of |CDF_p - CDF_q| over the support.
        dc = torch.cumsum(p - q, -1)[..., :-1]
        return (dc.abs() * torch.diff(support, dim=-1)).sum(-1)
    return wasserstein_1d(support, support, p, q, order, presorted=True)
