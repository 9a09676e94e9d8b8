"""References for 1-D Wasserstein, sliced Wasserstein and histogram Wasserstein.

Written for clarity in the POT style (merge of the two quantile functions); they
materialize freely and work in any floating dtype (tests run them in float64). Layout used by the
ops: one 1-D problem per row, u (B, n), v (B, m), weights (B, n) / (B, m) or None (uniform).
"""
import functools

import torch


def _in_float64(fn):
    """Run in float64 and return the first argument's dtype, as the kernels do (they accumulate in
    double): a cost like |1e30|^2 that overflows float32 only at the end then overflows the same
    way on every backend, and differences of such costs (the weight gradients) stay finite."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        dtype = args[0].dtype
        up = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        out = fn(*up, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.to(dtype) for o in out)
        return out.to(dtype)
    return run


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


def _merge(cu, cv):
    """Merged grid of the two CDFs' breakpoints cu (B, n), cv (B, m): its sorted ends qs, the
    sort's permutation, and the u / v sample index of each segment. Ties go to u first and a
    segment's indices count the breakpoints passed before it, as the kernels' merge walk does, so
    a zero-length segment between tied breakpoints already uses the next u sample: the one-sided
    weight derivatives at ties are then the same on every backend."""
    n, m = cu.shape[-1], cv.shape[-1]
    qs, perm = torch.sort(torch.cat([cu, cv], -1), dim=-1, stable=True)
    is_u = (perm < n).long()
    ju = (torch.cumsum(is_u, -1) - is_u).clamp_(max=n - 1)
    jv = (torch.cumsum(1 - is_u, -1) - (1 - is_u)).clamp_(max=m - 1)
    return qs, perm, ju, jv


def _segment_sum(delta, c):
    """sum_k delta_k c_k over the merged grid's segments. A zero-length segment adds nothing, even
    where its cost overflows to inf (0 * inf would be NaN): as in the kernels, which skip it."""
    return torch.where(delta > 0, delta * c, torch.zeros_like(c)).sum(-1)


def nan_rows(*ts):
    """NaN rule of the family: NaN (as a (B,) additive term, 0 elsewhere) for every problem (row)
    with a NaN or an infinity in its values or weights. Without it an infinite value gives inf or
    NaN depending on whether a zero-length segment of the merged grid meets it."""
    ok = None
    for t in ts:
        if t is not None:
            f = torch.isfinite(t.detach()).all(-1)
            ok = f if ok is None else ok & f
    zero = torch.zeros((), dtype=ts[0].dtype, device=ts[0].device)
    return torch.where(ok, zero, zero + float("nan"))


@_in_float64
def wasserstein_1d(u, v, uw=None, vw=None, p=1.0, presorted=False):
    """W_p^p between the rows of u (B, n) and v (B, m) with weights (normalized here); NaN for a
    problem with a NaN or infinite value or weight (nan_rows)."""
    bad = nan_rows(u, v, uw, vw)
    uw = _normalize(uw, u)
    vw = _normalize(vw, v)
    if not presorted:
        u, iu = torch.sort(u, dim=-1, stable=True)
        v, iv = torch.sort(v, dim=-1, stable=True)
        uw = torch.gather(uw, -1, iu)
        vw = torch.gather(vw, -1, iv)
    cu = torch.cumsum(uw, -1)
    cv = torch.cumsum(vw, -1)
    # The last breakpoint is exactly 1 (total mass after normalization), as in the kernels.
    one = torch.ones_like(cu[..., -1:])
    cu = torch.cat([cu[..., :-1], one], -1)
    cv = torch.cat([cv[..., :-1], one], -1)
    qs, _, iu, iv = _merge(cu, cv)
    delta = torch.diff(qs, dim=-1, prepend=torch.zeros_like(qs[..., :1]))
    d = torch.gather(u, -1, iu) - torch.gather(v, -1, iv)
    return _segment_sum(delta, cost(d, p)) + bad


def random_projections(d, n_projections, *, generator=None, dtype=torch.float32, device="cpu"):
    """(d, n_projections) directions uniform on the sphere, as POT's get_random_projections.
    Drawn in `dtype` (the same stream as POT's torch backend) and normalized in float64, so float32
    columns have unit norm to float32 rounding (~1e-7), not to the error of a float32 norm."""
    theta = torch.randn(d, n_projections, generator=generator, dtype=dtype, device=device).double()
    return (theta / theta.norm(dim=0, keepdim=True)).to(dtype)


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


@_in_float64
def histogram_wasserstein(p, q, support, order=1.0):
    """W_order^order between histograms p, q (B, K) (normalized here) on support (B, K) sorted."""
    p = p / p.sum(-1, keepdim=True)
    q = q / q.sum(-1, keepdim=True)
    if order == 1:
        # W1 = integral of |CDF_p - CDF_q| over the support.
        dc = torch.cumsum(p - q, -1)[..., :-1]
        return (dc.abs() * torch.diff(support, dim=-1)).sum(-1)
    return wasserstein_1d(support, support, p, q, order, presorted=True)


# ---------------------------------------------------------------------------- explicit gradients
# The functions below give the reference's values with their gradients in closed form (no
# autograd inside). They are written with differentiable torch ops only (gather / scatter / sort
# values / cumsum, nothing in place on a tensor that can carry a graph), so the same code is the
# reference kernel of the fused ops and, called under grad mode, the double-backward formula.


def _dcost(d, p):
    """c'(d) for c = |d|^p: exactly 0 at d = 0 (equal inputs get zero gradients), NaN stays NaN.
    The power uses a safe base so that its own derivative is finite at d = 0 as well."""
    if p == 1:
        return torch.where(d != d, d, torch.sign(d))
    if p == 2:
        return 2.0 * d
    a = d.abs()
    pos = a > 0
    safe = torch.where(pos, a, torch.ones_like(a))
    return torch.where(pos, p * safe ** (p - 1.0) * torch.sign(d), d * 0.0)


def _sorted_normalized(w, idx, like):
    """Normalized weights in sorted order and their raw totals (None for uniform weights)."""
    if w is None:
        return torch.full_like(like, 1.0 / like.shape[-1]), None
    total = w.sum(-1, keepdim=True)
    wn = w / total
    return (wn if idx is None else torch.gather(wn, -1, idx)), total


def _unsort(g, idx):
    return g if idx is None else torch.zeros_like(g).scatter(-1, idx, g)


def _weight_grad(dF, wn, total, idx):
    """Gradient w.r.t. raw weights from the gradient w.r.t. the first n-1 CDF breakpoints (the last
    one is the constant 1): reverse cumsum, then through w / sum(w), then back to input order."""
    g = torch.cat([dF, dF.new_zeros(*dF.shape[:-1], 1)], -1)
    gwn = torch.flip(torch.cumsum(torch.flip(g, [-1]), -1), [-1])
    return _unsort((gwn - (gwn * wn).sum(-1, keepdim=True)) / total, idx)


@_in_float64
def wasserstein_1d_grads(u, v, u_weights, v_weights, p, presorted, grad_values, grad_weights):
    """wasserstein_1d (same layout, same value) with its analytic gradients.

    u (B, n), v (B, m), weights (B, n) / (B, m) or None (uniform), normalized here. Returns
    (cost (B,), du, dv, duw, dvw): d cost_b / d input, each an empty tensor when not asked for (or
    when that side has no weights). Segments of the merged quantile grid: ends qs (the sorted
    union of the two CDFs' breakpoints), u / v indices ju, jv (first breakpoint >= the end),
    lengths delta. cost = sum_k delta_k c(u_ju - v_jv), so
      d/du_i = sum_{k: ju_k = i} delta_k c'(d_k)        (and minus that for v)
      d/dqs_k = c_k - c_{k+1}                            (qs_k ends segment k, starts k + 1)
    routed back to the breakpoints through the sort of qs, then to the weights."""
    n, m = u.shape[-1], v.shape[-1]
    bad = nan_rows(u, v, u_weights, v_weights)
    if presorted:
        us, vs, su, sv = u, v, None, None
    else:
        us, su = torch.sort(u, dim=-1, stable=True)
        vs, sv = torch.sort(v, dim=-1, stable=True)
    wu, tu = _sorted_normalized(u_weights, su, u)
    wv, tv = _sorted_normalized(v_weights, sv, v)
    cu, cv = torch.cumsum(wu, -1), torch.cumsum(wv, -1)
    one = torch.ones_like(cu[..., -1:])
    cu = torch.cat([cu[..., :-1], one], -1)
    cv = torch.cat([cv[..., :-1], one], -1)
    qs, perm, ju, jv = _merge(cu, cv)
    delta = torch.diff(qs, dim=-1, prepend=torch.zeros_like(qs[..., :1]))
    d = torch.gather(us, -1, ju) - torch.gather(vs, -1, jv)
    c = cost(d, p)
    value = _segment_sum(delta, c) + bad
    empty = u.new_zeros(0)
    du = dv = duw = dvw = empty
    if grad_values:
        gd = torch.where(delta > 0, delta * _dcost(d, p), torch.zeros_like(d))
        du = _unsort(torch.zeros_like(us).scatter_add(-1, ju, gd), su)
        dv = _unsort(torch.zeros_like(vs).scatter_add(-1, jv, -gd), sv)
    if grad_weights and (u_weights is not None or v_weights is not None):
        dq = c - torch.cat([c[..., 1:], torch.zeros_like(c[..., :1])], -1)
        dcat = torch.zeros_like(dq).scatter(-1, perm, dq)
        if u_weights is not None:
            duw = _weight_grad(dcat[..., :n - 1], wu, tu, su)
        if v_weights is not None:
            dvw = _weight_grad(dcat[..., n:n + m - 1], wv, tv, sv)
    du, dv, duw, dvw = (t if t.numel() == 0 else t + bad[..., None] for t in (du, dv, duw, dvw))
    return value, du, dv, duw, dvw


@_in_float64
def histogram_wasserstein_grads(p, q, support, need_gp, need_gq):
    """Order-1 histogram_wasserstein (same value) with its analytic gradients w.r.t. p and q.

    p, q (B, K) raw masses (normalized here), support (1, K) or (B, K) non-decreasing. With
    D_k = CDF_p(k) - CDF_q(k) (k < K-1), sw_k = sign(D_k) (s_{k+1} - s_k) and R_i = sum_{k >= i} sw_k:
    d/dp_i = (R_i - sum_k sw_k CDF_p(k)) / sum(p), d/dq_i = -(R_i - sum_k sw_k CDF_q(k)) / sum(q).
    Returns (cost (B,), gp, gq), a gradient an empty tensor when not asked for."""
    bad = nan_rows(p, q)
    sp, sq = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
    pn, qn = p / sp, q / sq
    dc = torch.cumsum(pn - qn, -1)[..., :-1]
    w = torch.diff(support, dim=-1)
    value = (dc.abs() * w).sum(-1) + bad
    gp = gq = p.new_zeros(0)
    if need_gp or need_gq:
        sw = torch.where(dc != dc, dc, torch.sign(dc)) * w
        sw = torch.cat([sw, sw.new_zeros(*sw.shape[:-1], 1)], -1)
        R = torch.flip(torch.cumsum(torch.flip(sw, [-1]), -1), [-1])
        if need_gp:
            gp = (R - (R * pn).sum(-1, keepdim=True)) / sp + bad[..., None]
        if need_gq:
            gq = -(R - (R * qn).sum(-1, keepdim=True)) / sq + bad[..., None]
    return value, gp, gq
