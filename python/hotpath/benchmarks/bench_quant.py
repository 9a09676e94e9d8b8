"""Benchmarks of the integer quantized linear layers, CPU.

Cases: Int8Dynamic GEMM (vs torch.ao quantize_dynamic / fbgemm and float F.linear), Int8WeightOnly
GEMV (vs torch._weight_int8pack_mm and a copy-bandwidth measurement), Int4WeightOnly GEMV and
Int4Dynamic GEMM (vs torch._weight_int4pack_mm_for_cpu), the module's per-call cost (vs nn.Linear),
MiniLM cosine and encode time.
Weights are quantized with round-to-nearest here: kernel speed does not depend on the scale choice.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from hotpath.quant import Int4Dynamic, Int4WeightOnly, Int8Dynamic, Int8WeightOnly
from hotpath.reference import quant_int as ref


def _copy_bandwidth(h, nbytes):
    """Read bandwidth from a copy: bytes read / time of dst.copy_(src) (src >> caches)."""
    src = torch.empty(nbytes // 4)
    dst = torch.empty_like(src)
    h.case(f"copy {nbytes >> 20} MB (DRAM bandwidth)", work=nbytes, unit="B read")
    h.measure("torch copy_", lambda: dst.copy_(src))
    r = h._case["impls"].get("torch copy_", {})
    return nbytes / r["seconds"] if "seconds" in r else None


def _int4_torch(w_codes, scale, zero, group_size):
    """torch's int4 CPU kernel on the same codes: w = (q - 8) * s + z' with z' = (8 - zero) * s."""
    N, K = w_codes.shape
    packed = torch._convert_weight_to_int4pack_for_cpu(w_codes.to(torch.int32), 1)
    s = scale.t().contiguous()
    zz = ((8.0 - zero.float()) * scale).t().contiguous()
    sz = torch.stack([s, zz], dim=-1)
    return lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    K = 4096
    N_gemv = 8192 if quick else 16384
    M_gemm, N_gemm = 128, (2048 if quick else 4096)

    bw = _copy_bandwidth(h, (128 if quick else 256) << 20)

    # ---- Int8Dynamic GEMM
    w = torch.randn(N_gemm, K) * 0.02
    x = torch.randn(M_gemm, K)
    cfg = Int8Dynamic()
    q = cfg.quantize_weight(w)
    lin = nn.Linear(K, N_gemm, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    qd = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
    h.case(f"Int8Dynamic GEMM M={M_gemm} K={K} N={N_gemm}", work=2 * M_gemm * K * N_gemm, unit="op")
    h.measure("hotpath", lambda: cfg.linear(x, q, None))
    h.measure("torch.ao quantize_dynamic", lambda: qd(x))
    h.measure("F.linear fp32", lambda: F.linear(x, w))
    h.measure("reference", lambda: ref.int8_dynamic_linear(x, q["qweight"], q["scale"], q["colsum"], None), repeat=1)
    h.target("torch.ao quantize_dynamic", 0.8)
    h.target("F.linear fp32", 4.0)
    # the same case on one thread: on a shared machine two-thread times also measure how long the
    # second thread waits for a core; one thread shows the kernels' own speed
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h.case(f"Int8Dynamic GEMM M={M_gemm} K={K} N={N_gemm}, 1 thread", work=2 * M_gemm * K * N_gemm, unit="op")
        h.measure("hotpath", lambda: cfg.linear(x, q, None))
        h.measure("torch.ao quantize_dynamic", lambda: qd(x))
        h.measure("F.linear fp32", lambda: F.linear(x, w))
        h.target("torch.ao quantize_dynamic", 0.8)
        h.target("F.linear fp32", 4.0)
    finally:
        torch.set_num_threads(nthreads)

    # ---- Int4Dynamic GEMM (W4A8)
    c4d = Int4Dynamic(group_size=128, symmetric=True, scale_method="rtn")
    q4d = c4d.quantize_weight(w)
    codes = ref.unpack_int4_vnni(q4d["qweight"], N_gemm, K)
    t4 = _int4_torch(codes, q4d["scale"].t(), q4d["zero"].t(), 128)
    h.case(f"Int4Dynamic GEMM M={M_gemm} K={K} N={N_gemm} g128", work=2 * M_gemm * K * N_gemm, unit="op")
    h.measure("hotpath", lambda: c4d.linear(x, q4d, None))
    h.measure("torch int4pack_mm_for_cpu", lambda: t4(x), repeat=1)
    h.measure("F.linear fp32", lambda: F.linear(x, w))
    h.target("torch int4pack_mm_for_cpu", 3.0)
    del w, lin, qd, q, q4d, codes

    # ---- weight-only GEMV, weights beyond the caches
    w = torch.randn(N_gemv, K) * 0.02
    x1 = torch.randn(1, K)
    c8 = Int8WeightOnly()
    q8 = c8.quantize_weight(w)
    h.case(f"Int8WeightOnly GEMV M=1 K={K} N={N_gemv}", work=N_gemv * K, unit="B weights")
    h.measure("hotpath", lambda: c8.linear(x1, q8, None))
    h.measure("torch _weight_int8pack_mm", lambda: torch._weight_int8pack_mm(x1, q8["qweight"], q8["scale"]))
    h.measure("F.linear fp32", lambda: F.linear(x1, w))
    h.target("torch _weight_int8pack_mm", 1.0)
    ours = h._case["impls"].get("hotpath", {})
    if bw and "seconds" in ours:
        h.target_value("fraction of copy read bandwidth", (N_gemv * K / ours["seconds"]) / bw, at_least=0.7)
    del q8

    c4 = Int4WeightOnly(group_size=128, symmetric=True, scale_method="rtn")
    q4 = c4.quantize_weight(w)
    codes = ref.unpack_int4_rows(q4["qweight"], K)
    t4 = _int4_torch(codes, q4["scale"], q4["zero"], 128)
    h.case(f"Int4WeightOnly GEMV M=1 K={K} N={N_gemv} g128", work=N_gemv * K // 2, unit="B weights")
    h.measure("hotpath", lambda: c4.linear(x1, q4, None))
    h.measure("torch int4pack_mm_for_cpu", lambda: t4(x1))
    h.measure("F.linear fp32", lambda: F.linear(x1, w))
    h.target("torch int4pack_mm_for_cpu", 1.2)
    del q4, codes, w
    _call_overhead(h)

    # ---- MiniLM: embedding quality and encode time
    try:
        from hotpath.benchmarks import minilm
        model = minilm.load_model()
    except Exception as exc:  # sentence-transformers / model package missing
        h.case("MiniLM")
        h.skip("hotpath", f"MiniLM unavailable: {type(exc).__name__}: {exc}")
        return
    configs = [("Int8WeightOnly", Int8WeightOnly(), 0.999), ("Int8Dynamic", Int8Dynamic(), 0.995),
               ("Int4WeightOnly g32", Int4WeightOnly(group_size=32), 0.97),
               ("Int4WeightOnly g128", Int4WeightOnly(group_size=128), 0.95)]
    if quick:
        configs = configs[:2] + configs[3:]
    qmodels = {}
    for name, c, target in configs:
        r = minilm.evaluate(c, model)
        qmodels[name] = r["model"]
        h.case(f"MiniLM cosine {name}")
        h.target_value(f"mean cosine vs float ({r['n_sentences']} sentences)", r["mean_cosine"], at_least=target)
    # low-bit formats: FP8 by round-to-nearest and by GPTQ rounding (calibrated on
    # sentences disjoint from the evaluation set), NVFP4 with the Hadamard rotation
    from hotpath.quant import lowbit as L
    fp8 = minilm.evaluate(L.FP8WeightOnly(), model)["mean_cosine"]
    h.case("MiniLM cosine FP8WeightOnly, GPTQ rounding")
    h.target_value("mean cosine vs float (120 sentences)", minilm.evaluate(L.FP8WeightOnly(), model, gptq=True)["mean_cosine"],
                   at_least=0.999)
    h.note(f"FP8WeightOnly with round-to-nearest: mean cosine {fp8:.5f} (E4M3's 3 mantissa bits)")
    h.case("MiniLM cosine NVFP4(hadamard=True)")
    h.target_value("mean cosine vs float (120 sentences)", minilm.evaluate(L.NVFP4(hadamard=True), model)["mean_cosine"],
                   at_least=0.95)
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def mean_sqnr(cfg):
        return sum(10 * torch.log10(w.pow(2).sum() / (w - cfg.dequantize_weight(cfg.quantize_weight(w))).pow(2).sum())
                   for w in ws).item() / len(ws)

    h.case("MiniLM weight SQNR, NVFP4 with Hadamard minus without (mean over layers)")
    h.target_value("dB", mean_sqnr(L.NVFP4(hadamard=True)) - mean_sqnr(L.NVFP4(hadamard=False)), at_least=0.0)
    if not quick:
        h.case("MiniLM cosine Int4WeightOnly g128, GPTQ rounding")
        h.target_value("mean cosine vs float (120 sentences)",
                       minilm.evaluate(Int4WeightOnly(group_size=128), model, gptq=True)["mean_cosine"], at_least=0.95)

    sents = (minilm.SENTENCES * 3)[:256]
    for name in ("Int8Dynamic", "Int8WeightOnly"):
        h.case(f"MiniLM encode 256 sentences, {name}", work=256, unit="sentences")
        h.measure("hotpath", lambda m=qmodels[name]: minilm.encode(m, sents))
        h.measure("float model", lambda: minilm.encode(model, sents))
        if name == "Int8Dynamic":  # weight-only GEMM dequantizes then runs fp32: no prefill speed-up expected
            h.target("float model", 1.0)


def _call_overhead(h):
    """A decode step through small layers is bound by the cost of a call, not by the weights: the
    QuantLinear module (checks, NaN-row rule, dispatch) against nn.Linear's, one thread, M = 1."""
    from hotpath.quant import QuantLinear
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lin = nn.Linear(64, 64)
        x = torch.randn(1, 64)
        h.case("module call M=1 K=N=64, 1 thread (per-call overhead)", work=1, unit="calls")
        with torch.no_grad():
            for name, cfg in (("Int8WeightOnly", Int8WeightOnly()), ("Int4WeightOnly g32", Int4WeightOnly(group_size=32))):
                q = QuantLinear.from_linear(lin, cfg)
                h.measure(f"hotpath QuantLinear {name}", lambda q=q: q(x), repeat=300)
            h.measure("nn.Linear fp32", lambda: lin(x), repeat=300)
    finally:
        torch.set_num_threads(threads)


def run_cuda(h, quick):
    """The GPU cases of the quantization speed issue for the integer formats (the low-bit float and
    ternary formats are in bench_quant_lowbit), K = 4096, N = 16384, GEMV M = 1 and GEMM M = 4096,
    quick or not: decode >= 1.7x (int8) / 3x (int4) bf16 F.linear at >= 60% of the HBM bandwidth
    the weight bytes allow; prefill Int8Dynamic >= 1.3x, Int4Dynamic >= 1.0x, weight-only >= 0.8x."""
    from . import _gpu
    warnings.filterwarnings("ignore")
    bw = _gpu.hbm_bandwidth(h)
    p = _gpu.quant_problem(h)
    for name, cfg, gemv_t, gemm_t in (("Int8WeightOnly", Int8WeightOnly(), 1.7, 0.8),
                                      ("Int8Dynamic", Int8Dynamic(), None, 1.3),
                                      ("Int4WeightOnly g128", Int4WeightOnly(group_size=128), 3.0, 0.8),
                                      ("Int4Dynamic g128", Int4Dynamic(group_size=128), None, 1.0)):
        _gpu.quant_format_cases(h, name, cfg, p, gemv_target=gemv_t, gemm_target=gemm_t, bandwidth=bw,
                                int_mm=name == "Int8Dynamic")
    h.note("GPU quant rows: hotpath takes float32 activations; its weights were quantized on the GPU")
