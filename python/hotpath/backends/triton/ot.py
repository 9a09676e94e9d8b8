"""Triton kernels of the optimal transport family.

softmin_dense: f_i = -eps * LSE_j[h_j - C_ij / eps] over the rows (dim=2) or the columns (dim=1,
    the same kernel on transposed strides) of a dense (B, n, m) cost; online max / sum in base 2
    over column tiles, one program per (problem, row tile).
softmin_points: the same over point clouds with C = |x - y| (p=1) or |x - y|^2 / 2 (p=2),
    computed on the fly (never stored), plus U_i = sum_j S_ij dC_ij/dx_i for the gradient.
sinkhorn_alternating: POT-order log-domain Sinkhorn on a dense cost. Each iteration is two
    launches of _sinkhorn_half_kernel (g from f over the columns, then f from g over the rows),
    which build h = log-weights + potential / eps on the fly and skip converged problems through
    a device-side `active` flag; the marginal error is formed on device every check_every
    iterations and read by the host only then (no host sync in between). On a GPU the
    check_every iterations and their check are captured once into a CUDA graph and replayed:
    at POT's sizes (2000 x 2000) a half-iteration's work is a few microseconds, less than
    launching it from Python, so the launches, not the kernels, would set the time.
sinkhorn_symmetric: GeomLoss's symmetric loop (epsilon schedule, debias) for many small dense
    problems: one launch, one program per problem holding its cost tiles in registers and running
    every iteration, stopping on its own at tol.
"""
import math
import os
import warnings

import torch
import triton
import triton.language as tl

from .pairwise import LOG2E, _scal, split
from .target import interpreting

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _softmin_dense_kernel(C, H, OUT, n, m, s_cb, s_cr, s_cc, s_hb, s_ob, i_hi, i_lo, e_hi, e_lo,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT = -eps ln2 * LSE2_j[h_j log2(e) - C_ij log2(e) / eps] (i_* carry log2(e) / eps)."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
    inv2 = _scal(i_hi, i_lo, dt)
    neg_eps = _scal(e_hi, e_lo, dt)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        c = tl.load(C + pb * s_cb + rows[:, None] * s_cr + cols[None, :] * s_cc,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(dt)
        h = tl.load(H + pb * s_hb + cols, mask=cmask, other=float("-inf")).to(dt) * _LOG2E
        s = tl.where(cmask[None, :], h[None, :] - c * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        sm = sm * tl.math.exp2(mx - safe) + tl.sum(tl.math.exp2(s - safe[:, None]), 1)
        mx = new
    empty = sm == 0
    lse = tl.where(empty, float("-inf"), (mx + tl.log2(tl.where(empty, 1.0, sm))) * _LN2)
    tl.store(OUT + pb * s_ob + rows, neg_eps * lse, mask=rmask)


def _dense_blocks(C):
    if interpreting():
        return 16, 16, {}
    # 64 x 128 tiles of C: the loop is bandwidth-bound, nothing is staged in shared memory
    return 64, 128, {"num_warps": 8}


def softmin_dense(C, h, eps, dim):
    B, n, m = C.shape
    C = C.contiguous()
    h = h.contiguous()
    if dim == 2:
        R, M, sr, sc = n, m, C.stride(1), C.stride(2)
    else:  # columns: the same kernel on the transposed view
        R, M, sr, sc = m, n, C.stride(2), C.stride(1)
    out = torch.empty(B, R, dtype=C.dtype, device=C.device)
    BR, BC, opts = _dense_blocks(C)
    if R > 0 and B > 0:
        i_hi, i_lo = split(LOG2E / eps)
        e_hi, e_lo = split(-eps)
        _softmin_dense_kernel[(B, triton.cdiv(R, BR))](C, h, out, R, M, C.stride(0), sr, sc, h.stride(0),
                                                       out.stride(0), i_hi, i_lo, e_hi, e_lo,
                                                       BLOCK_R=BR, BLOCK_C=BC, **opts)
    return out


@triton.jit
def _softmin_points_kernel(X, Y, H, F, U, n, m, d, i_hi, i_lo, e_hi, e_lo,
                           P: tl.constexpr, WANT: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    ks = tl.arange(0, BLOCK_D)
    kmask = ks < d
    x = tl.load(X + pb * n * d + rows[:, None] * d + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
    dt = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    x = x.to(dt)
    inv2 = _scal(i_hi, i_lo, dt)   # log2(e) / eps
    neg_eps = _scal(e_hi, e_lo, dt)
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    sw = tl.zeros((BLOCK_R,), dt)
    swy = tl.zeros((BLOCK_R, BLOCK_D), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        y = tl.load(Y + pb * m * d + cols[:, None] * d + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0).to(dt)
        diff = x[:, None, :] - y[None, :, :]                      # (R, C, D): from differences, exact
        d2 = tl.sum(diff * diff, 2)
        if P == 1:
            cost = tl.sqrt(d2)
        else:
            cost = 0.5 * d2
        h = tl.load(H + pb * m + cols, mask=cmask, other=float("-inf")).to(dt) * _LOG2E
        s = tl.where(cmask[None, :], h[None, :] - cost * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        alpha = tl.math.exp2(mx - safe)
        e = tl.math.exp2(s - safe[:, None])
        sm = sm * alpha + tl.sum(e, 1)
        if WANT:
            if P == 1:
                w = tl.where(cost > 0, e / tl.where(cost > 0, cost, 1.0), 0.0)
            else:
                w = e
            sw = sw * alpha + tl.sum(w, 1)
            swy = swy * alpha[:, None] + tl.sum(w[:, :, None] * y[None, :, :], 1)
        mx = new
    empty = sm == 0
    lse = tl.where(empty, float("-inf"), (mx + tl.log2(tl.where(empty, 1.0, sm))) * _LN2)
    tl.store(F + pb * n + rows, neg_eps * lse, mask=rmask)
    if WANT:
        ok = (mx > float("-inf")) & (mx < float("inf"))
        u = tl.where(ok[:, None], (x * sw[:, None] - swy) / tl.where(ok, sm, 1.0)[:, None], 0.0)
        tl.store(U + pb * n * d + rows[:, None] * d + ks[None, :], u, mask=rmask[:, None] & kmask[None, :])


def softmin_points(x, y, h, eps, p, want_grad):
    B, n, d = x.shape
    m = y.shape[1]
    x, y, h = x.contiguous(), y.contiguous(), h.contiguous()
    f = torch.empty(B, n, dtype=x.dtype, device=x.device)
    U = torch.empty(B, n, d, dtype=x.dtype, device=x.device) if want_grad else x.new_zeros(0)
    BD = max(triton.next_power_of_2(max(d, 1)), 2)
    if interpreting():
        BR, BC, opts = 16, 16, {}
    else:
        # the (rows, cols, d) difference tile lives in registers: keep BR * BC * BD near 16K
        BR = 64 if BD <= 4 else 32
        BC = max(16, min(128, 16384 // (BR * BD)))
        opts = {"num_warps": 8 if BR * BC >= 4096 else 4}
    if n > 0 and B > 0:
        i_hi, i_lo = split(LOG2E / eps)
        e_hi, e_lo = split(-eps)
        _softmin_points_kernel[(B, triton.cdiv(n, BR))](x, y, h, f, U if want_grad else f, n, m, d,
                                                        i_hi, i_lo, e_hi, e_lo, P=p, WANT=want_grad,
                                                        BLOCK_R=BR, BLOCK_C=BC, BLOCK_D=BD, **opts)
    return f, U


# -- dense alternating Sinkhorn (POT order) ------------------------------------------------------------

@triton.jit
def _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """LSE2_c[(LW_c + P_c / eps - C_rc / eps) log2(e)] for the rows `rows` of problem pb."""
    mx = tl.full((BLOCK_R,), float("-inf"), dt)
    sm = tl.zeros((BLOCK_R,), dt)
    for c0 in range(0, m, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < m
        c = tl.load(C + pb * s_cb + rows[:, None] * s_cr + cols[None, :] * s_cc,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(dt)
        lw = tl.load(LW + pb * s_lw + cols, mask=cmask, other=float("-inf")).to(dt)
        pot = tl.load(P + pb * s_p + cols, mask=cmask, other=0.0).to(dt)
        h = lw * _LOG2E + pot * inv2   # once per column, in base 2
        s = tl.where(cmask[None, :], h[None, :] - c * inv2, float("-inf"))
        new = tl.maximum(mx, tl.max(s, 1))
        safe = tl.where(tl.abs(new) == float("inf"), 0.0, new)
        sm = sm * tl.math.exp2(mx - safe) + tl.sum(tl.math.exp2(s - safe[:, None]), 1)
        mx = new
    empty = sm == 0
    return tl.where(empty, float("-inf"), mx + tl.log2(tl.where(empty, 1.0, sm)))


@triton.jit
def _sinkhorn_half_kernel(C, LW, P, OUT, ACT, NIT, n, m, s_cb, s_cr, s_cc, s_lw, s_p, s_o,
                          i_hi, i_lo, e_hi, e_lo, dmp_hi, dmp_lo,
                          COUNT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT_r = damp * -eps * LSE_c[LW_c + P_c / eps - C_rc / eps] for the problems whose ACT flag
    is set (P: the other side's potential, LW: its log-weights); converged problems are left as
    they are. COUNT: program 0 of each active problem adds 1 to its iteration count (it alone
    touches it in this launch). The arguments are the same every iteration, so that a captured
    CUDA graph replays them."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    act = tl.load(ACT + pb)
    if act != 0:
        dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
        inv2 = _scal(i_hi, i_lo, dt)       # log2(e) / eps
        neg_eps = _scal(e_hi, e_lo, dt)    # -eps
        damp = _scal(dmp_hi, dmp_lo, dt)
        rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < n
        lse2 = _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt, BLOCK_R, BLOCK_C)
        tl.store(OUT + pb * s_o + rows, damp * (neg_eps * _LN2 * lse2), mask=rmask)
        if COUNT:
            if pr == 0:
                tl.store(NIT + pb, tl.load(NIT + pb) + 1)


@triton.jit
def _sinkhorn_gap_kernel(C, LW, P, LWO, PO, GAP, n, m, s_cb, s_cr, s_cc, s_lw, s_p, s_lwo, s_po, s_g,
                         i_hi, i_lo, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """GAP_r = (sum_c P_rc - exp(LWO_r))^2, the plan's marginal on this side against its weights:
    sum_c P_rc = exp(LWO_r + PO_r / eps + LSE_c[LW_c + P_c / eps - C_rc / eps])."""
    pb = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    dt = tl.float64 if C.dtype.element_ty == tl.float64 else tl.float32
    inv2 = _scal(i_hi, i_lo, dt)
    rows = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    lse2 = _lse2_cols(C, LW, P, pb, rows, rmask, m, s_cb, s_cr, s_cc, s_lw, s_p, inv2, dt, BLOCK_R, BLOCK_C)
    lwo = tl.load(LWO + pb * s_lwo + rows, mask=rmask, other=float("-inf")).to(dt) * _LOG2E
    po = tl.load(PO + pb * s_po + rows, mask=rmask, other=0.0).to(dt)
    gap = tl.math.exp2(lwo + po * inv2 + lse2) - tl.math.exp2(lwo)
    tl.store(GAP + pb * s_g + rows, gap * gap, mask=rmask)


def sinkhorn_alternating(C, a_log, b_log, eps, rho_x, rho_y, max_iter, tol, check_every, f0):
    """The op hotpath::ot_sinkhorn_alternating (reference: reference/ot.py sinkhorn_alternating):
    g then f each iteration, the column-marginal error every check_every iterations (0, k, 2k,
    ...), a problem stops once its error is < tol; rho <= 0 is balanced. Returns (f, g, n_iter
    (B,) int64, err (B,)). The host reads the `active` flags only at a check."""
    B, n, m = C.shape
    C = C.contiguous()
    dt = C.dtype
    a_log, b_log = a_log.to(dt).contiguous(), b_log.to(dt).contiguous()
    f = f0.to(dt).clone().contiguous()
    g = torch.zeros_like(b_log)
    n_iter = torch.zeros(B, dtype=torch.int64, device=C.device)
    err = torch.full((B,), math.inf, dtype=dt, device=C.device)
    if B == 0 or max_iter <= 0:
        return f, g, n_iter, err
    dx = 1.0 if rho_x <= 0 else 1.0 / (1.0 + eps / rho_x)
    dy = 1.0 if rho_y <= 0 else 1.0 / (1.0 + eps / rho_y)
    active = torch.ones(B, dtype=torch.int32, device=C.device)
    gap = torch.empty(B, m, dtype=dt, device=C.device)
    BR, BC, opts = _dense_blocks(C)
    i_hi, i_lo = split(LOG2E / eps)
    e_hi, e_lo = split(-eps)
    dx_hi, dx_lo = split(dx)
    dy_hi, dy_lo = split(dy)
    sb, sn, sm_ = C.stride(0), C.stride(1), C.stride(2)
    grid_g, grid_f = (B, triton.cdiv(max(m, 1), BR)), (B, triton.cdiv(max(n, 1), BR))
    check_every = max(int(check_every), 1)

    # Both steps only update f, g, n_iter, err and active in place (the closures cannot rebind
    # them), so a captured graph of them reads and writes the same tensors on every replay.
    def iteration():
        if m > 0:   # g_j over the rows i of C (its transpose's rows), from f
            _sinkhorn_half_kernel[grid_g](C, a_log, f, g, active, n_iter, m, n, sb, sm_, sn, a_log.stride(0),
                                          f.stride(0), g.stride(0), i_hi, i_lo, e_hi, e_lo, dy_hi, dy_lo,
                                          COUNT=n == 0, BLOCK_R=BR, BLOCK_C=BC, **opts)
        if n > 0:   # f_i over the columns j, from the new g
            _sinkhorn_half_kernel[grid_f](C, b_log, g, f, active, n_iter, n, m, sb, sn, sm_, b_log.stride(0),
                                          g.stride(0), f.stride(0), i_hi, i_lo, e_hi, e_lo, dx_hi, dx_lo,
                                          COUNT=True, BLOCK_R=BR, BLOCK_C=BC, **opts)
        if n == 0 and m == 0:
            n_iter.add_(active)

    def check():
        if m > 0:
            _sinkhorn_gap_kernel[grid_g](C, a_log, f, b_log, g, gap, m, n, sb, sm_, sn, a_log.stride(0),
                                         f.stride(0), b_log.stride(0), g.stride(0), gap.stride(0),
                                         i_hi, i_lo, BLOCK_R=BR, BLOCK_C=BC, **opts)
            e = gap.sum(1).sqrt()
        else:
            e = torch.zeros(B, dtype=dt, device=C.device)
        on = active.bool()
        err.copy_(torch.where(on, e, err))
        active.copy_(on & ~(e < tol))   # NaN compares False: stays active, as the reference

    def block():   # iterations it .. it + check_every - 1, the last one checked
        for _ in range(check_every):
            iteration()
        check()

    # iteration 0 and its check run eagerly (they also compile the kernels before any capture);
    # then whole blocks, each ending on a check (iterations 0, k, 2k, ... are checked), and the
    # unchecked tail
    iteration()
    check()
    it = 1
    run = _Replayed(block, C.device)
    while it + check_every <= max_iter and bool(active.any()):   # the one host read per block
        run()
        it += check_every
    if bool(active.any()):
        for _ in range(it, max_iter):
            iteration()
    return f, g, n_iter, err


_GRAPHS_BROKEN = []


class _Replayed:
    """Calls fn; on a GPU, captures fn once into a CUDA graph and replays it after that.

    Capture runs fn's launches without executing them, on a side stream, with this thread's
    capture mode only (another thread's CUDA calls are not disturbed). Any failure to capture
    (an op that syncs, an old driver) falls back to calling fn, with a warning once per process.
    HOTPATH_CUDA_GRAPHS=0 turns graphs off."""

    def __init__(self, fn, device):
        self.fn, self.graph, self.device = fn, None, device
        self.on = (device.type == "cuda" and not interpreting() and not _GRAPHS_BROKEN
                   and os.environ.get("HOTPATH_CUDA_GRAPHS", "1") != "0")

    def __call__(self):
        if self.on and self.graph is None:
            self.graph = self._capture()
            self.on = self.graph is not None
        if self.graph is not None:
            with torch.cuda.device(self.device):   # the streams of the tensors' device
                self.graph.replay()
        else:
            self.fn()

    def _capture(self):
        try:
            here = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(here)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.device(self.device), torch.cuda.stream(side):
                    graph.capture_begin(capture_error_mode="thread_local")
                    try:
                        self.fn()
                    finally:
                        graph.capture_end()
            finally:
                here.wait_stream(side)
        except Exception as exc:   # nothing captured ran: the state is as before
            _GRAPHS_BROKEN.append(repr(exc))
            warnings.warn(f"hotpath: CUDA graph capture failed ({exc!r}); the Sinkhorn loop launches "
                          "its kernels one by one", RuntimeWarning, stacklevel=2)
            return None
        return graph


# -- GeomLoss's symmetric loop, small problems: one program per problem, every iteration inside ----

# Largest cost tile (elements) a program keeps in registers; larger problems run the reference loop.
SYMMETRIC_MAX_TILE = 128 * 128


@triton.jit
def _lse2_tile(c, h2, inv2, AXIS: tl.constexpr):
    """LSE2 over AXIS of h2 (along AXIS) - c * inv2 for a register tile c (masked entries of h2
    are -inf); -inf for an all -inf slice, as the reference's _lse."""
    if AXIS == 1:
        s = h2[None, :] - c * inv2
    else:
        s = h2[:, None] - c * inv2
    mx = tl.max(s, AXIS)
    safe = tl.where(tl.abs(mx) == float("inf"), 0.0, mx)
    if AXIS == 1:
        sm = tl.sum(tl.math.exp2(s - safe[:, None]), 1)
    else:
        sm = tl.sum(tl.math.exp2(s - safe[None, :]), 0)
    empty = sm == 0
    return tl.where(empty, float("-inf"), safe + tl.log2(tl.where(empty, 1.0, sm)))


@triton.jit
def _tile(P, pb, s_b, s_r, s_c, r, c, rm, cm, dt: tl.constexpr):
    return tl.load(P + pb * s_b + r[:, None] * s_r + c[None, :] * s_c, mask=rm[:, None] & cm[None, :],
                   other=0.0).to(dt)


@triton.jit
def _sinkhorn_symmetric_kernel(CXY, CXX, CYY, AL, BL, SCH, FBA, GAB, FAA, GBB, NIT, n, m, K, check_every,
                               s_xyb, s_xyr, s_xyc, s_xxb, s_xxr, s_xxc, s_yyb, s_yyr, s_yyc, s_al, s_bl,
                               t_hi, t_lo, DEBIAS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    """Problem pb: the reference's sinkhorn_symmetric with its costs held in registers. SCH (K, 4)
    per epsilon: log2(e) / eps, -eps ln 2, and the two dampings. A problem stops on its own once
    tol > 0 and the sup-norm change of (f_ba, g_ab) at a check is below tol or NaN: no host sync."""
    pb = tl.program_id(0).to(tl.int64)
    dt = tl.float64 if CXY.dtype.element_ty == tl.float64 else tl.float32
    tol = _scal(t_hi, t_lo, dt)
    i = tl.arange(0, BN)
    j = tl.arange(0, BM)
    im = i < n
    jm = j < m
    cxy = _tile(CXY, pb, s_xyb, s_xyr, s_xyc, i, j, im, jm, dt)
    al2 = tl.load(AL + pb * s_al + i, mask=im, other=float("-inf")).to(dt) * _LOG2E
    bl2 = tl.load(BL + pb * s_bl + j, mask=jm, other=float("-inf")).to(dt) * _LOG2E
    inv2 = tl.load(SCH + 0).to(dt)
    neps = tl.load(SCH + 1).to(dt)
    dx = tl.load(SCH + 2).to(dt)
    dy = tl.load(SCH + 3).to(dt)
    g_ab = dy * neps * _lse2_tile(cxy, al2, inv2, 0)
    f_ba = dx * neps * _lse2_tile(cxy, bl2, inv2, 1)
    if DEBIAS:
        cxx = _tile(CXX, pb, s_xxb, s_xxr, s_xxc, i, i, im, im, dt)
        cyy = _tile(CYY, pb, s_yyb, s_yyr, s_yyc, j, j, jm, jm, dt)
        f_aa = dx * neps * _lse2_tile(cxx, al2, inv2, 1)
        g_bb = dy * neps * _lse2_tile(cyy, bl2, inv2, 1)
    k = tl.full((), 0, tl.int32)
    go = K > 0
    while go:
        inv2 = tl.load(SCH + 4 * k + 0).to(dt)
        neps = tl.load(SCH + 4 * k + 1).to(dt)
        dx = tl.load(SCH + 4 * k + 2).to(dt)
        dy = tl.load(SCH + 4 * k + 3).to(dt)
        ft = dx * neps * _lse2_tile(cxy, bl2 + g_ab * inv2, inv2, 1)
        gt = dy * neps * _lse2_tile(cxy, al2 + f_ba * inv2, inv2, 0)
        nf = 0.5 * (f_ba + ft)
        ng = 0.5 * (g_ab + gt)
        df = tl.where(al2 > float("-inf"), tl.abs(nf - f_ba), 0.0)
        dg = tl.where(bl2 > float("-inf"), tl.abs(ng - g_ab), 0.0)
        # the reference's amax propagates NaN (then the problem stops); a GPU max may drop it
        has_nan = tl.max((df != df).to(tl.int32), 0) + tl.max((dg != dg).to(tl.int32), 0)
        change = tl.maximum(tl.max(df, 0), tl.max(dg, 0))
        f_ba = nf
        g_ab = ng
        if DEBIAS:
            f_aa = 0.5 * (f_aa + dx * neps * _lse2_tile(cxx, al2 + f_aa * inv2, inv2, 1))
            g_bb = 0.5 * (g_bb + dy * neps * _lse2_tile(cyy, bl2 + g_bb * inv2, inv2, 1))
        k += 1
        go = k < K
        if tol > 0:
            if k % check_every == 0:
                go = go & (has_nan == 0) & (change >= tol)
    tl.store(FBA + pb * n + i, f_ba, mask=im)
    tl.store(GAB + pb * m + j, g_ab, mask=jm)
    if DEBIAS:
        tl.store(FAA + pb * n + i, f_aa, mask=im)
        tl.store(GBB + pb * m + j, g_bb, mask=jm)
    tl.store(NIT + pb, tl.cast(k, tl.int64))


def _symmetric_blocks(n, m, debias):
    BN, BM = triton.next_power_of_2(max(n, 1)), triton.next_power_of_2(max(m, 1))
    tiles = [BN * BM] + ([BN * BN, BM * BM] if debias else [])
    return BN, BM, max(tiles)


def sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps_list, rho_x, rho_y, debias, tol, check_every):
    """The op hotpath::ot_sinkhorn_symmetric (reference: reference/ot.py sinkhorn_symmetric): one
    launch for the whole loop, one program per problem, its costs in registers (B = 1,024 problems
    of 64 x 64 are 1,024 programs, no launch or host sync per iteration). Problems whose cost
    tiles exceed SYMMETRIC_MAX_TILE run the reference loop. rho <= 0 is balanced."""
    from ...reference import ot as ref
    B, n, m = Cxy.shape
    eps = [float(e) for e in eps_list.tolist()]
    rx, ry = (None if r <= 0 else float(r) for r in (rho_x, rho_y))
    BN, BM, tile = _symmetric_blocks(n, m, debias)
    if tile > SYMMETRIC_MAX_TILE or n == 0 or m == 0 or B == 0:
        return ref.sinkhorn_symmetric(Cxy, Cxx, Cyy, a_log, b_log, eps, rx, ry, debias, tol, check_every)
    dt = Cxy.dtype
    dev = Cxy.device
    damp = [(1.0 if rx is None else 1.0 / (1.0 + e / rx), 1.0 if ry is None else 1.0 / (1.0 + e / ry)) for e in eps]
    sched = torch.tensor([[LOG2E / e, -e * math.log(2.0), dxe, dye] for e, (dxe, dye) in zip(eps, damp)],
                         dtype=torch.float64, device=dev).to(dt).contiguous()
    a_log, b_log = a_log.to(dt).contiguous(), b_log.to(dt).contiguous()
    f_ba = torch.empty(B, n, dtype=dt, device=dev)
    g_ab = torch.empty(B, m, dtype=dt, device=dev)
    f_aa = torch.empty(B, n, dtype=dt, device=dev) if debias else a_log.new_zeros(0)
    g_bb = torch.empty(B, m, dtype=dt, device=dev) if debias else b_log.new_zeros(0)
    n_iter = torch.zeros(B, dtype=torch.int64, device=dev)
    xx = Cxx if debias else Cxy
    yy = Cyy if debias else Cxy
    t_hi, t_lo = split(float(tol))
    opts = {} if interpreting() else {"num_warps": 4 if tile <= 4096 else 8}
    _sinkhorn_symmetric_kernel[(B,)](Cxy, xx, yy, a_log, b_log, sched, f_ba, g_ab, f_aa if debias else f_ba,
                                     g_bb if debias else g_ab, n_iter, n, m, len(eps), max(int(check_every), 1),
                                     *Cxy.stride(), *xx.stride(), *yy.stride(), a_log.stride(0), b_log.stride(0),
                                     t_hi, t_lo, DEBIAS=bool(debias), BN=BN, BM=BM, **opts)
    return f_ba, g_ab, f_aa, g_bb, n_iter
