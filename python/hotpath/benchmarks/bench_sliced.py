"""Family `sliced`: sliced Wasserstein (forward + backward), batched weighted 1-D Wasserstein and
histogram W1 (forward + backward), against plain torch references and POT (torch backend)."""
import torch

import hotpath as hp
from hotpath.reference import wasserstein1d as ref


def torch_sliced_cols(x, y, theta, p=2):
    """What users write: matmul, sort each projection column, gather-free difference."""
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    return (px - py).abs().pow(p).mean() ** (1.0 / p)


def torch_sliced_rows(x, y, theta, p=2):
    """The faster plain torch layout: (L, N) contiguous rows, sort indices, gather the values."""
    px = theta.t() @ x.t()
    py = theta.t() @ y.t()
    ix = torch.argsort(px.detach(), dim=1)
    iy = torch.argsort(py.detach(), dim=1)
    d = torch.gather(px, 1, ix) - torch.gather(py, 1, iy)
    return d.abs().pow(p).mean() ** (1.0 / p)


def _backward(loss):
    loss.backward()
    return loss.detach()


def _pot():
    try:
        import ot  # noqa: F401
        return ot
    except Exception:
        return None


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
    torch.manual_seed(0)
    ot = _pot()

    # ---- sliced Wasserstein, forward + backward
    N = 20000 if quick else 100000
    L, D = 256, 3
    x = torch.randn(N, D, requires_grad=True)
    y = (torch.randn(N, D) * 0.5 + 1.0).requires_grad_()
    theta = hp.ot.random_projections(D, L, generator=torch.Generator().manual_seed(0))

    def zero():
        x.grad = None
        y.grad = None

    def run_ours():
        zero()
        return _backward(hp.ot.sliced_wasserstein(x, y, projections=theta))

    def run_rows():
        zero()
        return _backward(torch_sliced_rows(x, y, theta))

    def run_cols():
        zero()
        return _backward(torch_sliced_cols(x, y, theta))

    val = float
    h.case(f"sliced_wasserstein fwd+bwd N=M={N} D={D} L={L} f32", work=2 * N * L, unit="projected pts")
    h.measure("hotpath", run_ours, value=val)
    h.measure("torch reference (rows)", run_rows, value=val)
    h.measure("torch reference (columns)", run_cols, value=val)
    if ot is not None:
        def run_pot():
            zero()
            return _backward(ot.sliced_wasserstein_distance(x, y, projections=theta))
        h.measure("POT (torch)", run_pot, value=val, repeat=1)
        h.target("POT (torch)", 3)
    else:
        h.skip("POT (torch)", "POT not installed")
    h.target("torch reference (rows)", 2)
    h.target("torch reference (columns)", 2)
    h.target_memory("torch reference (rows)", 1.0)

    # ---- batched weighted 1-D Wasserstein, forward
    B, n = (2000 if quick else 10000), 1000
    u = torch.randn(n, B)
    v = torch.randn(n, B) * 1.5 + 0.3
    uw = torch.rand(n, B)
    vw = torch.rand(n, B)
    uw /= uw.sum(0)
    vw /= vw.sum(0)
    h.case(f"wasserstein_1d weighted B={B} n=m={n} p=1 f32", work=B, unit="problems")
    h.measure("hotpath", lambda: hp.ot.wasserstein_1d(u, v, uw, vw, p=1), value=lambda c: float(c.sum()))
    h.measure("reference", lambda: ref.wasserstein_1d(u.t(), v.t(), uw.t(), vw.t(), 1), value=lambda c: float(c.sum()))
    if ot is not None:
        h.measure("POT (torch)", lambda: ot.wasserstein_1d(u, v, uw, vw, p=1), value=lambda c: float(c.sum()))
        h.target("POT (torch)", 5)
    else:
        h.skip("POT (torch)", "POT not installed")

    h.case(f"wasserstein_1d uniform B={B} n=m={n} p=2 f32", work=B, unit="problems")
    h.measure("hotpath", lambda: hp.ot.wasserstein_1d(u, v, p=2), value=lambda c: float(c.sum()))
    if ot is not None:
        h.measure("POT (torch)", lambda: ot.wasserstein_1d(u, v, p=2), value=lambda c: float(c.sum()))
        h.target("POT (torch)", 5)

    # ---- histogram W1, forward + backward
    Bh, K = (2048 if quick else 8192), 1000
    P = torch.randn(Bh, K).softmax(-1).requires_grad_()
    Q = torch.rand(Bh, K)
    Q /= Q.sum(-1, keepdim=True)
    S = torch.arange(K, dtype=torch.float32)

    def hist_ours():
        P.grad = None
        return _backward(hp.ot.histogram_wasserstein(P, Q).sum())

    def hist_ref():
        P.grad = None
        return _backward(ref.histogram_wasserstein(P, Q, S.expand(Bh, K), 1).sum())

    def hist_plain():
        P.grad = None
        return _backward(torch.cumsum(P - Q, -1).abs().sum())

    h.case(f"histogram_wasserstein fwd+bwd B={Bh} K={K} f32", work=Bh * K, unit="bins")
    h.measure("hotpath", hist_ours, value=val)
    h.measure("torch cumsum reference", hist_ref, value=val)
    h.measure("torch cumsum (unit bins, no normalization)", hist_plain, value=val)
    h.target("torch cumsum reference", 2)


def run_cuda(h, quick):
    """The GPU cases of the OT speed issue (sliced / 1-D): N = M = 1M, L = 256 forward + backward
    within 4 GB peak and >= 3x POT's torch backend on the GPU; the batched 1-D Wasserstein against
    POT too. Same sizes with --quick (a fraction of a second per call)."""
    from . import _gpu
    ot = _pot()
    dev = h.device
    g = torch.Generator(device=dev).manual_seed(0)

    N, L, D = _gpu.sz(h, 1_000_000), 256, 3
    x = torch.randn(N, D, device=dev, generator=g).requires_grad_()
    y = (torch.randn(N, D, device=dev, generator=g) * 0.5 + 1.0).requires_grad_()
    theta = hp.ot.random_projections(D, L, generator=torch.Generator().manual_seed(0)).to(dev)

    def with_grads(loss_fn):
        def run():
            x.grad = None
            y.grad = None
            return _backward(loss_fn())
        return run

    h.case(f"sliced_wasserstein fwd+bwd N=M={N} D={D} L={L} f32", work=2 * N * L, unit="projected pts")
    h.measure("hotpath", with_grads(lambda: hp.ot.sliced_wasserstein(x, y, projections=theta)), value=float)
    h.measure("torch reference (rows)", with_grads(lambda: torch_sliced_rows(x, y, theta)), value=float)
    if ot is not None:
        h.measure("POT (torch, GPU)", with_grads(lambda: ot.sliced_wasserstein_distance(x, y, projections=theta)),
                  value=float)
        h.target("POT (torch, GPU)", 3)
    else:
        h.skip("POT (torch, GPU)", "POT not installed")
    peak = h._case["impls"].get("hotpath", {}).get("peak_mb")
    if peak is not None:
        h.target_value("peak memory growth MB", peak, at_most=4096)
    del x, y

    B, n = _gpu.sz(h, 10_000), 1000
    u = torch.randn(n, B, device=dev, generator=g)
    v = torch.randn(n, B, device=dev, generator=g) * 1.5 + 0.3
    uw, vw = torch.rand(n, B, device=dev, generator=g), torch.rand(n, B, device=dev, generator=g)
    uw /= uw.sum(0)
    vw /= vw.sum(0)
    h.case(f"wasserstein_1d weighted B={B} n=m={n} p=1 f32", work=B, unit="problems")
    h.measure("hotpath", lambda: hp.ot.wasserstein_1d(u, v, uw, vw, p=1), value=lambda c: float(c.sum()))
    if ot is not None:
        h.measure("POT (torch, GPU)", lambda: ot.wasserstein_1d(u, v, uw, vw, p=1), value=lambda c: float(c.sum()))
        h.target("POT (torch, GPU)", 3)
    else:
        h.skip("POT (torch, GPU)", "POT not installed")

    Bh, K = _gpu.sz(h, 8192), 1000
    P = torch.randn(Bh, K, device=dev, generator=g).softmax(-1).requires_grad_()
    Q = torch.rand(Bh, K, device=dev, generator=g)
    Q /= Q.sum(-1, keepdim=True)

    def hist(fn):
        def run():
            P.grad = None
            return _backward(fn())
        return run

    h.case(f"histogram_wasserstein fwd+bwd B={Bh} K={K} f32", work=Bh * K, unit="bins")
    h.measure("hotpath", hist(lambda: hp.ot.histogram_wasserstein(P, Q).sum()), value=float)
    h.measure("torch cumsum (unit bins)", hist(lambda: torch.cumsum(P - Q, -1).abs().sum()), value=float)
