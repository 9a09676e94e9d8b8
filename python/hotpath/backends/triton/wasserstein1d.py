"""Triton kernels of the 1-D Wasserstein family: merge of two quantile functions, histogram W1.

Merge without a sequential walk (GPU-friendly): with sorted values and cumulative weights Fu, Fv
(last breakpoint exactly 1), every segment of the merged quantile grid ends at a breakpoint of u
or of v. The segment ending at Fu[i] has v index r_i = #{Fv < Fu[i]} and starts at
max(Fu[i-1], Fv[r_i - 1]); the one ending at Fv[j] has u index s_j = #{Fu <= Fv[j]} (ties: u
first) and starts at max(Fv[j-1], Fu[s_j - 1]). Each block of breakpoints finds its partner index
by a vectorized binary search, so one program per problem sweeps n + m breakpoints in blocks.
Gradients: w.r.t. the sorted values by atomic adds of seg * c'(d) (a value receives terms from
its own segments and from the other side's); w.r.t. the breakpoints directly,
d/dFu[i] = c(u_i - v_r) - c(u_{i+1} - v_r). The launcher sorts (torch.sort), builds the CDFs and
maps breakpoint gradients to weight gradients (reverse cumsum, normalization) and back to the
input order.

Histogram W1: one program per row; block-wise tl.cumsum with a carried prefix for the CDFs; the
backward's reverse cumsum of sign * bin width is written as total minus an exclusive prefix; the
first sweep also reports each row's min and sum of p and q, for the caller's validation.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _cost(d, p, PK: tl.constexpr):
    a = tl.abs(d)
    if PK == 1:
        c = a
    elif PK == 2:
        c = d * d
    else:
        # |d|^p; 0 at d = 0 without evaluating log2(0); NaN propagates through a * 0
        c = tl.where(a > 0, tl.exp2(p * tl.log2(tl.where(a > 0, a, 1.0))), a * 0.0)
    return c


@triton.jit
def _dcost(d, p, PK: tl.constexpr):
    sg = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)
    if PK == 1:
        g = sg
    elif PK == 2:
        g = 2.0 * d
    else:
        a = tl.abs(d)
        g = tl.where(a > 0, sg * p * tl.exp2((p - 1.0) * tl.log2(tl.where(a > 0, a, 1.0))), a * 0.0)
    return g


@triton.jit
def _count_below(F, n, key, mask, STRICT: tl.constexpr, LOG_N: tl.constexpr):
    """#{k < n : F[k] < key} (STRICT) or #{F[k] <= key}, F sorted; vectorized lower bound."""
    lo = tl.zeros(key.shape, dtype=tl.int32)
    hi = tl.zeros(key.shape, dtype=tl.int32) + n
    for _ in tl.static_range(LOG_N):
        active = lo < hi
        mid = (lo + hi) // 2
        f = tl.load(F + mid, mask=mask & active & (mid < n), other=0.0)
        if STRICT:
            right = f < key
        else:
            right = f <= key
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return lo


@triton.jit
def _w1d_kernel(US, FU, VS, FV, COST, GU, GV, GFU, GFV, n, m, p,
                PK: tl.constexpr, GRAD_V: tl.constexpr, GRAD_F: tl.constexpr,
                LOG_N: tl.constexpr, LOG_M: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    US += b * n
    FU += b * n
    VS += b * m
    FV += b * m
    GU += b * n
    GV += b * m
    GFU += b * n
    GFV += b * m
    acc = tl.zeros((BLOCK,), dtype=US.dtype.element_ty)
    # segments ending at a u breakpoint
    for s0 in range(0, n, BLOCK):
        i = s0 + tl.arange(0, BLOCK)
        mask = i < n
        fu = tl.load(FU + i, mask=mask, other=0.0)
        fu_prev = tl.load(FU + i - 1, mask=mask & (i > 0), other=0.0)
        r = _count_below(FV, m, fu, mask, True, LOG_M)
        fv_prev = tl.load(FV + r - 1, mask=mask & (r > 0), other=0.0)
        seg = tl.maximum(fu - tl.maximum(fu_prev, fv_prev), 0.0)
        rc = tl.minimum(r, m - 1)
        uu = tl.load(US + i, mask=mask, other=0.0)
        vv = tl.load(VS + rc, mask=mask, other=0.0)
        d = uu - vv
        c = _cost(d, p, PK)
        acc += tl.where(mask, seg * c, 0.0)
        if GRAD_V:
            g = seg * _dcost(d, p, PK)
            tl.atomic_add(GU + i, g, mask=mask)
            tl.atomic_add(GV + rc, -g, mask=mask)
        if GRAD_F:
            un = tl.load(US + i + 1, mask=mask & (i < n - 1), other=0.0)
            gf = tl.where(i < n - 1, c - _cost(un - vv, p, PK), 0.0)
            tl.store(GFU + i, gf, mask=mask)
    # segments ending at a v breakpoint
    for s0 in range(0, m, BLOCK):
        j = s0 + tl.arange(0, BLOCK)
        mask = j < m
        fv = tl.load(FV + j, mask=mask, other=0.0)
        fv_prev = tl.load(FV + j - 1, mask=mask & (j > 0), other=0.0)
        s = _count_below(FU, n, fv, mask, False, LOG_N)
        fu_prev = tl.load(FU + s - 1, mask=mask & (s > 0), other=0.0)
        seg = tl.maximum(fv - tl.maximum(fv_prev, fu_prev), 0.0)
        sc = tl.minimum(s, n - 1)
        uu = tl.load(US + sc, mask=mask, other=0.0)
        vv = tl.load(VS + j, mask=mask, other=0.0)
        d = uu - vv
        c = _cost(d, p, PK)
        acc += tl.where(mask, seg * c, 0.0)
        if GRAD_V:
            g = seg * _dcost(d, p, PK)
            tl.atomic_add(GU + sc, g, mask=mask)
            tl.atomic_add(GV + j, -g, mask=mask)
        if GRAD_F:
            vn = tl.load(VS + j + 1, mask=mask & (j < m - 1), other=0.0)
            gf = tl.where(j < m - 1, c - _cost(uu - vn, p, PK), 0.0)
            tl.store(GFV + j, gf, mask=mask)
    tl.store(COST + b, tl.sum(acc, 0))


def _log2ceil(n):
    return max(1, int(math.ceil(math.log2(n + 1))))


def _cdf(w, idx, n, like):
    """Normalized sorted weights and their CDF with the last breakpoint exactly 1."""
    if w is None:
        # (i + 1) / n exactly: equal rationals on both sides give equal floats (exact ties)
        F = (torch.arange(1, n + 1, device=like.device, dtype=like.dtype) / n).expand_as(like)
        return None, F.contiguous(), None
    total = w.sum(-1, keepdim=True)
    wn = (w if idx is None else torch.gather(w, -1, idx)) / total
    F = torch.cumsum(wn, -1)
    F[:, -1] = 1.0
    return wn, F.contiguous(), total


def _weight_grad(gF, wn, total, idx):
    # d/dw_norm[k] = sum_{i >= k} d/dF[i]; then through w / sum(w); then back to input order
    gwn = torch.flip(torch.cumsum(torch.flip(gF, [-1]), -1), [-1])
    g = (gwn - (gwn * wn).sum(-1, keepdim=True)) / total
    return g if idx is None else torch.empty_like(g).scatter_(-1, idx, g)


def wasserstein1d(u, v, uw, vw, p, presorted, grad_values, grad_weights):
    """Launcher: rows u (B, n), v (B, m), weights (B, n) / (B, m) or None -> (cost, gu, gv, guw, gvw)."""
    B, n = u.shape
    m = v.shape[1]
    if presorted:
        us, iu, vs, iv = u.contiguous(), None, v.contiguous(), None
    else:
        us, iu = torch.sort(u, dim=-1, stable=True)
        vs, iv = torch.sort(v, dim=-1, stable=True)
    wu, Fu, su = _cdf(uw, iu, n, us)
    wv, Fv, sv = _cdf(vw, iv, m, vs)
    cost = torch.empty(B, device=u.device, dtype=u.dtype)
    gus = torch.zeros_like(us) if grad_values else us.new_zeros(1)
    gvs = torch.zeros_like(vs) if grad_values else vs.new_zeros(1)
    gF = grad_weights and (uw is not None or vw is not None)
    gFu = torch.empty_like(us) if gF else us.new_zeros(1)
    gFv = torch.empty_like(vs) if gF else vs.new_zeros(1)
    pk = 1 if p == 1 else (2 if p == 2 else 0)
    BLOCK = 128 if max(n, m) >= 128 else max(16, triton.next_power_of_2(max(n, m)))
    _w1d_kernel[(B,)](us, Fu, vs, Fv, cost, gus, gvs, gFu, gFv, n, m, float(p),
                      PK=pk, GRAD_V=grad_values, GRAD_F=gF, LOG_N=_log2ceil(n), LOG_M=_log2ceil(m), BLOCK=BLOCK)

    def unsort(g, idx):
        return g if idx is None else torch.empty_like(g).scatter_(-1, idx, g)

    e = u.new_zeros
    gu = unsort(gus, iu) if grad_values else e(0)
    gv = unsort(gvs, iv) if grad_values else e(0)
    guw = _weight_grad(gFu, wu, su, iu) if gF and uw is not None else e(0)
    gvw = _weight_grad(gFv, wv, sv, iv) if gF and vw is not None else e(0)
    # NaN rule, as the reference: a problem with a NaN or infinite value or total weight is NaN,
    # value and gradients (the kernel's max / min would drop NaN breakpoints on a GPU, and an
    # infinite value meets zero-length segments or not). Elementwise, no host sync.
    bad = ~(torch.isfinite(us).all(-1, keepdim=True) & torch.isfinite(vs).all(-1, keepdim=True))
    for total in (su, sv):
        if total is not None:
            bad = bad | ~torch.isfinite(total)
    nan = torch.full((), float("nan"), dtype=u.dtype, device=u.device)
    cost = torch.where(bad[:, 0], nan, cost)
    gu, gv, guw, gvw = (t if t.numel() == 0 else torch.where(bad, nan, t) for t in (gu, gv, guw, gvw))
    return cost, gu, gv, guw, gvw


@triton.jit
def _hist_w1_kernel(P, Q, S, COST, GP, GQ, STATS, K, s_sb,
                    NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    P += b * K
    Q += b * K
    S += b * s_sb
    GP += b * K
    GQ += b * K
    dt = P.dtype.element_ty
    sp = tl.zeros((BLOCK,), dtype=dt)
    sq = tl.zeros((BLOCK,), dtype=dt)
    mp = tl.full((BLOCK,), float("inf"), dtype=dt)
    mq = tl.full((BLOCK,), float("inf"), dtype=dt)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        mask = k < K
        pv = tl.load(P + k, mask=mask, other=0.0)
        qv = tl.load(Q + k, mask=mask, other=0.0)
        sp += pv
        sq += qv
        # NaN skipped, as the C++ row minimum (a -inf beside a NaN is still negative)
        mp = tl.minimum(mp, tl.where(mask & (pv == pv), pv, float("inf")))
        mq = tl.minimum(mq, tl.where(mask & (qv == qv), qv, float("inf")))
    tsp = tl.sum(sp, 0)
    tsq = tl.sum(sq, 0)
    tl.store(STATS + b * 4 + 0, tl.min(mp, 0))
    tl.store(STATS + b * 4 + 1, tsp)
    tl.store(STATS + b * 4 + 2, tl.min(mq, 0))
    tl.store(STATS + b * 4 + 3, tsq)
    ip = 1.0 / tsp
    iq = 1.0 / tsq
    bad = (tsp + tsq) * 0.0  # NaN rule: NaN when a mass is NaN or infinite (also at K = 1)
    cp = tl.sum(tl.zeros((BLOCK,), dtype=dt), 0)  # carried prefixes (scalars)
    cq = cp
    csw = cp
    acc = tl.zeros((BLOCK,), dtype=dt)
    ap = tl.zeros((BLOCK,), dtype=dt)
    aq = tl.zeros((BLOCK,), dtype=dt)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        mask = k < K
        inner = k < K - 1
        pv = tl.load(P + k, mask=mask, other=0.0)
        qv = tl.load(Q + k, mask=mask, other=0.0)
        Pk = (cp + tl.cumsum(pv, 0)) * ip
        Qk = (cq + tl.cumsum(qv, 0)) * iq
        cp += tl.sum(pv, 0)
        cq += tl.sum(qv, 0)
        s0 = tl.load(S + k, mask=inner, other=0.0)
        s1 = tl.load(S + k + 1, mask=inner, other=0.0)
        w = s1 - s0
        dk = Pk - Qk
        acc += tl.where(inner, tl.abs(dk) * w, 0.0)
        if NEED_GRAD:
            sg = tl.where(dk > 0, 1.0, tl.where(dk < 0, -1.0, 0.0)).to(dt)
            sw = tl.where(inner, sg * w, 0.0)
            ap += sw * Pk
            aq += sw * Qk
            # exclusive prefix of sign * width, finished into R_i = total - prefix below
            excl = csw + tl.cumsum(sw, 0) - sw
            tl.store(GP + k, excl, mask=mask)
            csw += tl.sum(sw, 0)
    tl.store(COST + b, tl.sum(acc, 0) + bad)
    if NEED_GRAD:
        a_p = tl.sum(ap, 0) + bad
        a_q = tl.sum(aq, 0) + bad
        for k0 in range(0, K, BLOCK):
            k = k0 + tl.arange(0, BLOCK)
            mask = k < K
            r = csw - tl.load(GP + k, mask=mask, other=0.0)
            tl.store(GP + k, (r - a_p) * ip, mask=mask)
            tl.store(GQ + k, -(r - a_q) * iq, mask=mask)


def histogram_w1(p, q, support, need_grad):
    """Launcher: p, q (B, K), support (1, K) or (B, K) -> (W1 (B,), d/dp, d/dq)."""
    B, K = p.shape
    cost = torch.empty(B, device=p.device, dtype=p.dtype)
    gp = torch.empty_like(p) if need_grad else p.new_zeros(0)
    gq = torch.empty_like(q) if need_grad else q.new_zeros(0)
    stats = torch.empty(B, 4, device=p.device, dtype=p.dtype)
    BLOCK = min(1024, max(16, triton.next_power_of_2(K)))
    if B:
        _hist_w1_kernel[(B,)](p, q, support, cost, gp if need_grad else p, gq if need_grad else q, stats, K,
                              0 if support.shape[0] == 1 else K, NEED_GRAD=need_grad, BLOCK=BLOCK)
    return cost, gp, gq, stats


def sliced_wasserstein_fwd(x, y, a, b, theta, p, need_gx, need_gy, need_ga, need_gb, need_gtheta):
    """The sliced op: projections by matmul, then the batched 1-D kernel above on every row."""
    from ..._ops.wasserstein1d import sliced_via_rows
    return sliced_via_rows(x, y, a, b, theta, p, (need_gx, need_gy, need_ga, need_gb, need_gtheta), wasserstein1d)


def histogram_w1_fwd(p, q, support, need_gp, need_gq):
    cost, gp, gq, stats = histogram_w1(p, q, support, need_gp or need_gq)
    return cost, (gp if need_gp else p.new_zeros(0)), (gq if need_gq else p.new_zeros(0)), stats
