"""hp.ot.sliced_wasserstein (POT's ot.sliced_wasserstein_distance conventions) and max-sliced.

SW_p(x, y) = (mean over directions theta_l of W_p^p(<x, theta_l>, <y, theta_l>))^(1/p).
On CPU one C++ kernel does, per direction: projection (on the fly for D <= 8), radix sort with
indices, the merge walk of the quantile functions and the per-sample gradients; the gradients
w.r.t. x, y and the projections are then contracted by GEMMs. Memory: two (B, L, N) gradient
buffers when a gradient is needed (the plain torch version keeps sorted values, int64 indices
and projections alive for backward).
"""
import numpy as np
import torch

from .. import _validate as V
from .. import backends
from .._ops import wasserstein1d as ops
from ..reference import wasserstein1d as ref
from . import _pot_io
from .wasserstein1d import check_p, check_weights, wasserstein_1d


def _count(name, k):
    if not _pot_io.is_int(k) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _gaussian(d, n_projections, seed, generator, dtype, device, as_numpy):
    """(d, L) standard normal draws from the source POT uses for this seed: a numpy RandomState /
    Generator as given; an int seeds numpy's RandomState for numpy inputs (POT: np.random.seed) and a
    local torch.Generator for tensors (POT: torch.manual_seed, here without touching the global
    RNG); None draws from the global numpy / torch RNG. `generator=` (a torch.Generator) is
    hotpath's own keyword, kept."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is None and isinstance(seed, torch.Generator):
        generator, seed = seed, None
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return torch.randn(d, n_projections, generator=generator, dtype=dtype, device=generator.device).to(device)
    if isinstance(seed, np.random.RandomState):
        return torch.from_numpy(seed.randn(d, n_projections)).to(device)
    if isinstance(seed, np.random.Generator):
        return torch.from_numpy(seed.standard_normal((d, n_projections))).to(device)
    if seed is None:
        if as_numpy:
            return torch.from_numpy(np.random.randn(d, n_projections))
        return torch.randn(d, n_projections, dtype=dtype, device=device)
    if not _pot_io.is_int(seed):
        raise TypeError("seed must be None, an int, a numpy RandomState / Generator or a torch.Generator, "
                        f"got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if as_numpy:
        return torch.from_numpy(np.random.RandomState(int(seed)).randn(d, n_projections))
    g = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(d, n_projections, generator=g, dtype=dtype, device=device)


def _unit_columns(z, dtype):
    # normalized in float64 then cast: float32 columns get unit norm to float32 rounding (~6e-8),
    # where a float32 norm leaves errors of ~1e-6 for large d
    z = z.double()
    return (z / z.norm(dim=0, keepdim=True)).to(dtype)


def random_projections(d, n_projections, seed=None, *, generator=None, dtype=torch.float32, device="cpu"):
    """(d, n_projections) directions drawn uniformly on the unit sphere (Gaussian, normalized in
    float64), as POT's ot.sliced.get_random_projections. seed: None, an int, a numpy RandomState /
    Generator or a torch.Generator (or `generator=`)."""
    d = _count("d", d)
    L = _count("n_projections", n_projections)
    return _unit_columns(_gaussian(d, L, seed, generator, dtype, torch.device(device), False), dtype)


def get_random_projections(d, n_projections, seed=None, backend=None, type_as=None):
    """POT's ot.sliced.get_random_projections: numpy (float64) unless type_as is a tensor or
    backend is POT's torch backend; the same numbers as POT for the same seed."""
    d = _count("d", d)
    L = _count("n_projections", n_projections)
    if isinstance(type_as, torch.Tensor):
        dtype = type_as.dtype if type_as.is_floating_point() else torch.float32
        return _unit_columns(_gaussian(d, L, seed, None, dtype, type_as.device, False), dtype)
    if backend is not None and str(backend) != "numpy":
        return _unit_columns(_gaussian(d, L, seed, None, torch.float32, torch.device("cpu"), False), torch.float32)
    return _pot_io.to_numpy(_unit_columns(_gaussian(d, L, seed, None, torch.float64, torch.device("cpu"), True),
                                          torch.float64))


def _root(s, p):
    """s^(1/p) with a zero gradient (and second derivative) at s = 0, where the root has an
    infinite slope: equal inputs get zero gradients, not NaN (POT's autograd gives NaN). NaN stays."""
    pos = s > 0
    safe = torch.where(pos, s, torch.ones_like(s))
    return torch.where(pos, safe ** (1.0 / p), s * 0.0)


def _root_factor(s, sw, p, L):
    """d SW / d cost_l = SW / (p s L), 0 where s == 0 (see _root)."""
    pos = s > 0
    return torch.where(pos, sw / (p * torch.where(pos, s, torch.ones_like(s))), s * 0.0) / L


def _sliced_grads(x, y, a, b, theta, p, need):
    """d SW_b / d (x, y, a, b, theta) (theta per batch entry, (B, D, L)) from the reference's
    closed-form 1-D gradients, in differentiable torch ops: the create_graph=True backward."""
    B, N, M, L = x.shape[0], x.shape[1], y.shape[1], theta.shape[1]
    tt = theta.t().unsqueeze(0)
    px = torch.matmul(tt, x.transpose(1, 2)).reshape(B * L, N)
    py = torch.matmul(tt, y.transpose(1, 2)).reshape(B * L, M)
    aa = None if a is None else a.repeat_interleave(L, 0)
    bb = None if b is None else b.repeat_interleave(L, 0)
    vals = need[0] or need[1] or need[4]
    costs, gpx, gpy, ga, gb = ref.wasserstein_1d_grads(px, py, aa, bb, p, False, vals, need[2] or need[3])
    s = costs.reshape(B, L).sum(1) / L
    f = _root_factor(s, _root(s, p), p, L)[:, None, None]
    out = [None] * 5
    if vals:
        Gx, Gy = f * gpx.reshape(B, L, N), f * gpy.reshape(B, L, M)
        if need[0]:
            out[0] = torch.matmul(Gx.transpose(1, 2), tt)
        if need[1]:
            out[1] = torch.matmul(Gy.transpose(1, 2), tt)
        if need[4]:
            out[4] = (torch.matmul(Gx, x) + torch.matmul(Gy, y)).transpose(1, 2)
    if need[2]:
        out[2] = (f * ga.reshape(B, L, N)).sum(1)
    if need[3]:
        out[3] = (f * gb.reshape(B, L, M)).sum(1)
    return out


class _Sliced(backends.Function):
    @staticmethod
    def forward(ctx, x, y, a, b, theta, p):
        nig = ctx.needs_input_grad
        need = (bool(nig[0]), bool(nig[1]), bool(a is not None and nig[2]), bool(b is not None and nig[3]),
                bool(nig[4]))
        costs, gx, gy, ga, gb, gt = ops.sliced_wasserstein_fwd(x, y, a, b, theta, p, *need)
        L = theta.shape[1]
        s = costs.sum(1) / L
        sw = _root(s, p)
        factor = _root_factor(s, sw, p, L)
        # the inputs too: with create_graph=True the gradient is recomputed from them
        ctx.save_for_backward(gx, gy, ga, gb, gt, factor, x, y, a, b, theta)
        ctx.need = need
        ctx.p = p
        return sw

    @staticmethod
    def backward(ctx, g):
        gx, gy, ga, gb, gt, factor, x, y, a, b, theta = ctx.saved_tensors
        need = ctx.need
        if torch.is_grad_enabled():
            # create_graph=True (gradient penalties on sliced losses): the saved gradients carry no
            # graph; recompute them in differentiable torch ops (the kernel's values except at ties)
            w = g
            gx, gy, ga, gb, gt = _sliced_grads(x, y, a, b, theta, ctx.p, need)
        else:
            w = g * factor  # (B,)
        out = [None] * 6
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
    if x.shape[-1] == 0:
        raise ValueError(f"x and y must have dimension D >= 1, got {tuple(x.shape)}")
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


def _pot_args(x, y, a, b, projections):
    """numpy / list arguments -> tensors (POT drop-in); returns them and whether to answer in numpy."""
    as_numpy = _pot_io.numpy_mode(x, y, a, b, projections)
    dev = _pot_io.first_device(x, y, a, b, projections)
    x = _pot_io.as_tensor("x", x, device=dev)
    y = _pot_io.as_tensor("y", y, device=dev)
    a = _pot_io.as_tensor("a", a, device=dev, empty_is_none=True)
    b = _pot_io.as_tensor("b", b, device=dev, empty_is_none=True)
    projections = _pot_io.as_tensor("projections", projections, device=dev)
    return x, y, a, b, projections, as_numpy


def _prepare(x, y, a, b, n_projections, p, projections, seed, generator, log, as_numpy):
    """Validated (B, N, D), (B, M, D), (B, N) / (B, M) or None, theta (D, L) in the compute dtype."""
    _clouds(x, y)
    p = check_p("p", p)
    if not isinstance(log, (bool, np.bool_)):
        raise TypeError(f"log must be a bool, got {type(log).__name__}")
    batched = x.dim() == 3 or y.dim() == 3
    B = x.shape[0] if x.dim() == 3 else (y.shape[0] if y.dim() == 3 else 1)
    N, M, D = x.shape[-2], y.shape[-2], x.shape[-1]
    a = _weights("a", a, B, N, batched)
    b = _weights("b", b, B, M, batched)
    V.same_device(x=x, y=y, a=a, b=b, projections=projections)
    dtype = V.compute_dtype(x, y, a, b, projections)
    if projections is None:
        L = _count("n_projections", n_projections)
        theta = _unit_columns(_gaussian(D, L, seed, generator, dtype, x.device, as_numpy), dtype)
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

    return prep(x, 3), prep(y, 3), prep(a, 2), prep(b, 2), theta.contiguous(), p, batched


def _projected_costs(x, y, a, b, theta, p):
    """Per-direction W_p^p (B, L) through wasserstein_1d on the projections (differentiable; used
    where the per-direction values are returned: log=True, max-sliced)."""
    B, N, M, L = x.shape[0], x.shape[1], y.shape[1], theta.shape[1]
    px = torch.matmul(x, theta).permute(1, 0, 2)  # (N, B, L): samples first, POT's layout
    py = torch.matmul(y, theta).permute(1, 0, 2)
    ua = None if a is None else a.t()[:, :, None].expand(N, B, L)
    vb = None if b is None else b.t()[:, :, None].expand(M, B, L)
    return wasserstein_1d(px, py, ua, vb, p)


def _finish(value, costs, theta, batched, in_dtype, log, as_numpy):
    if not batched:
        value = value.reshape(())
        costs = None if costs is None else costs[0]
    if in_dtype in (torch.float16, torch.bfloat16):
        value = value.to(in_dtype)
    out = (value, {"projections": theta, "projected_emds": costs}) if log else value
    return _pot_io.to_numpy(out) if as_numpy else out


@backends.takes_backend
def sliced_wasserstein(x, y, a=None, b=None, n_projections=50, p=2, projections=None, seed=None, log=False, *,
                       generator=None, backend="auto"):
    """Monte-Carlo sliced Wasserstein distance, a drop-in for POT's ot.sliced_wasserstein_distance
    (same positional order and defaults: n_projections=50 as POT).

    x (N, D) or (B, N, D), y (M, D) or (B, M, D); a (N,) / (B, N), b (M,) / (B, M) sample weights
    (None or []: uniform; normalized per cloud). projections: (D, L) directions used as given (POT
    convention; n_projections and seed are then unused); otherwise n_projections random unit
    directions, shared by the batch, from `seed` (None, int, numpy RandomState / Generator,
    torch.Generator; as POT) or `generator=` (a torch.Generator). numpy inputs give numpy outputs.
    Returns (mean_l W_p^p along direction l)^(1/p): a 0-d tensor, or (B,) for batched inputs;
    log=True returns (value, {"projections": (D, L), "projected_emds": (L,) or (B, L)}).
    Differentiable w.r.t. x, y, a, b and the projections, twice (create_graph=True).
    """
    x, y, a, b, projections, as_numpy = _pot_args(x, y, a, b, projections)
    in_dtype = getattr(x, "dtype", None)
    X, Y, A, Bw, theta, p, batched = _prepare(x, y, a, b, n_projections, p, projections, seed, generator, log,
                                              as_numpy)
    costs = None
    if log:
        costs = _projected_costs(X, Y, A, Bw, theta, p)
        sw = _root(costs.sum(1) / theta.shape[1], p)
    else:
        sw = _Sliced.apply(X, Y, A, Bw, theta, p)
    return _finish(sw, costs, theta, batched, in_dtype, log, as_numpy)


def sliced_wasserstein_distance(X_s, X_t, a=None, b=None, n_projections=50, p=2, projections=None, seed=None,
                                log=False):
    """POT's ot.sliced_wasserstein_distance under its own name and argument names (see
    sliced_wasserstein, which adds batching and `generator=` / `backend=`)."""
    return sliced_wasserstein(X_s, X_t, a, b, n_projections, p, projections, seed, log)


@backends.takes_backend
def max_sliced_wasserstein(x, y, a=None, b=None, n_projections=50, p=2, projections=None, seed=None, log=False, *,
                           generator=None, backend="auto"):
    """Max-sliced Wasserstein, as POT's ot.max_sliced_wasserstein_distance (same arguments as
    sliced_wasserstein): (max_l W_p^p(<x, theta_l>, <y, theta_l>))^(1/p).

    A one-liner on top of wasserstein_1d (the projections are L batched 1-D problems):
        wasserstein_1d(x @ projections, y @ projections, a, b, p).max() ** (1 / p)
    Gradients flow through the maximizing direction (and into the projections, for optimizing
    them by gradient ascent); zero, not NaN, where every direction has zero distance.
    """
    x, y, a, b, projections, as_numpy = _pot_args(x, y, a, b, projections)
    in_dtype = getattr(x, "dtype", None)
    X, Y, A, Bw, theta, p, batched = _prepare(x, y, a, b, n_projections, p, projections, seed, generator, log,
                                              as_numpy)
    costs = _projected_costs(X, Y, A, Bw, theta, p)
    value = _root(costs.max(1).values, p)
    return _finish(value, costs if log else None, theta, batched, in_dtype, log, as_numpy)


def max_sliced_wasserstein_distance(X_s, X_t, a=None, b=None, n_projections=50, p=2, projections=None, seed=None,
                                    log=False):
    """POT's ot.max_sliced_wasserstein_distance under its own name and argument names."""
    return max_sliced_wasserstein(X_s, X_t, a, b, n_projections, p, projections, seed, log)
