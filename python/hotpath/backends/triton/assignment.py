"""Triton kernel of the assignment family: batched linear assignment by an auction (hotpath::lsa_solve).

One program per problem runs Bertsekas' forward auction with epsilon-scaling, Gauss-Seidel
bidding (one unassigned person bids at a time, its row scanned as one vector over the objects),
prices in float64. The problem is made square without a copy: when n > m the strides are swapped
(persons are then the columns), and the N - k missing persons are virtual rows of benefit 0, so
every object ends assigned and the prices are a dual certificate of the square problem, whose
optimum restricted to the real persons is the optimum of the rectangular one.

Forbidden pairs (+inf, or -inf when maximizing) get a finite penalty benefit F below
lo - (N - 1) * range, so any complete matching of allowed pairs beats any matching that uses
one; a result that still uses a forbidden pair means no such matching exists (or a failure),
and that problem goes to the CPU kernel, which raises the proper ValueError.

Exactness: the kernel ends with a slack sweep, slack_i = max_j (a_ij - p_j) - (a_i,x(i) - p_x(i)),
whose sum is the gap between the dual bound sum_i max_j (a_ij - p_j) + sum_j p_j and the
assignment's value. Integer-valued costs run down to eps = 1/(N + 1), so the gap is < 1 and the
assignment is optimal; other float costs run down to eps ~ scale * 2**-42 / N, and a problem is
accepted when its gap is within that bound (optimal to rounding). Problems that fail the check
(gap too large, forbidden pair used, bid cap hit) are re-solved by the CPU kernel (rare path).
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _benefit(c, SIGN: tl.constexpr, forbid):
    # forbidden entries (the allowed infinity was checked by the launcher) get the penalty value
    a = c.to(tl.float64) * SIGN
    return tl.where(a == float("-inf"), forbid, a)


@triton.jit
def _row_top2(C, i, n_real, n_obj, s_p, s_o, PRICE, forbid, SIGN: tl.constexpr, BLOCK: tl.constexpr):
    """Best value, its object and the second-best value of person i against the prices."""
    offs = tl.arange(0, BLOCK)
    # float64 from the start: loop-carried values must keep one type when compiled
    v1 = tl.full([], float("-inf"), tl.float64)
    v2 = tl.full([], float("-inf"), tl.float64)
    j1 = tl.full([], 0, tl.int32)
    for start in range(0, n_obj, BLOCK):
        o = start + offs
        om = o < n_obj
        c = tl.load(C + i.to(tl.int64) * s_p + o.to(tl.int64) * s_o, mask=om & ((o * 0 + i) < n_real), other=0.0)
        a = _benefit(c, SIGN, forbid)
        p = tl.load(PRICE + o, mask=om, other=0.0)
        v = tl.where(om, a - p, float("-inf"))
        b1 = tl.max(v, axis=0)
        jb = tl.min(tl.where(v == b1, o, 2147483647), axis=0)
        b2 = tl.max(tl.where(o == jb, float("-inf"), v), axis=0)
        better = b1 > v1
        v2 = tl.where(better, tl.maximum(v1, b2), tl.maximum(v2, b1))
        j1 = tl.where(better, jb, j1)
        v1 = tl.where(better, b1, v1)
    return v1, j1, v2


@triton.jit(do_not_specialize=["n_real", "n_obj", "max_bids"])
def _auction_kernel(C, PRICE, OWNER, ASSIGN, QUEUE, EPS0, EPSF, FORBID, SLACK, BAD,
                    n_real, n_obj, s_b, s_p, s_o, max_bids,
                    SIGN: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    C += b * s_b
    PRICE += b * n_obj
    OWNER += b * n_obj
    ASSIGN += b * n_obj
    QUEUE += b * n_obj
    N = n_obj
    offs = tl.arange(0, BLOCK)
    eps = tl.load(EPS0 + b)
    eps_final = tl.load(EPSF + b)
    forbid = tl.load(FORBID + b)
    # scalar tensors, not Python ints: they are reassigned inside data-dependent branches
    bad = tl.zeros([], dtype=tl.int32)
    go = tl.full([], 1, tl.int32)
    while go > 0:
        # a phase: every person unassigned, prices kept from the previous (larger-eps) phase
        for start in range(0, N, BLOCK):
            o = start + offs
            om = o < N
            tl.store(OWNER + o, tl.full([BLOCK], -1, tl.int32), mask=om)
            tl.store(ASSIGN + o, tl.full([BLOCK], -1, tl.int32), mask=om)
            tl.store(QUEUE + o, o.to(tl.int32), mask=om)
        tl.debug_barrier()
        head = tl.zeros([], dtype=tl.int32)
        count = tl.zeros([], dtype=tl.int32) + N
        bids = tl.zeros([], dtype=tl.int32)
        while (count > 0) & (bids < max_bids):
            i = tl.load(QUEUE + head)
            head = (head + 1) % N
            count -= 1
            v1, j1, v2 = _row_top2(C, i, n_real, N, s_p, s_o, PRICE, forbid, SIGN, BLOCK)
            v2 = tl.where(v2 == float("-inf"), v1, v2)  # a single object: raise by eps only
            p = tl.load(PRICE + j1)
            old = tl.load(OWNER + j1)
            tl.debug_barrier()
            tl.store(PRICE + j1, p + (v1 - v2) + eps)
            tl.store(OWNER + j1, i)
            tl.store(ASSIGN + i, j1)
            if old >= 0:
                tl.store(ASSIGN + old, -1)
                tl.store(QUEUE + (head + count) % N, old)
                count += 1
            tl.debug_barrier()
            bids += 1
        if count > 0:
            bad = tl.full([], 1, tl.int32)
            go = tl.zeros([], dtype=tl.int32)
        elif eps <= eps_final:
            go = tl.zeros([], dtype=tl.int32)
        else:
            eps = tl.maximum(eps * 0.125, eps_final)
    # certificate: slack of each person against the final prices; forbidden pairs used
    total = tl.zeros([], dtype=tl.float64)
    used_forbidden = tl.zeros([], dtype=tl.int32)
    if bad == 0:
        for i0 in range(0, N):
            i = (i0 + tl.zeros([], dtype=tl.int32)).to(tl.int32)
            v1, j1, v2 = _row_top2(C, i, n_real, N, s_p, s_o, PRICE, forbid, SIGN, BLOCK)
            j = tl.load(ASSIGN + i)
            if i < n_real:
                a = _benefit(tl.load(C + i.to(tl.int64) * s_p + j.to(tl.int64) * s_o), SIGN, forbid)
            else:
                a = tl.zeros([], dtype=tl.float64)
            total += v1 - (a - tl.load(PRICE + j))
            if a == forbid:
                if i < n_real:
                    used_forbidden = tl.full([], 1, tl.int32)
    tl.store(SLACK + b, total)
    tl.store(BAD + b, tl.maximum(bad, used_forbidden))


def _cpu_solve(C, maximize):
    from ..._ext import load_extension
    load_extension()
    return torch.ops.hotpath.lsa_solve(C.cpu().contiguous(), maximize)


def lsa_solve(C, maximize):
    """C (B, n, m) float32/float64 -> (rows (B, k), cols (B, k)) int64, k = min(n, m), rows ascending."""
    if C.dim() != 3:
        raise ValueError(f"C must be (B, n, m), got shape {tuple(C.shape)}")
    if C.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"C must be float32 or float64, got {C.dtype}")
    B, n, m = C.shape
    k = min(n, m)
    dev = C.device
    if B == 0 or k == 0:
        e = torch.empty(B, k, dtype=torch.int64, device=dev)
        return e, e.clone()
    bad_inf = math.inf if maximize else -math.inf
    if bool(torch.isnan(C).any()) or bool((C == bad_inf).any()):
        out = _cpu_solve(C, maximize)  # raises the CPU kernel's ValueError
        return out[0].to(dev), out[1].to(dev)
    sign = 1.0 if maximize else -1.0
    transposed = n > m
    N = max(n, m)                       # objects; persons n_real = k plus N - k virtual rows
    Ct = C.transpose(1, 2) if transposed else C
    s_b, s_p, s_o = C.stride(0), Ct.stride(1), Ct.stride(2)

    # per-problem bounds of the allowed benefits (0 included when virtual rows exist)
    allowed = torch.isfinite(C)
    lo = torch.where(allowed, C, math.inf).amin((1, 2)).double()
    hi = torch.where(allowed, C, -math.inf).amax((1, 2)).double()
    if maximize:
        a_lo, a_hi = lo, hi
    else:
        a_lo, a_hi = -hi, -lo
    if N > k:
        a_lo, a_hi = a_lo.clamp(max=0.0), a_hi.clamp(min=0.0)
    no_allowed = ~torch.isfinite(a_lo)
    a_lo = torch.where(no_allowed, 0.0, a_lo)
    a_hi = torch.where(no_allowed, 0.0, a_hi)
    rng = a_hi - a_lo
    rng1 = torch.where(rng > 0, rng, torch.ones_like(rng))
    has_forbid = ~allowed.all(2).all(1)
    forbid = a_lo - (N + 1) * rng1
    a_min = torch.where(has_forbid, forbid, a_lo)
    span = a_hi - a_min
    scale = torch.maximum(a_hi.abs(), a_min.abs()).clamp(min=1e-300)
    integer = (torch.where(allowed, C, 0.0) == torch.where(allowed, C, 0.0).round()).all(2).all(1)
    integer &= scale < 2.0 ** 40
    eps_int = torch.full_like(scale, 1.0 / (N + 1))
    eps_flt = torch.maximum(scale * 2.0 ** -42 / N, scale * 2.0 ** -48)
    eps_final = torch.where(integer, eps_int, eps_flt)
    eps0 = torch.maximum(span / 8.0, eps_final)
    # integer costs: a gap below 1 proves optimality (N * eps_final = N / (N + 1) < 1)
    tol = torch.where(integer, torch.full_like(scale, 1.0 - 0.5 / (N + 1)), N * eps_flt * 1.01 + N * scale * 2.0 ** -50)

    price = torch.zeros(B, N, dtype=torch.float64, device=dev)
    owner = torch.empty(B, N, dtype=torch.int32, device=dev)
    assign = torch.empty(B, N, dtype=torch.int32, device=dev)
    queue = torch.empty(B, N, dtype=torch.int32, device=dev)
    slack = torch.empty(B, dtype=torch.float64, device=dev)
    bad = torch.empty(B, dtype=torch.int32, device=dev)
    BLOCK = min(triton.next_power_of_2(N), 1024)
    max_bids = min(200 * N * N + 10000, 2 ** 31 - 1)  # a safety cap, far above the eps-scaling bound
    _auction_kernel[(B,)](Ct, price, owner, assign, queue, eps0.to(dev), eps_final.to(dev), forbid.to(dev),
                          slack, bad, k, N, s_b, s_p, s_o, max_bids,
                          SIGN=sign, BLOCK=BLOCK, num_warps=4)

    x = assign[:, :k].long()
    idx = torch.arange(k, device=dev).expand(B, k)
    if transposed:
        rows, order = x.sort(1)
        cols = torch.gather(idx, 1, order)
    else:
        rows, cols = idx.clone(), x
    fail = (bad != 0) | ~(slack <= tol.to(dev)) | no_allowed.to(dev)
    if bool(fail.any()):
        fb = torch.nonzero(fail).flatten()
        r2, c2 = _cpu_solve(C[fb], maximize)  # the exact path; raises for infeasible problems
        rows[fb], cols[fb] = r2.to(dev), c2.to(dev)
    return rows.contiguous(), cols.contiguous()
