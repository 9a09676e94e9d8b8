"""Helpers of the GPU cases (`bench --device cuda`): precision switch, optional peers, HBM bandwidth.

Not a benchmark family (the harness only collects bench_*.py). Nothing here touches CUDA at import.
"""
import contextlib
import importlib
import os
import warnings

import torch


@contextlib.contextmanager
def tf32(on):
    """float32 matmuls on TF32 tensor cores (on) or in full fp32 (off), restored afterwards.

    torch's own switch, which hotpath's float32 GPU kernels follow too: the same setting applies to
    ours and to the peer in one comparison.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if on else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def tf32_state():
    """"on" / "off" for float32 matmuls on TF32 tensor cores; "unknown" where torch refuses to say
    (it raises when the legacy and the new precision APIs were mixed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "on" if torch.get_float32_matmul_precision() != "highest" else "off"
    except Exception:
        return "unknown"


def under_tf32(on, fn):
    """fn run with TF32 on / off (kernels read the switch at launch; the harness syncs outside)."""
    def run():
        with tf32(on):
            return fn()
    return run


@contextlib.contextmanager
def env(name, value):
    """os.environ[name] = value inside ("auto" or None: unset), restored afterwards; hotpath reads
    its switches per call."""
    old = os.environ.pop(name, None)
    if value not in (None, "auto"):
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if old is not None:
            os.environ[name] = old


def under_env(name, value, fn):
    """fn run inside env(name, value)."""
    def run():
        with env(name, value):
            return fn()
    return run


def precision_label(on):
    """The case's float32 precision; under full precision the peers' GEMMs are IEEE and hotpath's
    dots 3xTF32 on Hopper, both at float32 accuracy (README, "Precision policy")."""
    if on:
        return "TF32"
    try:
        from hotpath.backends.triton.pairwise import full_fp32
        ours = "3xTF32" if full_fp32() == "tf32x3" else "IEEE"
    except Exception:   # no triton / no GPU: the label only
        return "fp32, no TF32"
    return f"fp32, no TF32 (hotpath {ours})"


def import_peer(*names):
    """The first importable module of names, else None (a peer is optional; any import failure,
    e.g. a wheel built for another torch, counts as absent)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except Exception:
            continue
    return None


def flash_sinkhorn_loss(device, **kw):
    """flash-sinkhorn's SamplesLoss (package flash_sinkhorn; ot_triton in its older releases), or
    (None, why)."""
    if torch.device(device).type != "cuda":
        return None, "flash-sinkhorn runs on CUDA only"
    mod = import_peer("flash_sinkhorn", "ot_triton")
    if mod is None:
        return None, "flash-sinkhorn not installed"
    try:
        return mod.SamplesLoss("sinkhorn", **kw), None
    except Exception as exc:  # an older release without one of the keywords
        return None, f"flash-sinkhorn SamplesLoss({kw}) failed: {type(exc).__name__}: {exc}"


def sz(h, n, multiple=1):
    """A problem size of a GPU case. `h.shrink` (unset: 1) divides every size, keeping multiples:
    tests dry-run the GPU cases on CPU tensors with tiny problems that way."""
    s = getattr(h, "shrink", 1)
    if s == 1:
        return n
    return max(multiple, min(n, 16), (int(n / s) // multiple) * multiple)


_BANDWIDTH = {}


def hbm_bandwidth(h, nbytes=2 << 30):
    """Achieved HBM bandwidth (bytes/s) of a device-to-device copy, read + write traffic, measured
    once per device and recorded as its own case; None when it failed."""
    if h.device in _BANDWIDTH:
        return _BANDWIDTH[h.device]
    nbytes = sz(h, nbytes, 4)
    src = torch.empty(nbytes // 4, device=h.device)
    dst = torch.empty_like(src)
    h.case(f"copy {nbytes >> 20} MB device to device (HBM bandwidth, read + write)", work=2 * nbytes, unit="B")
    h.measure("torch copy_", lambda: dst.copy_(src))
    r = h._case["impls"].get("torch copy_", {})
    del src, dst
    _BANDWIDTH[h.device] = 2 * nbytes / r["seconds"] if "seconds" in r else None
    return _BANDWIDTH[h.device]


def rel_diff(ours, other):
    """max |ours - other| / max |other| over tensors (float64), a scalar."""
    o, t = ours.detach().double(), other.detach().double()
    return float((o - t).abs().max() / t.abs().max().clamp_min(1e-30))


# Quantized linear layers (the quantization speed issue): K = 4096, N = 16384, decode GEMV M = 1
# and prefill GEMM M = 4096, each format against bf16 / float32 F.linear.
QUANT_K, QUANT_N, QUANT_M = 4096, 16384, 4096


def quant_problem(h, seed=0):
    """(w, x1, xm) float32 and their bf16 copies on h.device, sizes through sz()."""
    g = torch.Generator(device=h.device).manual_seed(seed)
    K, N, M = sz(h, QUANT_K, 256), sz(h, QUANT_N, 256), sz(h, QUANT_M, 16)
    w = torch.randn(N, K, device=h.device, generator=g) * 0.02
    x1 = torch.randn(1, K, device=h.device, generator=g)
    xm = torch.randn(M, K, device=h.device, generator=g)
    return {"w": w, "x1": x1, "xm": xm, "wb": w.bfloat16(), "x1b": x1.bfloat16(), "xmb": xm.bfloat16()}


def library_prefill(cfg):
    """(label of the fused prefill, label of the "library" one) for the formats that have both
    (backends/triton/_qgemm.py, prefill_strategy), else None."""
    from hotpath import quant as Q
    if type(cfg) is Q.FP8Dynamic:
        return "hotpath fused fp8 GEMM", "hotpath torch._scaled_mm (row-wise scales)"
    if type(cfg) in (Q.Int8Dynamic, Q.Ternary):
        return "hotpath fused int8 GEMM", "hotpath torch._int_mm + epilogue"
    if type(cfg) in (Q.Int8WeightOnly, Q.Int4WeightOnly, Q.FP8WeightOnly, Q.MXFP4, Q.NVFP4, Q.Int4Dynamic):
        return "hotpath fused dequantizing GEMM", "hotpath dequant + cuBLAS"
    return None


def graphed(fn, warmup=2):
    """fn as a CUDA graph replay, the way served models run a decode step (no Python or launch
    cost per kernel): the first call warms fn up on a side stream (compiles, plans the launches)
    and captures it; every call replays the capture and returns its output."""
    state = {}

    def run():
        if "graph" not in state:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                state["out"] = fn()
            state["graph"] = graph
        state["graph"].replay()
        return state["out"]
    return run


def _gemv_targets(h, gemv_target, bandwidth, wbytes):
    if gemv_target:
        h.target("torch bf16 F.linear", gemv_target)
        ours = h._case["impls"].get("hotpath", {})
        if bandwidth and "seconds" in ours:
            h.target_value(f"fraction of HBM bandwidth ({wbytes >> 20} MB of weights)",
                           wbytes / ours["seconds"] / bandwidth, at_least=0.6)


def quant_format_cases(h, name, cfg, p, gemv_target=None, gemm_target=None, bandwidth=None, int_mm=False):
    """One format's GEMV and GEMM cases. hotpath is fed bf16 activations, as served models feed
    it (the weight tiles are dequantized to bf16 for the tensor cores), and float32 activations
    for the record (3xTF32 dots unless TF32 is allowed); the baselines are bf16 and float32
    (no TF32) F.linear, and torch._int_mm on random int8 operands (the int8 GEMM alone)."""
    import torch.nn.functional as F
    w, x1, xm = p["w"], p["x1"], p["xm"]
    N, K = w.shape
    M = xm.shape[0]
    try:
        q = cfg.quantize_weight(w)
    except Exception as exc:
        h.case(f"{name} GEMV M=1 K={K} N={N}")
        h.skip("hotpath", f"quantize_weight failed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    wbytes = sum(t.numel() * t.element_size() for t in q.values() if torch.is_tensor(t))

    h.case(f"{name} GEMV M=1 K={K} N={N}", work=wbytes, unit="B weights")
    h.measure("hotpath", lambda: cfg.linear(p["x1b"], q, None))
    h.measure("hotpath f32 activations", lambda: cfg.linear(x1, q, None))
    h.measure("torch bf16 F.linear", lambda: F.linear(p["x1b"], p["wb"]))
    h.measure("torch f32 F.linear", under_tf32(False, lambda: F.linear(x1, w)))
    _gemv_targets(h, gemv_target, bandwidth, wbytes)
    if h.cuda:
        # the same step replayed from a CUDA graph, ours and bf16's: the kernels' time without the
        # Python and launch cost of each call, which at a few microseconds of weights is most of
        # an eager call
        h.case(f"{name} GEMV M=1 K={K} N={N}, CUDA graph replay", work=wbytes, unit="B weights")
        h.measure("hotpath", graphed(lambda: cfg.linear(p["x1b"], q, None)))
        h.measure("torch bf16 F.linear", graphed(lambda: F.linear(p["x1b"], p["wb"])))
        _gemv_targets(h, gemv_target, bandwidth, wbytes)

    h.case(f"{name} GEMM M={M} K={K} N={N}", work=2 * M * N * K, unit="flop")
    h.measure("hotpath", lambda: cfg.linear(p["xmb"], q, None))
    labels = library_prefill(cfg)
    if labels:
        # the two prefill strategies side by side: "hotpath" above is whichever LIBRARY_MIN_M picks
        for mode, label in zip(("fused", "library"), labels):
            h.measure(label, under_env("HOTPATH_QUANT_PREFILL", mode, lambda: cfg.linear(p["xmb"], q, None)))
    h.measure("hotpath f32 activations", lambda: cfg.linear(xm, q, None))
    h.measure("torch bf16 F.linear", lambda: F.linear(p["xmb"], p["wb"]))
    h.measure("torch f32 F.linear", under_tf32(False, lambda: F.linear(xm, w)))
    if int_mm:
        g = torch.Generator(device=h.device).manual_seed(1)
        a8 = torch.randint(-127, 128, (M, K), device=h.device, dtype=torch.int8, generator=g)
        b8 = torch.randint(-127, 128, (N, K), device=h.device, dtype=torch.int8, generator=g)
        h.measure("torch._int_mm (int8 GEMM alone)", lambda: torch._int_mm(a8, b8.t()))
    if gemm_target:
        h.target("torch bf16 F.linear", gemm_target)
    del q
