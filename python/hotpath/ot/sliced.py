"""hp.ot.sliced_wasserstein (POT's ot.sliced_wasserstein_distance conventions) and max-sliced.

SW_p(x, y) = (mean over directions theta_l of W_p^p(<x, theta_l>, <y, theta_l>))^(1/p).
On CPU one C++ kernel does, per direction: projection (on the fly for D <= 8), radix sort with
indices, the merge walk of the quantile functions and the per-sample gradients; the gradients
w.r.t. x, y and the projections are then contracted by GEMMs. Memory: two (B, L, N) gradient
buffers when a gradient is needed (the plain torch version keeps sorted values, int64 indices
and projections alive for backward).
"""
import torch

from .. import _validate as V
from .._backend import check_backend
from .._ops import wasserstein1d as ops
from .wasserstein1d import check_p, check_weights, wasserstein_1d


def random_projections(d, n_projections, *, generator=None, dtype=torch.float32, device="cpu"):
    """(d, n_projections) directions drawn uniformly on the unit sphere (Gaussian, normalized),
    reproducible with a torch.Generator, as POT's ot.sliced.get_random_projections."""
    theta = torch.randn(d, n_projections, generator=generator, dtype=dtype, device=device)
    return theta / theta.norm(dim=0, keepdim=True)


class _Sliced(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, a, b, theta, p, backend):
        nig = ctx.needs_input_grad
        need = (bool(nig[0]), bool(nig[1]), bool(a is not None and nig[2]), bool(b is not None and nig[3]),
                bool(nig[4]))
        costs, gx, gy, ga, gb, gt = ops.sliced_wasserstein_fwd(x, y, a, b, theta, p, *need, backend)
        L = theta.shape[1]
        s = costs.sum(1) / L
        sw = s ** (1.0 / p)
        # d SW / d s = SW / (p s), set to 0 where s == 0 (equal inputs: zero gradient, not NaN)
        factor = torch.where(s > 0, sw / (p * s.clamp_min(torch.finfo(s.dtype).tiny)), torch.zeros_like(s)) / L
        ctx.save_for_backward(gx, gy, ga, gb, gt, factor)
        ctx.need = need
        return sw

    @staticmethod
    def backward(ctx, g):
        gx, gy, ga, gb, gt, factor = ctx.saved_tensors
        w = g * factor  # (B,)
        need = ctx.need
        out = [None] * 7
        if need[0]:
            out[0] = w[:, None, None] * gx
        if need[1]:
            out[1] = w[:, None, None] * gy
        if need[2]:
            out[2] = w[:, None] * ga
        if need[3]:
            out[3] = w[:, None] * gb
        if need[4]:
            out[4] = (w[:, None, None] * gt).sum(0)
        return tuple(out)


def _clouds(x, y):
    V.tensor("x", x, ndims=(2, 3))
    V.tensor("y", y, ndims=(2, 3))
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same dimension D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3 and y.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[-2] == 0 or y.shape[-2] == 0:
        raise ValueError("x and y must hold at least one point each")


def _weights(name, w, B, n, batched):
    if w is None:
        return None
    V.tensor(name, w, ndims=(1, 2))
    if w.shape[-1] != n or (w.dim() == 2 and w.shape[0] != B):
        want = f"({n},) or ({B}, {n})" if batched else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(w.shape)}")
    check_weights(name, w)
    return w


def sliced_wasserstein(x, y, a=None, b=None, *, n_projections=128, p=2, projections=None, generator=None,
                       backend="auto"):
    """Monte-Carlo sliced Wasserstein distance, as POT's ot.sliced_wasserstein_distance.

    x (N, D) or (B, N, D), y (M, D) or (B, M, D); a (N,) / (B, N), b (M,) / (B, M) sample weights
    (None: uniform; normalized per cloud). projections: (D, L) directions used as given (POT
    convention); otherwise n_projections random unit directions from `generator` (a
    torch.Generator, for reproducibility; the global RNG when None), shared by the batch.
    Returns (mean_l W_p^p along direction l)^(1/p): a 0-d tensor, or (B,) for batched inputs.
    Differentiable w.r.t. x, y, a, b and the projections.
    """
    check_backend(backend)
    _clouds(x, y)
    p = check_p("p", p)
    batched = x.dim() == 3 or y.dim() == 3
    B = x.shape[0] if x.dim() == 3 else (y.shape[0] if y.dim() == 3 else 1)
    N, M, D = x.shape[-2], y.shape[-2], x.shape[-1]
    a = _weights("a", a, B, N, batched)
    b = _weights("b", b, B, M, batched)
    V.same_device(x=x, y=y, a=a, b=b, projections=projections)
    dtype = V.compute_dtype(x, y, a, b, projections)
    if projections is None:
        if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
            raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        theta = random_projections(D, n_projections, generator=generator, dtype=dtype, device=x.device)
    else:
        V.tensor("projections", projections, ndims=(2,))
        if projections.shape[0] != D or projections.shape[1] == 0:
            raise ValueError(f"projections must have shape ({D}, L) with L >= 1, got {tuple(projections.shape)}")
        if not bool(torch.isfinite(projections.detach()).all()):
            raise ValueError("projections must be finite")
        theta = projections.to(dtype)

    def prep(t, nd):
        if t is None:
            return None
        t = t.to(dtype)
        if t.dim() == nd - 1:
            t = t.unsqueeze(0).expand(B, *t.shape)
        return t.contiguous()

    sw = _Sliced.apply(prep(x, 3), prep(y, 3), prep(a, 2), prep(b, 2), theta.contiguous(), p, backend)
    if not batched:
        sw = sw.reshape(())
    if x.dtype in (torch.float16, torch.bfloat16):
        sw = sw.to(x.dtype)
    return sw


def max_sliced_wasserstein(x, y, a=None, b=None, *, projections, p=2, backend="auto"):
    """Max-sliced Wasserstein over the given directions: max_l W_p(<x, theta_l>, <y, theta_l>).

    A one-liner on top of wasserstein_1d (the (N, L) projections are L batched 1-D problems):
        wasserstein_1d(x @ projections, y @ projections, a, b, p).max() ** (1 / p)
    x (N, D), y (M, D), projections (D, L). Gradients flow through the maximizing direction
    (and into the projections, for optimizing them by gradient ascent).
    """
    _clouds(x, y)
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError("max_sliced_wasserstein takes unbatched (N, D) and (M, D) clouds")
    V.tensor("projections", projections, ndims=(2,))
    if projections.shape[0] != x.shape[-1]:
        raise ValueError(f"projections must have shape ({x.shape[-1]}, L), got {tuple(projections.shape)}")
    p = check_p("p", p)
    w = wasserstein_1d(x @ projections, y @ projections, a, b, p, backend=backend)
    return w.max() ** (1.0 / p)
