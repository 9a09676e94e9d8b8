"""Benchmarks of hp.ot: SamplesLoss vs GeomLoss, sinkhorn2 vs POT, batched small
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


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
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
        if quick:
            # no target reads it, and its B sequential torch-backend calls (~2 ms of Python per
            # iteration) took most of the quick run's time: full runs only
            h.skip("POT python loop (torch)", "--quick: not a target row (full runs measure it)")
        else:
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


def _value_check(h, other, at_most=1e-4):
    vals = h._case.get("values", {})
    if "hotpath" in vals and other in vals:
        rel = abs(vals["hotpath"] - vals[other]) / max(abs(vals[other]), 1e-30)
        h.target_value(f"relative value difference vs {other}", rel, at_most=at_most)


def run_cuda(h, quick):
    """The GPU cases of the OT speed issue: SamplesLoss against flash-sinkhorn (its defaults, TF32,
    and at matched full fp32) and GeomLoss, sinkhorn2 against POT's torch backend on the GPU, many
    small problems against the batched torch reference. --quick drops the n = m = 100k and d = 64
    SamplesLoss cases (seconds per call today)."""
    from . import _gpu
    geomloss = _gpu.import_peer("geomloss")
    pot = _gpu.import_peer("ot")
    keops = _gpu.import_peer("pykeops") is not None
    dev = h.device
    ours = hp.ot.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True)
    # flash-sinkhorn's half_cost=True is the |x - y|^2 / 2 cost of GeomLoss and hotpath: same values
    fs_kw = dict(p=2, blur=0.05, scaling=0.5, debias=True, half_cost=True)

    def clouds(n, d, seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        return (torch.rand(n, d, device=dev, generator=g),
                torch.rand(n, d, device=dev, generator=g) * 0.8 + 0.2)

    sizes = [(10_000, 3)] if quick else [(10_000, 3), (100_000, 3), (10_000, 64)]
    for n, d in sizes:
        n = _gpu.sz(h, n)
        x, y = clouds(n, d, seed=n + d)
        for on in (False, True):
            h.case(f"SamplesLoss fwd+bwd n=m={n} d={d} blur=0.05 scaling=0.5 debias ({_gpu.precision_label(on)})",
                   work=n * n, unit="pairs")
            h.measure("hotpath", _gpu.under_tf32(on, _fwd_bwd(ours, x, y)), value=lambda v: v.item())
            peer = f"flash-sinkhorn (allow_tf32={on})"
            fs, why = _gpu.flash_sinkhorn_loss(dev, allow_tf32=on, **fs_kw)
            if fs is not None:
                h.measure(peer, _gpu.under_tf32(on, _fwd_bwd(fs, x, y)), value=lambda v: v.item())
                _value_check(h, peer, at_most=1e-5)
                h.target(peer, 1.5)
            else:
                h.skip(peer, why)
            if geomloss is None:
                h.skip("geomloss tensorized", "geomloss not installed")
            elif n > 20_000:  # n x m float32 matrices, several of them: tens of GB
                h.skip("geomloss tensorized", f"n = {n}: the dense cost matrices do not fit")
            else:
                gl = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, backend="tensorized")
                h.measure("geomloss tensorized", _gpu.under_tf32(on, _fwd_bwd(gl, x, y)), value=lambda v: v.item())
                _value_check(h, "geomloss tensorized", at_most=1e-5)
                h.target("geomloss tensorized", 1.0)
            if keops and geomloss is not None and not quick:
                gl = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, backend="online")
                h.measure("geomloss online (KeOps)", _gpu.under_tf32(on, _fwd_bwd(gl, x, y)), value=lambda v: v.item())
                h.target("geomloss online (KeOps)", 1.0)
        del x, y

    # many small problems, fixed iterations, one launch per iteration block
    B = _gpu.sz(h, 1024)
    g = torch.Generator(device=dev).manual_seed(3)
    x, y = torch.rand(B, 64, 2, device=dev, generator=g), torch.rand(B, 64, 2, device=dev, generator=g) * 0.8 + 0.2
    h.case(f"B={B} problems 64x64 d=2, 100 its", work=B * 100 * 64 * 64, unit="pair-updates")
    h.measure("hotpath", lambda: hp.ot.sinkhorn(x, y, blur=0.1, max_iter=100).loss, value=lambda v: v.sum().item())
    h.measure("torch batched reference",
              lambda: hp.ot.sinkhorn(x, y, blur=0.1, max_iter=100, backend="reference").loss,
              value=lambda v: v.sum().item())
    h.target("torch batched reference", 5)

    # sinkhorn2 on a dense 2000 x 2000 cost, 100 iterations, against POT's torch backend on the GPU
    n = _gpu.sz(h, 2000)
    g = torch.Generator(device=dev).manual_seed(2)
    M = torch.rand(n, n, device=dev, generator=g)
    a = torch.full((n,), 1.0 / n, device=dev)
    h.case(f"sinkhorn2 dense {n}x{n} 100 its", work=100 * n * n, unit="cost-entries")
    h.measure("hotpath", lambda: hp.ot.sinkhorn2(a, a, M, 0.05, numItermax=100, stopThr=0.0), value=float)
    if pot is not None:
        h.measure("POT sinkhorn_log (torch, GPU)",
                  lambda: pot.sinkhorn2(a, a, M, 0.05, method="sinkhorn_log", numItermax=100, stopThr=0.0), value=float)
        _value_check(h, "POT sinkhorn_log (torch, GPU)", at_most=1e-5)
        h.target("POT sinkhorn_log (torch, GPU)", 3)
    else:
        h.skip("POT sinkhorn_log (torch, GPU)", "POT not installed")
