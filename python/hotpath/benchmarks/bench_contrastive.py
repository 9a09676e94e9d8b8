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


def run(h, quick):
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
