"""Family `assignment`: exact linear assignment, exact OT (emd / emd2), minibatch OT couplings,
against scipy.optimize.linear_sum_assignment, lap.lapjv, POT's ot.emd and a torchcfm-style
POT sampler (the target rows; costs are squared Euclidean in float64)."""
import numpy as np
import torch

import hotpath as hp


def _peer(name):
    try:
        return __import__(name)
    except Exception:
        return None


def _sq(x, y):
    return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)


def _lsa_cost(C, r, c):
    return float(np.asarray(C)[np.asarray(r), np.asarray(c)].sum())


def _cpu_note(h, ours, peer, label):
    """Process CPU time of one run each: on a shared machine wall-clock ratios also measure how
    often the scheduler parks a thread (each parallel region waits for its slowest thread)."""
    import time

    def cpu(fn):
        t = time.process_time()
        fn()
        return time.process_time() - t
    a, b = min(cpu(ours) for _ in range(2)), min(cpu(peer) for _ in range(2))
    h.note(f"CPU-time ratio vs {label}: {b / max(a, 1e-9):.3g} ({a * 1e3:.1f} ms vs {b * 1e3:.1f} ms, all threads summed)")


def run(h, quick):
    sp = _peer("scipy.optimize")
    if sp is not None:
        import scipy.optimize as sp
    lap = _peer("lap")
    ot = _peer("ot")
    rng = np.random.default_rng(0)

    # ---- one square problem, d = 16
    for n in ((256, 512) if quick else (1024, 2048)):
        x, y = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
        C = _sq(x, y)
        T = torch.from_numpy(C)
        h.case(f"linear_sum_assignment n={n} d=16 float64", work=n, unit="rows")
        h.measure("hotpath", lambda: hp.ot.linear_sum_assignment(T), value=lambda o: _lsa_cost(C, *o))
        if lap is not None:
            h.measure("lap.lapjv", lambda: lap.lapjv(C), value=lambda o: o[0])
            h.target("lap.lapjv", 1.5)
            _cpu_note(h, lambda: hp.ot.linear_sum_assignment(T), lambda: lap.lapjv(C), "lap.lapjv")
        else:
            h.skip("lap.lapjv", "lap not installed")
        if sp is not None:
            h.measure("scipy", lambda: sp.linear_sum_assignment(C), value=lambda o: _lsa_cost(C, *o))
            h.target("scipy", 3)
        else:
            h.skip("scipy", "scipy not installed")

    # ---- many small problems, d = 2, threads across problems
    B, n = (16, 128) if quick else (64, 256)
    x, y = rng.standard_normal((B, n, 2)), rng.standard_normal((B, n, 2))
    C = _sq(x, y)
    T = torch.from_numpy(C)
    h.case(f"{B} problems {n}x{n} d=2 (batched)", work=B, unit="problems")
    h.measure("hotpath", lambda: hp.ot.linear_sum_assignment(T))
    loops = {}
    if lap is not None:
        h.measure("lap.lapjv loop", lambda: [lap.lapjv(c) for c in C])
        loops["lap.lapjv loop"] = h._case["impls"]["lap.lapjv loop"].get("seconds")
    if sp is not None:
        h.measure("scipy loop", lambda: [sp.linear_sum_assignment(c) for c in C])
        loops["scipy loop"] = h._case["impls"]["scipy loop"].get("seconds")
    loops = {k: v for k, v in loops.items() if v is not None}
    if loops:
        fastest = min(loops, key=loops.get)  # the faster of the two loops
        h.target(fastest, 3)
        peer = (lambda: [lap.lapjv(c) for c in C]) if fastest.startswith("lap") else (
            lambda: [sp.linear_sum_assignment(c) for c in C])
        _cpu_note(h, lambda: hp.ot.linear_sum_assignment(T), peer, fastest)

    # ---- exact OT, weighted, n = m
    n = 300 if quick else 1000
    x, y = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
    M = _sq(x, y)
    a, b = rng.random(n) + 0.1, rng.random(n) + 0.1
    a, b = a / a.sum(), b / b.sum()
    At, Bt, Mt = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(M)
    h.case(f"emd weighted n=m={n} float64 (plan)", work=n, unit="rows")
    h.measure("hotpath", lambda: hp.ot.emd(At, Bt, Mt))
    if ot is not None:
        h.measure("POT ot.emd", lambda: ot.emd(a, b, M))
        h.target("POT ot.emd", 2)
        _cpu_note(h, lambda: hp.ot.emd(At, Bt, Mt), lambda: ot.emd(a, b, M), "POT ot.emd")
    else:
        h.skip("POT ot.emd", "POT not installed")
    h.case(f"emd2 weighted n=m={n} float64 (cost)", work=n, unit="rows")
    h.measure("hotpath", lambda: hp.ot.emd2(At, Bt, Mt), value=float)
    if ot is not None:
        h.measure("POT ot.emd2", lambda: ot.emd2(a, b, M), value=float)
        h.target("POT ot.emd2", 2)
        ours, theirs = float(hp.ot.emd2(At, Bt, Mt)), float(ot.emd2(a, b, M))
        h.target_value("emd2 cost |rel. diff| vs POT", abs(ours - theirs) / abs(theirs), at_most=1e-9)

    # ---- minibatch coupling, MNIST-sized
    n, d = (128, 784) if quick else (512, 784)
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(n, d, generator=g), torch.rand(n, d, generator=g)
    h.case(f"minibatch_coupling exact batch={n} d={d} float32", work=n, unit="pairs")
    h.measure("hotpath", lambda: hp.ot.minibatch_coupling(x0, x1, generator=g))
    if ot is not None:
        def torchcfm_style():
            # torchcfm's OTPlanSampler: POT plan on the cdist cost, then np.random.choice on it
            M_ = (torch.cdist(x0, x1) ** 2).numpy()
            pi = ot.emd(ot.unif(n), ot.unif(n), M_)
            p = pi.flatten()
            p = p / p.sum()
            choices = np.random.choice(n * n, p=p, size=n)
            return np.divmod(choices, n)
        h.measure("torchcfm-style POT sampler", torchcfm_style)
        h.target("torchcfm-style POT sampler", 5)
        _cpu_note(h, lambda: hp.ot.minibatch_coupling(x0, x1, generator=g), torchcfm_style, "torchcfm-style")
        M64 = (torch.cdist(x0.double(), x1.double()) ** 2).numpy()
        i, j = hp.ot.minibatch_coupling(x0, x1, replace=False, generator=g)
        ours = float(M64[i.numpy(), j.numpy()].mean())
        theirs = float(ot.emd2(ot.unif(n), ot.unif(n), M64))
        h.target_value("plan cost |rel. diff| vs POT", abs(ours - theirs) / theirs, at_most=1e-6)
