"""Reference (pure torch, float64, small sizes) for the exact assignment / transport ops.

- lsa_solve: linear sum assignment by shortest augmenting paths from zero duals (the
  rectangular form of the Hungarian method: one Dijkstra per row, columns never matched keep
  v = 0). Rows <= columns; a taller matrix is solved transposed. Returns scipy's form: rows
  sorted ascending, one column each.
- emd_solve: the transportation problem by successive shortest paths found with Bellman-Ford on
  the residual network (forward arcs at cost C_ij, reverse arcs at -C_ij where the plan is
  positive), multi-source from every row with supply left. Duals from a last Bellman-Ford run.

Both loop in Python over augmentations: oracles for tests on small problems, not fast paths.
"""
import math

import torch


def _lsa_rows_le_cols(C):
    """C (n, m) float64, n <= m, entries finite or +inf. Returns col_of_row (n,) or raises."""
    n, m = C.shape
    u = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros(m, dtype=torch.float64)
    row_of_col = [-1] * m
    col_of_row = [-1] * n
    for f in range(n):
        dist = torch.full((m,), math.inf, dtype=torch.float64)
        pred = [-1] * m
        done = torch.zeros(m, dtype=torch.bool)
        i, base, sink = f, 0.0, -1
        while True:
            red = base + C[i] - u[i] - v
            better = (red < dist) & ~done
            dist = torch.where(better, red, dist)
            for k in torch.nonzero(better).flatten().tolist():
                pred[k] = i
            cand = torch.where(done, torch.full_like(dist, math.inf), dist)
            mu = float(cand.min())
            if not math.isfinite(mu):
                raise ValueError("cost matrix is infeasible")
            ties = torch.nonzero(cand == mu).flatten().tolist()
            free = [k for k in ties if row_of_col[k] < 0]
            j = free[0] if free else ties[0]
            done[j] = True
            if row_of_col[j] < 0:
                sink = j
                break
            i, base = row_of_col[j], mu
        # duals: rows on the tree and scanned columns move by the path length
        u[f] += mu
        for k in torch.nonzero(done).flatten().tolist():
            if k != sink:
                r = row_of_col[k]
                u[r] += mu - float(dist[k])
                v[k] -= mu - float(dist[k])
        j = sink
        while True:
            i = pred[j]
            row_of_col[j] = i
            nxt = col_of_row[i]
            col_of_row[i] = j
            if i == f:
                break
            j = nxt
    return col_of_row


def _check_entries(C, maximize):
    bad = math.inf if maximize else -math.inf
    if bool(torch.isnan(C).any()) or bool((C == bad).any()):
        raise ValueError("matrix contains invalid numeric entries")


def lsa_solve(C, maximize):
    """C (B, n, m) -> (rows (B, k), cols (B, k)) int64, k = min(n, m)."""
    B, n, m = C.shape
    k = min(n, m)
    rows = torch.empty(B, k, dtype=torch.int64)
    cols = torch.empty(B, k, dtype=torch.int64)
    for b in range(B):
        Cb = C[b].detach().to(torch.float64).cpu()
        _check_entries(Cb, maximize)
        if maximize:
            Cb = -Cb
        if k == 0:
            continue
        if n <= m:
            cr = _lsa_rows_le_cols(Cb)
            rows[b] = torch.arange(n)
            cols[b] = torch.tensor(cr, dtype=torch.int64)
        else:
            rc = _lsa_rows_le_cols(Cb.t().contiguous())  # row chosen for each column
            pairs = sorted((r, c) for c, r in enumerate(rc))
            rows[b] = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
            cols[b] = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return rows.to(C.device), cols.to(C.device)


def _bellman_ford(C, X, src):
    """Distances to rows / columns in the residual network from the rows with src=True."""
    n, m = C.shape
    drow = torch.where(src, torch.zeros(n, dtype=C.dtype), torch.full((n,), math.inf, dtype=C.dtype))
    dcol = torch.full((m,), math.inf, dtype=C.dtype)
    prow = torch.full((m,), -1, dtype=torch.int64)
    pcol = torch.full((n,), -1, dtype=torch.int64)
    flow = X > 0
    for _ in range(n + m + 1):
        cand = drow[:, None] + C
        best, arg = cand.min(0)
        upd_c = best < dcol - 1e-14 * (1 + dcol.abs().nan_to_num(posinf=0))
        dcol = torch.where(upd_c, best, dcol)
        prow = torch.where(upd_c, arg, prow)
        back = torch.where(flow, dcol[None, :] - C, torch.full_like(C, math.inf))
        bestr, argr = back.min(1)
        upd_r = bestr < drow - 1e-14 * (1 + drow.abs().nan_to_num(posinf=0))
        drow = torch.where(upd_r, bestr, drow)
        pcol = torch.where(upd_r, argr, pcol)
        if not bool(upd_c.any()) and not bool(upd_r.any()):
            break
    return drow, dcol, prow, pcol


def _emd_one(a, b, C, max_iter):
    n, m = C.shape
    it = 0
    X = torch.zeros(n, m, dtype=torch.float64)
    sup, dem = a.clone(), b.clone()
    tiny = float(a.sum()) * 1e-14
    for it in range(max_iter):
        src = sup > tiny
        if not bool(src.any()) or not bool((dem > tiny).any()):
            break
        drow, dcol, prow, pcol = _bellman_ford(C, X, src)
        cand = torch.where(dem > tiny, dcol, torch.full_like(dcol, math.inf))
        t = int(cand.argmin())
        if not math.isfinite(float(cand[t])):
            break
        path, j = [], t
        while True:  # (row, col, +1) forward arcs, (row, col, -1) reverse arcs
            i = int(prow[j])
            path.append((i, j, 1))
            if bool(src[i]) and float(drow[i]) == 0.0 and int(pcol[i]) < 0:
                break
            j = int(pcol[i])
            path.append((i, j, -1))
        s = path[-1][0]
        delta = min(float(sup[s]), float(dem[t]))
        for i, j, sg in path:
            if sg < 0:
                delta = min(delta, float(X[i, j]))
        for i, j, sg in path:
            X[i, j] = X[i, j] + sg * delta if sg > 0 or X[i, j] > delta else 0.0
        sup[s] -= delta
        dem[t] -= delta
    src = torch.ones(n, dtype=torch.bool)
    drow, dcol, _, _ = _bellman_ford(C, X, src)
    u, v = -drow, dcol
    return X, float((X * C).sum()), u, v, it


def emd_solve(a, b, M, max_iter=100000):
    """a (B, n), b (B, m), M (B, n, m) -> plan (B, n, m), cost (B,), u (B, n), v (B, m), float64,
    augmentations (B,) int64."""
    B, n, m = M.shape
    dev = M.device
    if not bool(torch.isfinite(M).all()):
        raise ValueError("emd_solve: M contains NaN or infinite entries")
    plan = torch.zeros(B, n, m, dtype=torch.float64)
    cost = torch.zeros(B, dtype=torch.float64)
    u = torch.zeros(B, n, dtype=torch.float64)
    v = torch.zeros(B, m, dtype=torch.float64)
    iters = torch.zeros(B, dtype=torch.int64)
    for k in range(B):
        if n == 0 or m == 0:
            continue
        X, c, uu, vv, it = _emd_one(a[k].detach().double().cpu(), b[k].detach().double().cpu(),
                                    M[k].detach().double().cpu(), max_iter)
        plan[k], cost[k], u[k], v[k], iters[k] = X, c, uu, vv, it
    return plan.to(dev), cost.to(dev), u.to(dev), v.to(dev), iters.to(dev)
