"""Distributed ClipLoss / SigLipLoss: 2 processes with gloo on CPU against the single-process loss
on the concatenated batch (values, and gradients as DDP would average them); the same code over
NCCL on two GPUs where they exist, with each rank's peak memory far below the B x B logits."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hotpath as hp

WORLD, N, D = 2, 5, 6
CLIP_CFGS = [(False, False), (False, True), (True, True), (True, False)]  # (local_loss, gather_with_grad)
SIGLIP_IMPLS = ["bidir", "shift", "gather"]


def _data():
    g = torch.Generator().manual_seed(1234)
    img = torch.randn(WORLD * N, D, generator=g, dtype=torch.float64)
    txt = torch.randn(WORLD * N, D, generator=g, dtype=torch.float64)
    return img, txt


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _worker(rank, port, outdir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        img, txt = _data()
        sl = slice(rank * N, (rank + 1) * N)
        res = {}
        for local, wgrad in CLIP_CFGS:
            i, t, s = _leaf(img[sl]), _leaf(txt[sl]), torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
            loss = hp.contrastive.ClipLoss(local_loss=local, gather_with_grad=wgrad, rank=rank, world_size=WORLD)(i, t, s)
            loss.backward()
            res[("clip", local, wgrad)] = (loss.detach(), i.grad, t.grad, s.grad)
            res[("open_clip", local, wgrad)] = _open_clip_run(img[sl], txt[sl], local, wgrad, rank)
        for impl in SIGLIP_IMPLS:
            i, t = _leaf(img[sl]), _leaf(txt[sl])
            s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
            b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
            loss = hp.contrastive.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=impl)(i, t, s, b)
            loss.backward()
            res[("siglip", impl)] = (loss.detach(), i.grad, t.grad, s.grad, b.grad)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _open_clip_run(img, txt, local, wgrad, rank):
    """open_clip's own distributed ClipLoss on the same shard (None when it cannot run here)."""
    try:
        import importlib.util
        import site
        path = next(os.path.join(b, "open_clip", "loss.py") for b in site.getsitepackages()
                    if os.path.exists(os.path.join(b, "open_clip", "loss.py")))
        spec = importlib.util.spec_from_file_location("_oc_loss", path)
        oc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(oc)
        i, t, s = _leaf(img), _leaf(txt), torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        loss = oc.ClipLoss(local_loss=local, gather_with_grad=wgrad, rank=rank, world_size=WORLD)(i, t, s)
        loss.backward()
        return loss.detach(), i.grad, t.grad, s.grad
    except Exception:
        return None


def _free_port():
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    return _spawn(_worker, tmp_path_factory.mktemp("dist"))


def _spawn(worker, outdir):
    """Run worker(rank, port, outdir) in WORLD processes; their saved results, by rank."""
    out = str(outdir)
    mp.spawn(worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


def _global_clip(img, txt):
    i, t = _leaf(img), _leaf(txt)
    s = torch.tensor(3.0, dtype=img.dtype, device=img.device, requires_grad=True)
    loss = hp.contrastive.clip_loss(i, t, s)
    loss.backward()
    return loss.detach(), i.grad, t.grad, s.grad


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def _check_clip(per_rank, global_result, local, wgrad, n, close):
    L, gi, gt, gs = global_result
    # DDP averages losses / gradients over ranks: that average equals the global loss
    close(sum(r[0] for r in per_rank) / WORLD, L)
    if not local:
        for r in per_rank:
            close(r[0], L)
    if local and not wgrad:
        return  # open_clip's setting without gradient through the gather: partial gradients by design
    for rank, r in enumerate(per_rank):
        sl = slice(rank * n, (rank + 1) * n)
        # with the gather's gradient each rank holds the sum over ranks' losses: divide by WORLD
        f = WORLD if wgrad else 1
        close(r[1] / f, gi[sl])
        close(r[2] / f, gt[sl])
    close(sum(r[3] for r in per_rank) / WORLD, gs)


def _check_siglip(per_rank, global_result, n, close):
    L, gi, gt, gs, gb = global_result
    close(sum(r[0] for r in per_rank) / WORLD, L)
    for rank, r in enumerate(per_rank):
        sl = slice(rank * n, (rank + 1) * n)
        close(r[1] / WORLD, gi[sl])
        close(r[2] / WORLD, gt[sl])
    close(sum(r[3] for r in per_rank) / WORLD, gs)
    close(sum(r[4] for r in per_rank) / WORLD, gb)


def _global_siglip(img, txt):
    i, t = _leaf(img), _leaf(txt)
    s = torch.tensor(4.0, dtype=img.dtype, device=img.device, requires_grad=True)
    b = torch.tensor(-2.0, dtype=img.dtype, device=img.device, requires_grad=True)
    L = hp.contrastive.siglip_loss(i, t, s, b)
    L.backward()
    return L.detach(), i.grad, t.grad, s.grad, b.grad


@pytest.mark.parametrize("local,wgrad", CLIP_CFGS)
def test_clip_distributed(results, local, wgrad):
    _check_clip([r[("clip", local, wgrad)] for r in results], _global_clip(*_data()), local, wgrad, N, _close)


@pytest.mark.parametrize("local,wgrad", CLIP_CFGS)
def test_clip_distributed_matches_open_clip(results, local, wgrad):
    for r in results:
        theirs = r[("open_clip", local, wgrad)]
        if theirs is None:
            pytest.skip("open_clip's distributed ClipLoss did not run here")
        for a, b in zip(r[("clip", local, wgrad)], theirs):
            _close(a, b)


@pytest.mark.parametrize("impl", SIGLIP_IMPLS)
def test_siglip_distributed(results, impl):
    _check_siglip([r[("siglip", impl)] for r in results], _global_siglip(*_data()), N, _close)


# -- NCCL on two GPUs --------------------------------------------------------------------------------

N_GPU, D_GPU = 8192, 64    # global B = 16,384: its float32 logits would be 1 GiB per rank


def _gpu_data():
    g = torch.Generator().manual_seed(99)
    img, txt = (torch.randn(WORLD * N_GPU, D_GPU, generator=g) for _ in range(2))
    return img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)


def _nccl_worker(rank, port, outdir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=rank, world_size=WORLD)
    try:
        img, txt = (t[rank * N_GPU:(rank + 1) * N_GPU].to(dev) for t in _gpu_data())
        res = {}

        def measured(key, loss_fn, *leaves):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            loss = loss_fn()
            loss.backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(dev) - base
            res[key] = tuple(t.detach().cpu() for t in (loss, *(v.grad for v in leaves))) + (peak,)

        for local, wgrad in CLIP_CFGS:
            i, t = _leaf(img), _leaf(txt)
            s = torch.tensor(3.0, device=dev, requires_grad=True)
            loss = hp.contrastive.ClipLoss(local_loss=local, gather_with_grad=wgrad, rank=rank, world_size=WORLD)
            measured(("clip", local, wgrad), lambda: loss(i, t, s), i, t, s)
        for impl in SIGLIP_IMPLS:
            i, t = _leaf(img), _leaf(txt)
            s = torch.tensor(4.0, device=dev, requires_grad=True)
            b = torch.tensor(-2.0, device=dev, requires_grad=True)
            loss = hp.contrastive.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=impl)
            measured(("siglip", impl), lambda: loss(i, t, s, b), i, t, s, b)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def nccl_results(tmp_path_factory):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL: needs two GPUs")
    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("torch.distributed with NCCL unavailable")
    return _spawn(_nccl_worker, tmp_path_factory.mktemp("nccl"))


def _close_f32(a, b):
    b = b.to(a.device, a.dtype)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def _no_logits_per_rank(per_rank):
    """Each rank's peak memory growth (loss + backward) stays under half the global B x B float32
    logits (open_clip holds its rows x B logits and their softmax)."""
    B = WORLD * N_GPU
    for r in per_rank:
        assert r[-1] < B * B * 4 // 2, f"peak {r[-1] >> 20} MB"


@pytest.mark.parametrize("local,wgrad", CLIP_CFGS)
def test_clip_nccl(nccl_results, local, wgrad):
    img, txt = (t.to("cuda", torch.float64) for t in _gpu_data())
    per_rank = [r[("clip", local, wgrad)] for r in nccl_results]
    _check_clip(per_rank, _global_clip(img, txt), local, wgrad, N_GPU, _close_f32)
    _no_logits_per_rank(per_rank)


@pytest.mark.parametrize("impl", SIGLIP_IMPLS)
def test_siglip_nccl(nccl_results, impl):
    img, txt = (t.to("cuda", torch.float64) for t in _gpu_data())
    per_rank = [r[("siglip", impl)] for r in nccl_results]
    _check_siglip(per_rank, _global_siglip(img, txt), N_GPU, _close_f32)
    _no_logits_per_rank(per_rank)
