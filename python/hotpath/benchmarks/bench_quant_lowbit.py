"""Low-bit float / ternary GEMV and quantized embedding search; part of family `quant`.

Targets (CPU, 2 threads, ratios in one run):
  NVFP4 / MXFP4 GEMV, M = 1, K = 4096, N = 16384: >= 1.5x bfloat16 F.linear and >= 3x float32 F.linear.
  Ternary GEMV at the same shape: >= 2x Int8WeightOnly.
  Embedding search, 1,000,000 x 384 int8 codes, 1,000 queries, k = 10: >= 3x float32 topk_similarity,
  recall@10 vs float search >= 0.95 with rescoring; binary codes >= 10x faster than float.
"""
import torch
import torch.nn.functional as F


def _int8_weight_only(w):
    """Int8WeightOnly from hotpath.quant when present, else torch's int8 weight-only GEMV."""
    try:
        from hotpath.quant import Int8WeightOnly
        cfg = Int8WeightOnly()
        q = cfg.quantize_weight(w)
        return "Int8WeightOnly", lambda x: cfg.linear(x, q, None)
    except Exception:
        s = (w.abs().amax(1) / 127).clamp_min(1e-12)
        wi = torch.round(w / s[:, None]).to(torch.int8)
        return "torch._weight_int8pack_mm", lambda x: torch._weight_int8pack_mm(x, wi, s)


def _float_topk(queries, keys, k):
    try:
        from hotpath.contrastive import topk_similarity
        # the float32 search scores every pair in float32 (screen=False); the default bf16 screen
        # is measured beside it for information
        return "float32 topk_similarity", lambda: topk_similarity(queries, keys, k, screen=False)
    except Exception:
        def chunked():
            best_v, best_i = None, None
            for c0 in range(0, keys.shape[0], 65536):
                v, i = torch.topk(queries @ keys[c0:c0 + 65536].T, k, dim=1)
                i = i + c0
                if best_v is not None:
                    v, pos = torch.topk(torch.cat([best_v, v], 1), k, dim=1)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
                best_v, best_i = v, i
            return best_v, best_i
        return "float32 chunked mm+topk", chunked


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
    import hotpath as hp  # noqa: F401  (builds / loads the extension)
    from hotpath.quant import lowbit as L

    torch.manual_seed(0)
    K, N = 4096, 16384  # the GEMV shape, quick or not: at N = 4096 the float32 weight sits in L3
    w = torch.randn(N, K) * 0.02
    x = torch.randn(1, K)
    wb, xb = w.bfloat16(), x.bfloat16()
    i8name, i8 = _int8_weight_only(w)
    for name, cfg in [("MXFP4", L.MXFP4()), ("NVFP4(hadamard=True)", L.NVFP4(hadamard=True, hadamard_mode="always")),
                      ("NVFP4", L.NVFP4(hadamard=False)), ("FP8WeightOnly", L.FP8WeightOnly()), ("Ternary", L.Ternary())]:
        q = cfg.quantize_weight(w)
        h.case(f"{name} GEMV M=1 K={K} N={N}", work=N * K, unit="weights")
        h.measure("hotpath", lambda: cfg.linear(x, q, None))
        h.measure("torch bf16 F.linear", lambda: F.linear(xb, wb))
        h.measure("torch f32 F.linear", lambda: F.linear(x, w))
        if name == "Ternary":
            h.measure(i8name, lambda: i8(x))
            h.target(i8name, 2.0)
        elif name != "FP8WeightOnly":
            h.target("torch bf16 F.linear", 1.5)
            h.target("torch f32 F.linear", 3.0)
        else:
            h.target("torch bf16 F.linear", 1.0)
        if quick:
            h.measure("reference", lambda: cfg.linear(x, q, None, backend="reference"), repeat=1)

    # The same GEMVs on one thread (ours and the baselines alike): on a shared machine the 2-thread
    # figures include waits for a descheduled worker; one thread shows the kernels themselves.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cfg in [("MXFP4", L.MXFP4()), ("NVFP4(hadamard=True)", L.NVFP4(hadamard=True, hadamard_mode="always")),
                          ("Ternary", L.Ternary())]:
            q = cfg.quantize_weight(w)
            h.case(f"{name} GEMV M=1 K={K} N={N}, 1 thread", work=N * K, unit="weights")
            h.measure("hotpath", lambda: cfg.linear(x, q, None))
            if name == "Ternary":
                h.measure(i8name, lambda: i8(x))
                h.target(i8name, 2.0)
            else:
                h.measure("torch bf16 F.linear", lambda: F.linear(xb, wb))
                h.measure("torch f32 F.linear", lambda: F.linear(x, w))
                h.target("torch bf16 F.linear", 1.5)
                h.target("torch f32 F.linear", 3.0)
    finally:
        torch.set_num_threads(threads)

    # a prefill-sized GEMM for the record (no target in the issue)
    M = 64 if quick else 128
    xm = torch.randn(M, K)
    for name, cfg in [("NVFP4(hadamard=True)", L.NVFP4(hadamard=True, hadamard_mode="always")), ("Ternary", L.Ternary())]:
        q = cfg.quantize_weight(w)
        h.case(f"{name} GEMM M={M} K={K} N={N}", work=M * N * K, unit="MAC")
        h.measure("hotpath", lambda: cfg.linear(xm, q, None))
        h.measure("torch f32 F.linear", lambda: F.linear(xm, w))

    # quantized embedding search
    n, d, Q, k = (100_000, 384, 200, 10) if quick else (1_000_000, 384, 1000, 10)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(256, d, generator=g)
    keys = F.normalize(centers[torch.randint(0, 256, (n,), generator=g)] + 0.7 * torch.randn(n, d, generator=g), dim=1)
    queries = F.normalize(centers[torch.randint(0, 256, (Q,), generator=g)] + 0.7 * torch.randn(Q, d, generator=g), dim=1)
    fname, ffn = _float_topk(queries, keys, k)
    exact = ffn()[1]

    def recall(idx):
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, exact)) / exact.numel()

    c8 = L.quantize_embeddings(keys, "int8")
    h.case(f"int8 search n={n} d={d} Q={Q} k={k} + rescoring", work=n * Q, unit="pairs")
    h.measure("hotpath", lambda: L.embedding_search(queries, c8, k, rescore_with=keys))
    h.measure(fname, ffn)
    h.target(fname, 3.0)
    if fname == "float32 topk_similarity":
        from hotpath.contrastive import topk_similarity
        h.measure("topk_similarity bf16 screen (exact)", lambda: topk_similarity(queries, keys, k, screen=True))
    h.target_value("recall@10 int8 + rescoring", recall(L.embedding_search(queries, c8, k, rescore_with=keys)[1]), at_least=0.95)
    h.note(f"recall@10 int8 without rescoring: {recall(L.embedding_search(queries, c8, k)[1]):.4f}")

    cb = L.quantize_embeddings(keys, "binary")
    h.case(f"binary search n={n} d={d} Q={Q} k={k}", work=n * Q, unit="pairs")
    h.measure("hotpath", lambda: L.embedding_search(queries, cb, k))
    h.measure(fname, ffn)
    h.target(fname, 10.0)
    rb = recall(L.embedding_search(queries, cb, k, rescore_with=keys, rescore_multiplier=10)[1])
    h.note(f"recall@10 binary: {recall(L.embedding_search(queries, cb, k)[1]):.4f}; with 10x rescoring: {rb:.4f}")


def run_cuda(h, quick):
    """The GPU cases of the quantization speed issue for the low-bit formats, K = 4096, N = 16384,
    quick or not: decode GEMV M = 1 MXFP4 / NVFP4 >= 3x bf16 F.linear, Ternary >= 4x, FP8WeightOnly
    >= 1.7x, each at >= 60% of the HBM bandwidth its weight bytes allow; prefill GEMM M = 4096
    >= 0.8x bf16 (weight-only), FP8 dynamic >= 1.5x where the format exists. Without --quick, the
    MiniLM model quantized with each weight-only format, encoded at batch 256 against its bf16 copy
    (>= 1.0x), where the model package is installed. (The GPU embedding search rows are in the
    contrastive family, with topk_similarity.)"""
    import hotpath.quant as Q
    from . import _gpu
    bw = _gpu.hbm_bandwidth(h)
    p = _gpu.quant_problem(h, seed=1)
    formats = [("FP8WeightOnly", Q.FP8WeightOnly(), 1.7, 0.8), ("MXFP4", Q.MXFP4(), 3.0, 0.8),
               ("NVFP4", Q.NVFP4(hadamard=False), 3.0, 0.8),
               ("NVFP4(hadamard=True)", Q.NVFP4(hadamard=True, hadamard_mode="always"), 3.0, 0.8),
               ("Ternary", Q.Ternary(), 4.0, 0.8)]
    if hasattr(Q, "FP8Dynamic"):
        formats.append(("FP8Dynamic", Q.FP8Dynamic(), None, 1.5))
    else:
        h.note("FP8Dynamic: not in hotpath.quant yet, no rows")
    for name, cfg, gemv_t, gemm_t in formats:
        _gpu.quant_format_cases(h, name, cfg, p, gemv_target=gemv_t, gemm_target=gemm_t, bandwidth=bw)
    del p
    if quick:
        return
    try:
        import copy
        from hotpath.benchmarks import minilm
        model = minilm.load_model(device=h.device)
    except Exception as exc:  # sentence-transformers or the bundled model package missing
        h.case("MiniLM encode on the GPU")
        h.skip("hotpath", f"MiniLM unavailable: {type(exc).__name__}: {str(exc)[:200]}")
        return
    sents = (minilm.SENTENCES * 3)[:256]
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for name, cfg in (("Int8WeightOnly", Q.Int8WeightOnly()), ("Int4WeightOnly g128", Q.Int4WeightOnly(group_size=128)),
                      ("FP8WeightOnly", Q.FP8WeightOnly()), ("MXFP4", Q.MXFP4()), ("NVFP4(hadamard=True)", Q.NVFP4()),
                      ("Ternary", Q.Ternary())):
        h.case(f"MiniLM encode 256 sentences batch 256, {name}", work=256, unit="sentences")
        try:
            qm = minilm.quantized_copy(model, cfg)
        except Exception as exc:
            h.skip("hotpath", f"quantize_ failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        h.measure("hotpath", lambda: minilm.encode(qm, sents, batch_size=256))
        h.measure("bf16 model", lambda: minilm.encode(model_bf16, sents, batch_size=256))
        h.target("bf16 model", 1.0)
        cos = torch.nn.functional.cosine_similarity(minilm.encode(model), minilm.encode(qm), dim=1)
        h.note(f"MiniLM {name} on {h.device}: mean cosine vs the float model {float(cos.mean()):.5f}")
        del qm
