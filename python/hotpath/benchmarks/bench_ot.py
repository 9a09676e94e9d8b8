"""Benchmarks of hp.ot (issue 3): SamplesLoss vs GeomLoss, sinkhorn2 vs POT, batched small
problems vs a batched torch reference and a Python loop over POT, a 100k-point run for memory."""
import torch

import hotpath as hp
from hotpath.reference import ot as ref


def _clouds(B, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n, d, generator=g) if B else torch.rand(n, d, generator=g)
    y = (torch.rand(B, n, d, generator=g) if B else torch.rand(n, d, generator=g)) * 0.8 + 0.2
    return x, y


def _fwd_bwd(loss_fn, x, y):
    def run():
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        L = loss_fn(xg, yg)
        L.sum().backward()
        return L.detach()
    return run


def run(h, quick):
    try:
        import geomloss
    except ImportError:
        geomloss = None
    try:
        import ot as pot
    except ImportError:
        pot = None

    ours = hp.ot.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True)

    # 1-2. SamplesLoss fwd + bwd vs GeomLoss online (KeOps) and tensorized
    for backend, n, seed, target in (("online", 2000 if quick else 10000, 0, 5),
                                     ("tensorized", 1000 if quick else 4000, 1, 10)):
        x, y = _clouds(0, n, 3, seed=seed)
        peer = f"geomloss {backend}"
        h.case(f"SamplesLoss fwd+bwd n=m={n} d=3 blur=0.05", work=n * n, unit="pairs")
        h.measure("hotpath", _fwd_bwd(ours, x, y), value=lambda v: v.item())
        if geomloss is not None:
            gl = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, backend=backend)
            h.measure(peer, _fwd_bwd(gl, x, y), value=lambda v: v.item())
            _value_check(h, peer)
            h.target(peer, target)
        else:
            h.skip(peer, "geomloss not installed")

    # 3. sinkhorn2 on a dense cost, 100 iterations
    n = 500 if quick else 2000
    g = torch.Generator().manual_seed(2)
    M = torch.rand(n, n, generator=g)
    a = torch.full((n,), 1.0 / n)
    h.case(f"sinkhorn2 dense {n}x{n} 100 its", work=100 * n * n, unit="cost-entries")
    h.measure("hotpath", lambda: hp.ot.sinkhorn2(a, a, M, 0.05, numItermax=100, stopThr=0.0), value=float)
    if pot is not None:
        h.measure("POT sinkhorn_log", lambda: pot.sinkhorn2(a, a, M, 0.05, method="sinkhorn_log", numItermax=100,
                                                            stopThr=0.0), value=float)
        _value_check(h, "POT sinkhorn_log")
        h.target("POT sinkhorn_log", 10)
    else:
        h.skip("POT sinkhorn_log", "POT not installed")

    # 4. many small problems, fixed iterations
    B = 256 if quick else 1024
    x, y = _clouds(B, 64, 2, seed=3)
    h.case(f"B={B} problems 64x64 d=2, 100 its", work=B * 100 * 64 * 64, unit="pair-updates")
    h.measure("hotpath", lambda: hp.ot.sinkhorn(x, y, blur=0.1, max_iter=100).loss, value=lambda v: v.sum().item())
    h.measure("torch batched reference",
              lambda: hp.ot.sinkhorn(x, y, blur=0.1, max_iter=100, backend="reference").loss,
              value=lambda v: v.sum().item())
    h.target("torch batched reference", 10)
    if pot is not None:
        # the same problems, eps = 0.1^2 = 0.01, 100 iterations, no early stop (stopThr=0), one
        # sinkhorn2 call per problem; POT on torch tensors (its torch backend) and on numpy arrays
        # (float64, its fastest path for small problems): the target is against the faster one
        C = ref.cost_matrix(x, y, 2)
        w = torch.full((64,), 1.0 / 64)
        Cn, wn = C.double().numpy(), w.double().numpy()

        def pot_loop():
            return torch.stack([pot.sinkhorn2(w, w, C[i], 0.01, method="sinkhorn_log", numItermax=100, stopThr=0.0)
                                for i in range(B)])

        def pot_loop_numpy():
            return [pot.sinkhorn2(wn, wn, Cn[i], 0.01, method="sinkhorn_log", numItermax=100, stopThr=0.0)
                    for i in range(B)]
        h.measure("POT python loop (torch)", pot_loop, repeat=1)
        h.measure("POT python loop (numpy)", pot_loop_numpy, repeat=1)
        h.target("POT python loop (numpy)", 100)
    else:
        h.skip("POT python loop (numpy)", "POT not installed")

    # 5. large: runs, memory
    n = 20000 if quick else 100000
    x, y = _clouds(0, n, 3, seed=4)
    h.case(f"SamplesLoss fwd+bwd n=m={n} d=3 (memory)", work=n * n, unit="pairs")
    h.measure("hotpath", _fwd_bwd(ours, x, y), repeat=1)
    peak = h._case["impls"].get("hotpath", {}).get("peak_mb")
    if peak is not None:
        h.target_value("peak memory growth MB", peak, at_most=200)


def _value_check(h, other):
    vals = h._case.get("values", {})
    if "hotpath" in vals and other in vals:
        rel = abs(vals["hotpath"] - vals[other]) / max(abs(vals[other]), 1e-30)
        h.target_value(f"relative value difference vs {other}", rel, at_most=1e-4)
