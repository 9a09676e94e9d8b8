"""Family `pairwise`: the streaming log-sum-exp engine against a chunked torch reference,
pykeops' LazyTensor logsumexp and the element rate of torch.exp (one exp per pair)."""
import time

import torch

import hotpath as hp


def torch_chunked(x, y, scale, metric, values=None, chunk=1000):
    """What users write today: cdist / matmul + logsumexp over 1000-row chunks."""
    out = []
    for i in range(0, x.shape[0], chunk):
        xc = x[i:i + chunk]
        s = -scale * torch.cdist(xc, y).pow_(2) if metric == "sqeuclidean" else scale * (xc @ y.T)
        out.append(torch.logsumexp(s, dim=1))
    return torch.cat(out)


def keops_lse(x, y, scale, metric):
    from pykeops.torch import LazyTensor
    X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    s = -scale * ((X - Y) ** 2).sum(-1) if metric == "sqeuclidean" else scale * (X | Y)
    return s.logsumexp(dim=1).view(-1)


def exp_rate(repeat=2000):
    """Elements per second of torch.exp on an in-cache tensor (the practical one-exp-per-pair limit)."""
    a = torch.randn(16384)
    b = torch.empty_like(a)
    for _ in range(50):
        torch.exp(a, out=b)
    t0 = time.perf_counter()
    for _ in range(repeat):
        torch.exp(a, out=b)
    return a.numel() * repeat / (time.perf_counter() - t0)


def _have_keops():
    try:
        import pykeops  # noqa: F401
        return True
    except Exception:
        return False


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
    torch.manual_seed(0)
    n = 4000 if quick else 10000
    keops = _have_keops()
    for d, targets in ((3, {"torch chunked": 20, "pykeops": 7}), (64, {"torch chunked": 5, "pykeops": 20})):
        x, y = torch.randn(n, d), torch.randn(n, d)
        scale = 0.5
        for metric in ("sqeuclidean",) if d == 3 else ("sqeuclidean", "dot"):
            h.case(f"lse {metric} n=m={n} d={d}", work=n * n, unit="pairs")
            h.measure("hotpath", lambda: hp.pairwise_lse(x, y, scale=scale, metric=metric))
            h.measure("torch chunked", lambda: torch_chunked(x, y, scale, metric))
            if keops:
                keops_lse(x[:10], y[:10], scale, metric)  # compile outside the timing
                h.measure("pykeops", lambda: keops_lse(x, y, scale, metric))
            else:
                h.skip("pykeops", "not installed")
            for base, t in targets.items():
                h.target(base, t)
            if d == 3:
                rate = exp_rate()
                ours = h._case["impls"]["hotpath"]
                if "seconds" in ours:
                    h.target_value("pairs/s over torch.exp elements/s", n * n / ours["seconds"] / rate, at_least=1.0)

    # forward + backward: the backward costs at most 3x the forward
    x = torch.randn(n, 3, requires_grad=True)
    y = torch.randn(n, 3, requires_grad=True)
    v = torch.randn(n, 3, requires_grad=True)
    _fwd_bwd_case(h, x, y, v, at_most=3.0)

    # memory: n = m = 100,000 with values never allocates n x m
    N = 30000 if quick else 100000
    x, y, v = torch.randn(N, 3), torch.randn(N, 3), torch.randn(N, 3)
    h.case(f"lse+values sqeuclidean n=m={N} d=3 k=3 (memory)", work=N * N, unit="pairs")
    h.measure("hotpath", lambda: hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean", values=v), repeat=1)
    peak = h._case["impls"]["hotpath"].get("peak_mb")
    if peak is not None:
        h.target_value("peak memory growth MB", peak, at_most=100.0)


def run_cuda(h, quick):
    """The GPU cases of the OT speed issue (pairwise engine), same sizes with --quick (each call
    takes well under a second on an H100 / H200). The torch baseline takes 4096-row chunks: a
    stronger baseline on a GPU than the CPU's 1000."""
    from . import _gpu
    dev = h.device
    g = torch.Generator(device=dev).manual_seed(0)
    chunk = _gpu.sz(h, 4096)

    # d = 3, n = m = 100k, forward: >= 1.0 Tpairs/s
    n = _gpu.sz(h, 100_000)
    x, y = torch.randn(n, 3, device=dev, generator=g), torch.randn(n, 3, device=dev, generator=g)
    h.case(f"lse sqeuclidean n=m={n} d=3 forward", work=n * n, unit="pairs")
    h.measure("hotpath", lambda: hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean"))
    h.measure(f"torch chunked ({chunk} rows)", lambda: torch_chunked(x, y, 0.5, "sqeuclidean", chunk=chunk))
    ours = h._case["impls"]["hotpath"]
    if "seconds" in ours:
        h.target_value("Tpairs/s forward", n * n / ours["seconds"] / 1e12, at_least=1.0)
    try:
        with _gpu.tf32(False):
            diff = _gpu.rel_diff(hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean"),
                                 torch_chunked(x.double(), y.double(), 0.5, "sqeuclidean", chunk=chunk))
        h.target_value("relative difference vs float64 torch", diff, at_most=1e-5)
    except Exception as exc:
        h.note(f"value check failed: {type(exc).__name__}: {exc}")

    _cpp_vs_triton(h, x, y)

    # the same with values (k = 3), forward + backward: backward <= 2.5x forward
    v = torch.randn(n, 3, device=dev, generator=g)
    xg, yg, vg = x.clone().requires_grad_(), y.clone().requires_grad_(), v.clone().requires_grad_()

    _fwd_bwd_case(h, xg, yg, vg, at_most=2.5)
    del x, y, v, xg, yg, vg

    # d = 64, n = m = 65,536, dot and sqeuclidean, in both float32 precisions: >= 2x torch chunked
    n = _gpu.sz(h, 65_536)
    x, y = torch.randn(n, 64, device=dev, generator=g), torch.randn(n, 64, device=dev, generator=g)
    scale = 0.125
    for metric in ("dot", "sqeuclidean"):
        for on in (False, True):
            h.case(f"lse {metric} n=m={n} d=64 ({_gpu.precision_label(on)})", work=n * n, unit="pairs")
            h.measure("hotpath", _gpu.under_tf32(on, lambda: hp.pairwise_lse(x, y, scale=scale, metric=metric)))
            h.measure(f"torch chunked ({chunk} rows)",
                      _gpu.under_tf32(on, lambda: torch_chunked(x, y, scale, metric, chunk=chunk)))
            h.target(f"torch chunked ({chunk} rows)", 2)


def _cpp_vs_triton(h, x, y):
    """The two d = 3 forward kernels side by side at 10k and 100k points: where the CUDA C++
    kernel is faster decides backends/cuda/pairwise.py's CPP_MIN_PAIRS."""
    from hotpath.backends.cuda import pairwise as cuda_pairwise
    from hotpath.backends.triton import pairwise as triton_pairwise
    for n in sorted({min(10_000, x.shape[0]), x.shape[0]}):
        h.case(f"pairwise_lse forward kernels n=m={n} d=3 (CUDA C++ vs Triton)", work=n * n, unit="pairs")
        X, Y = x[None, :n].contiguous(), y[None, :n].contiguous()
        cb = torch.zeros(1, n, device=x.device)
        h.measure("Triton", lambda: triton_pairwise.pairwise_lse_fwd(X, Y, cb, None, 0.5, "dot"))
        if cuda_pairwise.cuda_kernels_built():
            h.measure("CUDA C++", lambda: cuda_pairwise.pairwise_lse_fwd_narrow.overload(X, Y, cb, None, 0.5, "dot"))
        else:
            h.skip("CUDA C++", "the extension was built without its CUDA kernels")


def _fwd_bwd_case(h, x, y, v, at_most):
    """fwd+bwd of the sqeuclidean engine with k = 3 values (x, y, v require grad), and the
    backward / forward time ratio against its target."""
    n = x.shape[0]

    def fwd():
        with torch.no_grad():
            return hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean", values=v)

    def fwd_bwd():
        lse, out = hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean", values=v)
        return torch.autograd.grad(lse.sum() + out.sum(), [x, y, v])

    h.case(f"fwd+bwd sqeuclidean n=m={n} d=3 k=3", work=n * n, unit="pairs")
    h.measure("hotpath fwd+bwd", fwd_bwd)
    h.measure("hotpath fwd", fwd)
    imp = h._case["impls"]
    if "seconds" in imp["hotpath fwd"] and "seconds" in imp["hotpath fwd+bwd"]:
        f, fb = imp["hotpath fwd"]["seconds"], imp["hotpath fwd+bwd"]["seconds"]
        h.target_value("backward time / forward time", (fb - f) / f, at_most=at_most)
