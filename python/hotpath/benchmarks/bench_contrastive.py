"""Family `contrastive`: fused streaming losses against open_clip (ClipLoss, SigLipLoss),
pytorch-metric-learning (SupConLoss, TripletMarginLoss + BatchHardMiner) and a chunked
matmul + topk retrieval baseline. Forward + backward timed together; peak memory growth."""
import importlib.util
import os
import site

import torch

import hotpath as hp
from hotpath.reference import contrastive as R

C = hp.contrastive


def _open_clip_loss():
    for base in site.getsitepackages():
        path = os.path.join(base, "open_clip", "loss.py")
        if os.path.exists(path):  # open_clip's package __init__ needs torchvision: load loss.py alone
            spec = importlib.util.spec_from_file_location("_oc_loss", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def _pml():
    try:
        from pytorch_metric_learning import losses, miners
        return losses, miners
    except Exception:
        return None


def _unit(n, d):
    x = torch.randn(n, d)
    return x / x.norm(dim=1, keepdim=True)


def fwd_bwd(loss_fn, *leaves):
    def run():
        for t in leaves:
            t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()
    return run


DEVICES = ("cpu", "cuda")


def run(h, quick):
    if h.cuda:
        return run_cuda(h, quick)
    torch.manual_seed(0)
    oc = _open_clip_loss()
    pml = _pml()
    d = 512

    # CLIP ------------------------------------------------------------------------------------
    B = 4096 if quick else 16384
    img, txt = _unit(B, d).requires_grad_(), _unit(B, d).requires_grad_()
    scale = torch.tensor(100.0, requires_grad=True)
    h.case(f"ClipLoss fwd+bwd B={B} d={d}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.ClipLoss()(img, txt, scale), img, txt, scale), value=float)
    if oc is not None:
        h.measure("open_clip", fwd_bwd(lambda: oc.ClipLoss()(img, txt, scale), img, txt, scale), value=float)
        h.target_memory("open_clip", 0.05)
        h.target("open_clip", 0.8, what="speed-up (time <= 1.25x)")
    else:
        h.skip("open_clip", "not installed")

    Bbig = 8192 if quick else 65536
    if not quick or Bbig != B:
        del img, txt
        ib, tb = _unit(Bbig, d).requires_grad_(), _unit(Bbig, d).requires_grad_()
        h.case(f"ClipLoss fwd+bwd B={Bbig} d={d} (B x B float32 would be {Bbig * Bbig * 4 / 2**30:.1f} GiB)",
               work=Bbig * Bbig, unit="pairs")
        h.measure("hotpath", fwd_bwd(lambda: C.ClipLoss()(ib, tb, scale), ib, tb, scale), repeat=1)
        peak = h._case["impls"].get("hotpath", {}).get("peak_mb")
        if peak is not None:
            h.target_value("peak MB growth", peak, at_most=1024)
        del ib, tb

    # SigLIP ----------------------------------------------------------------------------------
    B = 4096 if quick else 16384
    img, txt = _unit(B, d).requires_grad_(), _unit(B, d).requires_grad_()
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    h.case(f"SigLipLoss fwd+bwd B={B} d={d}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.SigLipLoss()(img, txt, s, b), img, txt, s, b), value=float)
    if oc is not None:
        h.measure("open_clip", fwd_bwd(lambda: oc.SigLipLoss()(img, txt, s, b), img, txt, s, b), value=float)
        h.target_memory("open_clip", 0.05)
        h.target("open_clip", 0.8, what="speed-up (time <= 1.25x)")
    del img, txt

    # SupCon / triplet ---------------------------------------------------------------------------
    B, dm = (2048, 256) if quick else (8192, 256)
    x = torch.randn(B, dm).requires_grad_()
    lab = torch.randint(0, 100, (B,))
    h.case(f"supcon_loss fwd+bwd B={B} d={dm}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.supcon_loss(x, lab, temperature=0.1), x), value=float)
    h.measure("reference", fwd_bwd(lambda: R.supcon_loss(x, lab, 0.1), x), value=float)
    if pml is not None:
        sup = pml[0].SupConLoss(temperature=0.1)
        h.measure("pytorch-metric-learning", fwd_bwd(lambda: sup(x, lab), x), value=float)
        h.target("pytorch-metric-learning", 3)
        h.target_memory("pytorch-metric-learning", 0.1)

    h.case(f"triplet_loss batch_hard fwd+bwd B={B} d={dm}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.triplet_loss(x, lab, margin=0.2), x), value=float)
    h.measure("reference", fwd_bwd(lambda: R.triplet_loss(x, lab, 0.2), x), value=float)
    if pml is not None:
        tl, miner = pml[0].TripletMarginLoss(margin=0.2), pml[1].BatchHardMiner()
        h.measure("pytorch-metric-learning", fwd_bwd(lambda: tl(x, lab, miner(x, lab)), x), value=float)
        h.target("pytorch-metric-learning", 3)
        h.target_memory("pytorch-metric-learning", 0.1)
    del x

    # top-k retrieval ----------------------------------------------------------------------------
    nq, nk, dk, k = (2000, 100_000, 384, 10) if quick else (10_000, 1_000_000, 384, 10)
    q, keys = _unit(nq, dk), _unit(nk, dk)
    h.case(f"topk_similarity q={nq} keys={nk} d={dk} k={k}", work=nq * nk, unit="pairs")
    h.measure("hotpath", lambda: C.topk_similarity(q, keys, k), repeat=2 if not quick else None)
    h.measure("hotpath float32 GEMM (screen=False)", lambda: C.topk_similarity(q, keys, k, screen=False),
              repeat=2 if not quick else None)
    h.measure("torch chunked matmul+topk", lambda: R.topk_chunked(q, keys, k, chunk=16384),
              repeat=2 if not quick else None)
    h.target("torch chunked matmul+topk", 2)
    h.note("CPU float32; hotpath times include forward and backward where a loss is benchmarked")


def run_cuda(h, quick):
    """The GPU cases of the contrastive speed issue. ClipLoss / SigLipLoss B = 32,768 d = 512
    (--quick: 16,384) in bf16 and in float32 with and without TF32 (both sweep strategies), against open_clip's loss.py with peak
    memory; supcon / triplet B = 32,768 d = 256 (--quick: 8,192) against pytorch-metric-learning;
    topk_similarity over 1M keys d = 384 with 10k queries (--quick: 2k) against one matmul + topk;
    int8 embedding search over 1M keys against the float topk_similarity."""
    from . import _gpu
    dev = h.device
    g = torch.Generator(device=dev).manual_seed(0)
    oc = _open_clip_loss()
    pml = _pml()
    d = 512

    def unit(n, dim, dtype=torch.float32):
        x = torch.randn(n, dim, device=dev, generator=g)
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)

    # CLIP / SigLIP: bf16 <= 0.7x open_clip's time, float32 <= 1.0x (with and without TF32, ours
    # and open_clip's alike), memory <= 5%
    B = _gpu.sz(h, 16_384 if quick else 32_768)
    for dtype, on, speed in ((torch.bfloat16, False, 1 / 0.7), (torch.float32, False, 1.0), (torch.float32, True, 1.0)):
        tag = "bf16" if dtype == torch.bfloat16 else _gpu.precision_label(on)
        img, txt = unit(B, d, dtype).requires_grad_(), unit(B, d, dtype).requires_grad_()
        scale = torch.tensor(100.0, device=dev, requires_grad=True)
        s, b = torch.tensor(10.0, device=dev, requires_grad=True), torch.tensor(-10.0, device=dev, requires_grad=True)
        losses = (("ClipLoss", lambda L: lambda: L()(img, txt, scale), (img, txt, scale)),
                  ("SigLipLoss", lambda L: lambda: L()(img, txt, s, b), (img, txt, s, b)))
        for name, call, leaves in losses:
            h.case(f"{name} fwd+bwd B={B} d={d} {tag}", work=B * B, unit="pairs")
            ours = fwd_bwd(call(getattr(C, name)), *leaves)
            h.measure("hotpath", _gpu.under_tf32(on, ours), value=float)
            # both sweep strategies (backends/cuda/contrastive.py); "hotpath" is what auto picks
            for mode, label in (("fused", "hotpath fused Triton sweeps"), ("library", "hotpath cuBLAS row chunks")):
                h.measure(label, _gpu.under_tf32(on, _gpu.under_env("HOTPATH_CONTRASTIVE", mode, ours)), value=float)
            if oc is not None:
                h.measure("open_clip", _gpu.under_tf32(on, fwd_bwd(call(getattr(oc, name)), *leaves)), value=float)
                h.target("open_clip", speed, what=f"speed-up (time <= {1 / speed:.2g}x)")
                h.target_memory("open_clip", 0.05)
            else:
                h.skip("open_clip", "open_clip_torch not installed")
        del img, txt
    if not quick:  # B = 131,072 runs in under 2 GB (its B x B float32 logits alone: 64 GiB)
        Bbig = _gpu.sz(h, 131_072)
        ib, tb = unit(Bbig, d).requires_grad_(), unit(Bbig, d).requires_grad_()
        scale = torch.tensor(100.0, device=dev, requires_grad=True)
        h.case(f"ClipLoss fwd+bwd B={Bbig} d={d} fp32 (memory)", work=Bbig * Bbig, unit="pairs")
        h.measure("hotpath", fwd_bwd(lambda: C.ClipLoss()(ib, tb, scale), ib, tb, scale), repeat=1)
        peak = h._case["impls"].get("hotpath", {}).get("peak_mb")
        if peak is not None:
            h.target_value("peak MB growth", peak, at_most=2048)
        del ib, tb

    # supcon / triplet: >= 3x pytorch-metric-learning, <= 5% of its memory
    B, dm = _gpu.sz(h, 8192 if quick else 32_768), 256
    x = torch.randn(B, dm, device=dev, generator=g).requires_grad_()
    lab = torch.randint(0, 100, (B,), device=dev, generator=g)
    h.case(f"supcon_loss fwd+bwd B={B} d={dm}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.supcon_loss(x, lab, temperature=0.1), x), value=float)
    if pml is not None:
        sup = pml[0].SupConLoss(temperature=0.1)
        h.measure("pytorch-metric-learning", fwd_bwd(lambda: sup(x, lab), x), value=float)
        h.target("pytorch-metric-learning", 3)
        h.target_memory("pytorch-metric-learning", 0.05)
    else:
        h.skip("pytorch-metric-learning", "not installed")
    h.case(f"triplet_loss batch_hard fwd+bwd B={B} d={dm}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.triplet_loss(x, lab, margin=0.2), x), value=float)
    if pml is not None:
        tl, miner = pml[0].TripletMarginLoss(margin=0.2), pml[1].BatchHardMiner()
        h.measure("pytorch-metric-learning", fwd_bwd(lambda: tl(x, lab, miner(x, lab)), x), value=float)
        h.target("pytorch-metric-learning", 3)
        h.target_memory("pytorch-metric-learning", 0.05)
    else:
        h.skip("pytorch-metric-learning", "not installed")
    h.case(f"triplet_loss batch_all fwd+bwd B={B} d={dm}", work=B * B, unit="pairs")
    h.measure("hotpath", fwd_bwd(lambda: C.triplet_loss(x, lab, margin=0.2, mining="batch_all"), x), value=float)
    h.skip("pytorch-metric-learning", "its all-triplets path lists every (anchor, positive, negative): "
                                      f"~{B ** 3 / 100:.1e} triplets here")
    del x, lab

    # top-k retrieval: <= 1.0x one matmul + topk, <= 1% of its memory, float32 and bf16
    nq, nk, dk, k = _gpu.sz(h, 2000 if quick else 10_000), _gpu.sz(h, 1_000_000), 384, 10
    q32, keys32 = unit(nq, dk), unit(nk, dk)
    for dtype in (torch.float32, torch.bfloat16):
        q, keys = q32.to(dtype), keys32.to(dtype)
        tag = "bf16" if dtype == torch.bfloat16 else _gpu.precision_label(False)
        h.case(f"topk_similarity Q={nq} N={nk} d={dk} k={k} {tag}", work=nq * nk, unit="pairs")
        h.measure("hotpath", _gpu.under_tf32(False, lambda: C.topk_similarity(q, keys, k)))
        h.measure("torch matmul+topk", _gpu.under_tf32(False, lambda: torch.topk(q @ keys.T, k, dim=1)))
        h.target("torch matmul+topk", 1.0)
        h.target_memory("torch matmul+topk", 0.01)
        try:
            with _gpu.tf32(False):
                i_ours = C.topk_similarity(q, keys, k)[1].sort(1).values
                i_torch = torch.topk(q @ keys.T, k, dim=1)[1].sort(1).values
            same = float((i_ours == i_torch).all(1).float().mean())
            h.note(f"topk {tag}: index sets equal to torch's for {same:.4%} of queries (differences: near-ties)")
        except Exception as exc:
            h.note(f"topk {tag} index check failed: {type(exc).__name__}: {exc}")
    del q, keys

    # int8 embedding search with rescoring over 1M keys: >= 3x the float topk_similarity, recall@10 >= 0.99
    from hotpath.quant import embedding_search, quantize_embeddings
    del q32, keys32
    # clustered keys and queries (as the CPU case): a realistic neighbourhood structure for recall
    nqs = _gpu.sz(h, 1000)
    centers = torch.randn(256, dk, device=dev, generator=g)

    def clustered(n):
        pick = torch.randint(0, 256, (n,), device=dev, generator=g)
        return torch.nn.functional.normalize(centers[pick] + 0.7 * torch.randn(n, dk, device=dev, generator=g), dim=1)
    keys32, qs = clustered(nk), clustered(nqs)
    h.case(f"embedding_search int8 + rescoring N={nk} d={dk} Q={nqs} k={k}", work=nqs * nk, unit="pairs")
    try:
        codes = quantize_embeddings(keys32, "int8")
    except Exception as exc:
        h.skip("hotpath", f"quantize_embeddings failed: {type(exc).__name__}: {str(exc)[:200]}")
        codes = None
    if codes is not None:
        h.measure("hotpath", lambda: embedding_search(qs, codes, k, rescore_with=keys32))
    h.measure("float32 topk_similarity", _gpu.under_tf32(False, lambda: C.topk_similarity(qs, keys32, k)))
    h.target("float32 topk_similarity", 3)
    try:
        with _gpu.tf32(False):
            exact = C.topk_similarity(qs, keys32, k)[1].cpu()
        found = embedding_search(qs, codes, k, rescore_with=keys32)[1].cpu()
        recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact)) / exact.numel()
        h.target_value("recall@10 int8 + rescoring", recall, at_least=0.99)
    except Exception as exc:
        h.note(f"embedding_search recall not measured: {type(exc).__name__}: {exc}")
    h.note("GPU: hotpath times of the losses include forward and backward")
