"""Exact assignment and exact optimal transport (scipy / POT meanings), batched.

- linear_sum_assignment(C, maximize=False): scipy.optimize.linear_sum_assignment, plus a batched
  (B, n, m) form returning (B, k) index tensors.
- emd(a, b, M) / emd2(a, b, M): POT's ot.emd (plan) / ot.emd2 (cost, differentiable).
- minibatch_coupling(x0, x1, ...): index pairs drawn from the exact (or entropic) plan between
  two minibatches, as torchcfm's OTPlanSampler draws them.
- balanced_assignment(scores, capacity): each row to one column, at most `capacity` rows per
  column, maximizing the total score (exact, or a Sinkhorn approximation).

dtype rule (all four): float64 stays float64; float32 costs are read as float32 and solved in
float64 arithmetic (the exact optimum of the float32 matrix, no float64 copy); float16 / bfloat16
are converted to float32 first; integer and bool costs are converted to float64 (exact below
2**53). Tensors on another device are solved on the CPU kernels and the results moved back.
"""
import math
import numbers
import warnings

import numpy as np
import torch

from .. import backends
from .._ops import assignment as ops

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _to_tensor(name, x):
    """(tensor, came_from_numpy). numpy arrays and nested lists go through np.asarray."""
    if isinstance(x, torch.Tensor):
        return x, False
    if x is None:
        raise TypeError(f"{name} must be a tensor or an array, got None")
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr)), True


def _solve_dtype(name, t):
    """The dtype a cost tensor is handed to the kernels in (see the module docstring)."""
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    if t.dtype in _INT_DTYPES:
        return torch.float64
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if t.dtype in (torch.float32, torch.float64):
        return t.dtype
    raise TypeError(f"{name} must be a real floating-point or integer tensor, got {t.dtype}")


def _on_cpu(t):
    # the C++ kernels are the fast path for every device: the solvers are sequential per problem
    return t if t.device.type == "cpu" else t.cpu()


def _clean_error(exc, prefix):
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValueError(f"{prefix}: {msg}")


# ------------------------------------------------------------------------ linear sum assignment
def linear_sum_assignment(C, maximize=False, *, backend="auto"):
    """scipy.optimize.linear_sum_assignment for a cost matrix C (n, m), or a batch (B, n, m).

    Returns (row_ind, col_ind): k = min(n, m) pairs, rows ascending, minimizing (or with
    maximize=True maximizing) sum C[row_ind, col_ind]. 2-D input gives (k,) arrays, batched input
    (B, k) tensors. numpy (or list) input gives numpy output, as scipy; tensors give int64 tensors
    on C's device. +inf marks a forbidden pair (-inf when maximizing); NaN, the other infinity, or
    a problem with no complete matching raise ValueError. Ties between equal-cost optima may be
    broken differently from scipy; the optimal cost is the same.
    """
    backends.check(backend)
    T, from_numpy = _to_tensor("C", C)
    if T.dim() not in (2, 3):
        raise ValueError(f"C must be a 2-D cost matrix (n, m) or a batch (B, n, m), got shape {tuple(T.shape)}")
    if not isinstance(maximize, (bool, np.bool_, numbers.Integral)):
        raise TypeError(f"maximize must be a bool, got {type(maximize).__name__}")
    dtype = _solve_dtype("C", T)
    dev = T.device
    batched = T.dim() == 3
    Cb = (T if batched else T[None]).detach()
    if not (Cb.device.type == "cuda" and backends.triton_available()):
        Cb = _on_cpu(Cb)  # CUDA tensors take the batched Triton auction; others the C++ solver
    Cb = Cb.to(dtype).contiguous()
    try:
        with backends.prefer(backend):
            rows, cols = ops.lsa_solve(Cb, bool(maximize))
    except ValueError as exc:
        raise _clean_error(exc, "C") from None
    if not batched:
        rows, cols = rows[0], cols[0]
    if from_numpy:
        return rows.numpy(), cols.numpy()
    return rows.to(dev), cols.to(dev)


# ------------------------------------------------------------------------------------ emd
_MASS_DECIMAL_TOL = 1.5e-6  # POT: np.testing.assert_almost_equal(a.sum(), b.sum(), decimal=6)


def _is_empty(w):
    if w is None:
        return True
    if isinstance(w, torch.Tensor):
        return w.numel() == 0
    if isinstance(w, np.ndarray):
        return w.size == 0
    return isinstance(w, (list, tuple)) and len(w) == 0


def _weights(name, w, B, k, batched, dev):
    """(B, k) weights (uniform when w is None / empty, as POT), checked."""
    if _is_empty(w):
        return torch.full((B, k), 1.0 / max(k, 1), dtype=torch.float64, device=dev), False
    t, _ = _to_tensor(name, w)
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    if t.device != dev:
        raise ValueError(f"{name} must be on the same device as M ({dev}), got {t.device}")
    if t.dim() == 1:
        if t.shape[0] != k:
            raise ValueError(f"{name} must have {k} entries to match M, got shape {tuple(t.shape)}")
        t = t[None].expand(B, k)
    elif t.dim() == 2 and batched:
        if tuple(t.shape) != (B, k):
            raise ValueError(f"{name} must have shape ({k},) or ({B}, {k}) to match M, got {tuple(t.shape)}")
    else:
        raise ValueError(f"{name} must be 1-D (or 2-D (B, {k}) with a batched M), got shape {tuple(t.shape)}")
    td = t.detach()
    if not bool(torch.isfinite(td).all()):
        raise ValueError(f"{name} must be finite")
    if bool((td < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    return t, True


def _emd_prepare(a, b, M):
    T, from_numpy = _to_tensor("M", M)
    if T.dim() not in (2, 3):
        raise ValueError(f"M must be a 2-D cost matrix (n, m) or a batch (B, n, m), got shape {tuple(T.shape)}")
    dtype = _solve_dtype("M", T)
    batched = T.dim() == 3
    Mb = (T if batched else T[None])
    B, n, m = Mb.shape
    if n == 0 or m == 0:
        raise ValueError(f"M must not be empty, got shape {tuple(T.shape)}")
    dev = T.device
    A, _ = _weights("a", a, B, n, batched, dev)
    Bw, _ = _weights("b", b, B, m, batched, dev)
    sa, sb = A.detach().double().sum(1), Bw.detach().double().sum(1)
    if bool((sa <= 0).any()) or bool((sb <= 0).any()):
        raise ValueError("a and b must have a positive total mass")
    gap = (sa - sb).abs()
    if bool((gap >= _MASS_DECIMAL_TOL).any()):
        k = int(gap.argmax())
        raise ValueError(f"a and b must have the same total mass (POT's rule: |sum a - sum b| < 1.5e-6), "
                         f"got {float(sa[k]):.9g} and {float(sb[k]):.9g}" + (f" in problem {k}" if batched else ""))
    out_dtype = torch.float64 if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
                                     for t in (A, Bw)) or dtype == torch.float64 else torch.float32
    return Mb, A, Bw, dtype, out_dtype, batched, from_numpy, dev


def _emd_run(Mb, A, Bw, dtype, numItermax):
    """The kernel on CPU float tensors: returns plan, cost, u, v, n_iter (float64, CPU)."""
    Mk = _on_cpu(Mb.detach()).to(dtype).contiguous()
    Ak = _on_cpu(A.detach()).double().contiguous()
    Bk = _on_cpu(Bw.detach()).double()
    Bk = (Bk * (Ak.sum(1) / Bk.sum(1))[:, None]).contiguous()  # POT: b scaled to a's mass
    try:
        return ops.emd_solve(Ak, Bk, Mk, int(numItermax))
    except ValueError as exc:
        raise _clean_error(exc, "M") from None


def _check_iter(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _warn_iter(n_iter, numItermax):
    if bool((n_iter >= numItermax).any()):
        warnings.warn("numItermax reached before optimality. Try to increase numItermax.", UserWarning, stacklevel=3)


def _center(u, v, A, Bw):
    """POT's center_ot_dual: (u + c, v - c) with sum_i a_i u_i = sum_j b_j v_j."""
    c = ((Bw * v).sum(1) - (A * u).sum(1)) / (A.sum(1) + Bw.sum(1))
    return u + c[:, None], v - c[:, None]


def emd(a, b, M, numItermax=100000, log=False, center_dual=True, *, backend="auto"):
    """POT's ot.emd: the exact optimal transport plan between a (n,) and b (m,) for the cost M (n, m).

    a or b None / empty: uniform. Batched: M (B, n, m) with a (n,) or (B, n), b likewise, plan
    (B, n, m). The masses must agree as POT requires (|sum a - sum b| < 1.5e-6; b is then scaled
    to a's mass). M must be finite. Solved by a network simplex in float64. log=True also returns
    POT's dict (cost, u, v, warning, result_code), duals centered as POT's center_dual.
    numpy in -> numpy out. The plan carries no gradient (use emd2 for a differentiable cost).
    """
    backends.check(backend)
    numItermax = _check_iter("numItermax", numItermax)
    Mb, A, Bw, dtype, out_dtype, batched, from_numpy, dev = _emd_prepare(a, b, M)
    with backends.prefer(backend):
        plan, cost, u, v, n_iter = _emd_run(Mb, A, Bw, dtype, numItermax)
    _warn_iter(n_iter, numItermax)
    G = plan.to(out_dtype)
    G = G if batched else G[0]
    G = G.numpy() if from_numpy else G.to(dev)
    if not log:
        return G
    if center_dual:
        u, v = _center(u, v, A.detach().double().cpu(), Bw.detach().double().cpu())
    res = dict(cost=cost if batched else cost[0], u=u if batched else u[0], v=v if batched else v[0])
    res = {k: (t.numpy() if from_numpy else t.to(device=dev, dtype=out_dtype)) for k, t in res.items()}
    if from_numpy and not batched:
        res["cost"] = float(res["cost"])
    hit = bool((n_iter >= numItermax).any())
    res["warning"] = "numItermax reached before optimality. Try to increase numItermax." if hit else None
    res["result_code"] = 3 if hit else 1
    return G, res


class _Emd2Fn(backends.Function):
    """cost (B,) from the solved problem; the inputs a, b, M only carry the gradients."""

    @staticmethod
    def forward(ctx, A, Bw, Mb, cost, plan, gu, gv):
        ctx.save_for_backward(plan, gu, gv)
        ctx.dtypes = (A.dtype, Bw.dtype, Mb.dtype)
        return cost

    @staticmethod
    def backward(ctx, g):
        plan, gu, gv = ctx.saved_tensors
        da, db, dm = ctx.dtypes
        g = g.to(plan.dtype)
        ga = (g[:, None] * gu).to(da) if ctx.needs_input_grad[0] else None
        gb = (g[:, None] * gv).to(db) if ctx.needs_input_grad[1] else None
        gm = (g[:, None, None] * plan).to(dm) if ctx.needs_input_grad[2] else None
        return ga, gb, gm, None, None, None, None


def emd2(a, b, M, numItermax=100000, log=False, return_matrix=False, center_dual=True, *, backend="auto"):
    """POT's ot.emd2: the exact transport cost <plan, M> (a scalar; (B,) when batched).

    Differentiable as POT's: d/dM = plan, d/da = u - mean(u), d/db = v - mean(v) (the dual
    potentials). Arguments and checks as emd; log=True returns (cost, dict) with the dict of emd,
    plus the plan under "G" when return_matrix=True.
    """
    backends.check(backend)
    numItermax = _check_iter("numItermax", numItermax)
    Mb, A, Bw, dtype, out_dtype, batched, from_numpy, dev = _emd_prepare(a, b, M)
    with backends.prefer(backend):
        plan, cost, u, v, n_iter = _emd_run(Mb, A, Bw, dtype, numItermax)
    _warn_iter(n_iter, numItermax)
    # POT's gradients: d/dM = plan, d/da = u - mean(u), d/db = v - mean(v)
    gu, gv = u - u.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    cost_t = cost.to(device=dev, dtype=out_dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (A, Bw, Mb)):
        cost_t = _Emd2Fn.apply(A, Bw, Mb, cost_t, plan.to(device=dev, dtype=out_dtype), gu.to(device=dev, dtype=out_dtype),
                               gv.to(device=dev, dtype=out_dtype))
    out = cost_t if batched else cost_t[0]
    if from_numpy:
        out = out.detach().numpy() if batched else float(out)
    if not (log or return_matrix):
        return out
    if center_dual:
        u, v = _center(u, v, A.detach().double().cpu(), Bw.detach().double().cpu())
    res = dict(cost=cost if batched else cost[0], u=u if batched else u[0], v=v if batched else v[0])
    res = {k: (t.numpy() if from_numpy else t.to(device=dev, dtype=out_dtype)) for k, t in res.items()}
    if from_numpy and not batched:
        res["cost"] = float(res["cost"])
    hit = bool((n_iter >= numItermax).any())
    res["warning"] = "numItermax reached before optimality. Try to increase numItermax." if hit else None
    res["result_code"] = 3 if hit else 1
    if return_matrix:
        G = plan.to(out_dtype)
        G = G if batched else G[0]
        res["G"] = G.numpy() if from_numpy else G.to(dev)
    return out, res


# ---------------------------------------------------------------------------- minibatch coupling
def _points(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be (n, d) or a batch (B, n, d) (flatten images first: x.flatten(1)), "
                         f"got shape {tuple(x.shape)}")
    return x


def _sqdist(X0, X1):
    """|x_i - y_j|^2 (B, n, m) in float32 or float64, as torch.cdist's matrix-multiply path (and so
    torchcfm's torch.cdist(x0, x1) ** 2) computes it: |x|^2 + |y|^2 - 2 <x, y>, clamped at 0.

    Few torch ops on purpose: each parallel op is a thread barrier, and on a busy machine
    barriers, not flops, dominated (the difference kernel ot_cost_matrix measured 30x slower
    than this GEMM at n = m = 512, d = 784).
    """
    dt = torch.float64 if torch.float64 in (X0.dtype, X1.dtype) else torch.float32
    X0, X1 = X0.detach().to(dt), X1.detach().to(dt)
    C = torch.baddbmm(torch.linalg.vecdot(X1, X1)[:, None, :], X0, X1.transpose(1, 2), alpha=-2.0)
    C += torch.linalg.vecdot(X0, X0)[:, :, None]
    return C.clamp_min_(0.0)


def minibatch_coupling(x0, x1, method="exact", reg=0.05, replace=True, *, batch_size=None, normalize_cost=False,
                       numItermax=1000, generator=None, backend="auto"):
    """Index pairs (i, j) drawn from the optimal transport plan between two minibatches.

    torchcfm's OTPlanSampler meaning: uniform weights on x0 (n, d) and x1 (m, d), cost
    |x0_i - x1_j|^2 (normalized by its max with normalize_cost=True), the plan of the exact
    problem (method="exact") or of POT's entropic ot.sinkhorn with regularization reg
    (method="sinkhorn"), then batch_size (default n) draws of cells (i, j) with probability
    plan_ij / sum(plan), with or without replacement. Batched: x0 (B, n, d), x1 (B, m, d), one
    independent coupling per minibatch, indices (B, batch_size). Returns int64 tensors (i, j)
    on x0's device; use x0[i], x1[j]. Images must be flattened to (n, d) first.

    For n == m the exact plan is a permutation: it is found by linear_sum_assignment and every
    one of its n cells has probability 1/n (the distribution POT's plan gives).
    """
    backends.check(backend)
    _points("x0", x0)
    _points("x1", x1)
    if x0.dim() != x1.dim():
        raise ValueError(f"x0 and x1 must both be 2-D or both 3-D, got shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
    if x0.device != x1.device:
        raise ValueError(f"x0 and x1 must be on one device, got {x0.device} and {x1.device}")
    batched = x0.dim() == 3
    X0, X1 = (x0, x1) if batched else (x0[None], x1[None])
    if X0.shape[0] != X1.shape[0] or X0.shape[2] != X1.shape[2]:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must agree in batch size and dimension")
    B, n, m = X0.shape[0], X0.shape[1], X1.shape[1]
    if n == 0 or m == 0:
        raise ValueError(f"x0 and x1 must not be empty, got shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
    if method not in ("exact", "sinkhorn"):
        raise ValueError(f"method must be 'exact' or 'sinkhorn', got {method!r}")
    if batch_size is None:
        batch_size = n
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative integer, got {batch_size!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    dev = x0.device
    gdev = generator.device if generator is not None else torch.device("cpu")
    with backends.prefer(backend):
        if method == "exact" and n == m:
            # a permutation uses every row and column once, so the terms |x_i|^2 and |y_j|^2 of
            # |x_i - y_j|^2 shift every permutation's cost equally: the optimal one maximizes
            # sum <x_i, y_perm(i)>, one GEMM (normalizing by a constant changes nothing either)
            X0c, X1c = _on_cpu(X0).detach(), _on_cpu(X1).detach()
            dt = torch.float64 if torch.float64 in (X0c.dtype, X1c.dtype) else torch.float32
            G = torch.bmm(X0c.to(dt), X1c.to(dt).transpose(1, 2))
            rows, perm = ops.lsa_solve(G, True)
            if replace:
                pick = torch.randint(n, (B, batch_size), generator=generator, device=gdev)
            else:
                if batch_size > n:
                    raise ValueError(f"batch_size ({batch_size}) exceeds the {n} cells of the exact plan "
                                     "(replace=False)")
                pick = torch.rand(B, n, generator=generator, device=gdev).argsort(1)[:, :batch_size]
            pick = pick.to(perm.device)
            i, j = pick.to(dev), torch.gather(perm, 1, pick).to(dev)
            return (i, j) if batched else (i[0], j[0])
        C = _sqdist(_on_cpu(X0), _on_cpu(X1))
        if normalize_cost:
            C = C / C.amax((1, 2), keepdim=True).clamp_min(torch.finfo(C.dtype).tiny)
        if method == "exact":
            w0 = torch.full((B, n), 1.0 / n, dtype=torch.float64)
            w1 = torch.full((B, m), 1.0 / m, dtype=torch.float64)
            plan, _, _, _, n_iter = _emd_run(C, w0, w1, C.dtype, 100000)
            _warn_iter(n_iter, 100000)
        else:
            r = float(reg)
            if not (math.isfinite(r) and r > 0):
                raise ValueError(f"reg must be a positive finite number, got {reg!r}")
            from .sinkhorn_dense import sinkhorn_plan
            with torch.no_grad():
                plan = sinkhorn_plan(None, None, C, r, numItermax=numItermax, warn=False)
        flat = plan.reshape(B, n * m).double()
        flat = flat / flat.sum(1, keepdim=True)
        if not replace and batch_size > int((flat > 0).sum(1).min()):
            raise ValueError(f"batch_size ({batch_size}) exceeds the number of nonzero cells of the plan (replace=False)")
        idx = torch.multinomial(flat.to(gdev), batch_size, replacement=bool(replace), generator=generator)
    i, j = (idx // m).to(dev), (idx % m).to(dev)
    return (i, j) if batched else (i[0], j[0])


# ------------------------------------------------------------------------------- balanced routing
def balanced_assignment(scores, capacity, method="exact", *, reg=0.05, numItermax=200, backend="auto"):
    """Each row (token) to one column (expert), each column taking at most `capacity` rows,
    maximizing the total score sum_i scores[i, col[i]].

    scores (n, e) or a batch (B, n, e); capacity a non-negative integer with capacity * e >= n.
    Returns col (n,) / (B, n) int64. method="exact": the optimum, as a transportation problem
    (rows ship 1, columns take up to capacity, a zero-score dummy row takes the slack) solved by
    the network simplex (integral, so every row gets one column); no capacity-replicated copy.
    method="sinkhorn": the entropic plan at temperature reg (log-domain Sinkhorn, numItermax
    iterations) rounded to a feasible assignment (rows take their most likely column, columns
    over capacity keep their most likely rows, the rest retry among open columns): approximate.
    """
    backends.check(backend)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() not in (2, 3):
        raise ValueError(f"scores must be (n, e) or a batch (B, n, e), got shape {tuple(scores.shape)}")
    dtype = _solve_dtype("scores", scores)
    if isinstance(capacity, torch.Tensor) and capacity.numel() == 1 and not capacity.is_floating_point():
        capacity = int(capacity)
    if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral):
        raise TypeError(f"capacity must be an integer, got {type(capacity).__name__}")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    if method not in ("exact", "sinkhorn"):
        raise ValueError(f"method must be 'exact' or 'sinkhorn', got {method!r}")
    batched = scores.dim() == 3
    S = (scores if batched else scores[None]).detach()
    B, n, e = S.shape
    if n == 0:
        out = torch.empty(B, 0, dtype=torch.int64, device=scores.device)
        return out if batched else out[0]
    if e == 0 or capacity * e < n:
        raise ValueError(f"capacity * columns must be >= rows (infeasible): capacity={capacity}, "
                         f"columns={e}, rows={n}")
    dev = scores.device
    S = _on_cpu(S).to(dtype)
    if not bool(torch.isfinite(S).all()):
        raise ValueError("scores must be finite")
    cap = min(int(capacity), n)  # a column never takes more than all rows
    with backends.prefer(backend):
        if method == "exact":
            slack = cap * e - n
            M = -S.double() if slack == 0 else torch.cat([-S.double(), S.new_zeros(B, 1, e, dtype=torch.float64)], 1)
            a = torch.ones(B, M.shape[1], dtype=torch.float64)
            if slack:
                a[:, n] = float(slack)
            b = torch.full((B, e), float(cap), dtype=torch.float64)
            plan = ops.emd_solve(a, b, M.contiguous(), 10 ** 9)[0]
            col = plan[:, :n].argmax(2)
        else:
            col = _sinkhorn_route(S, cap, float(reg), _check_iter("numItermax", numItermax))
    col = col.to(dev)
    return col if batched else col[0]


def _sinkhorn_route(S, cap, eps, n_iter):
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"reg must be a positive finite number, got {eps!r}")
    B, n, e = S.shape
    S = S.double()
    slack = cap * e - n
    # rows ship 1 each, columns take cap each; a dummy row (score 0) ships the slack
    logits = torch.cat([S, S.new_zeros(B, 1, e)], 1) / eps if slack else S / eps
    log_a = torch.zeros(B, logits.shape[1], dtype=S.dtype)
    if slack:
        log_a[:, n] = math.log(slack)
    log_b = torch.full((B, e), math.log(cap), dtype=S.dtype)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iter):
        f = log_a - torch.logsumexp(logits + g[:, None, :], 2)
        g = log_b - torch.logsumexp(logits + f[:, :, None], 1)
    logp = (logits + f[:, :, None] + g[:, None, :])[:, :n]
    # rounding: rows take their most likely open column; overfull columns keep their most likely
    # rows; the others retry with that column closed (at most e rounds)
    col = torch.full((B, n), -1, dtype=torch.int64)
    load = torch.zeros(B, e, dtype=torch.int64)
    closed = torch.zeros(B, e, dtype=torch.bool)
    for _ in range(e + 1):
        todo = col < 0
        if not bool(todo.any()):
            break
        lp = logp.masked_fill(closed[:, None, :], -math.inf)
        want = lp.argmax(2)
        conf = lp.gather(2, want[:, :, None])[:, :, 0]
        for bb in range(B):
            rows = torch.nonzero(todo[bb]).flatten()
            if rows.numel() == 0:
                continue
            w, c = want[bb, rows], conf[bb, rows]
            order = torch.argsort(c, descending=True, stable=True)
            rows, w = rows[order], w[order]
            # rank of each row among the rows wanting the same column, most confident first
            o2 = torch.argsort(w, stable=True)
            ws = w[o2]
            first = torch.searchsorted(ws, ws)
            rank = torch.empty_like(o2)
            rank[o2] = torch.arange(ws.numel()) - first
            room = cap - load[bb]
            ok = rank < room[w]
            col[bb, rows[ok]] = w[ok]
            load[bb] += torch.bincount(w[ok], minlength=e)
            closed[bb] = load[bb] >= cap
    return col
