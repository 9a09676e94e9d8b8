"""pytorch-metric-learning's own SupConLoss / TripletMarginLoss test cases, rewritten to call
hotpath (hand-computed expectations on 2-D unit embeddings at fixed angles, every dtype), plus
direct cross-checks against PML's losses, miners and distances when PML is installed.

Not carried over (see docs/contrastive.md): PML's statistics recording (`collect_stats`,
`avg_triplet_margin`, ...), which is PML's own bookkeeping, not a loss value."""
import math

import pytest
import torch

import hotpath as hp

from conftest import backend_param

C = hp.contrastive
DTYPES = [torch.float16, torch.float32, torch.float64]


def coords(angles, dtype):
    """2-D unit embeddings at the given angles (degrees), as PML's angle_to_coord builds them."""
    rad = torch.tensor([math.radians(a) for a in angles], dtype=torch.float64)
    return torch.stack([torch.cos(rad), torch.sin(rad)], 1).to(dtype).requires_grad_()


def rtol(dtype):
    return 1e-2 if dtype == torch.float16 else 1e-5


def close(a, b, dtype):
    assert torch.isclose(a.double(), torch.as_tensor(b, dtype=torch.float64), rtol=rtol(dtype)), (a, b)


# -- SupConLoss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sup_con_loss(dtype, backend):
    t = 0.1
    e = coords([0, 10, 20, 50, 60, 80], dtype)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    loss_cos = C.supcon_loss(e, labels, temperature=t, backend=backend)
    loss_lp = C.supcon_loss(e, labels, temperature=t, distance="euclidean", backend=backend)
    ed = e.detach().double()
    total_cos = total_lp = 0.0
    anchors = [a for a in range(6) if (labels == labels[a]).sum() > 1]
    for a in anchors:
        pos = [p for p in range(6) if p != a and labels[p] == labels[a]]
        others = [j for j in range(6) if j != a]
        den_cos = sum(math.exp(float(ed[a] @ ed[j]) / t) for j in others)
        den_lp = sum(math.exp(-float((ed[a] - ed[j]).norm()) / t) for j in others)
        total_cos += -sum(math.log(math.exp(float(ed[a] @ ed[p]) / t) / den_cos) for p in pos) / len(pos)
        total_lp += -sum(math.log(math.exp(-float((ed[a] - ed[p]).norm()) / t) / den_lp) for p in pos) / len(pos)
    close(loss_cos, total_cos / len(anchors), dtype)
    close(loss_lp, total_lp / len(anchors), dtype)
    assert loss_cos.dtype == dtype and loss_lp.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_sup_con_with_no_valid_pairs(dtype):
    for angles, labels in (([0], [0]), ([0, 10, 20], [0, 0, 0]), ([0, 40, 60], [1, 2, 3])):
        e = coords(angles, dtype)
        loss = C.supcon_loss(e, torch.tensor(labels), temperature=0.1)
        loss.backward()
        assert loss == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_sup_con_backward(dtype, distance):
    e = coords([0, 20, 40, 60, 80], dtype)
    loss = C.supcon_loss(e, torch.tensor([0, 0, 1, 1, 2]), temperature=0.1, distance=distance)
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


# -- TripletMarginLoss ------------------------------------------------------------------------------------

TRIPLETS = [(0, 1, 2), (0, 1, 3), (0, 1, 4), (1, 0, 2), (1, 0, 3), (1, 0, 4),
            (2, 3, 0), (2, 3, 1), (2, 3, 4), (3, 2, 0), (3, 2, 1), (3, 2, 4)]


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_margin_loss(dtype, backend):
    m = 0.2
    e = coords([0, 20, 40, 60, 80], dtype)
    labels = torch.tensor([0, 0, 1, 1, 2])
    # PML's TripletMarginLoss without a miner takes every valid triplet
    kw = dict(margin=m, mining="batch_all", backend=backend)
    A = C.triplet_loss(e, labels, **kw)
    B = C.triplet_loss(e, labels, reduction="mean", **kw)
    Cc = C.triplet_loss(e, labels, distance="cosine", **kw)
    D = C.triplet_loss(e, labels, distance="cosine", reduction="mean", **kw)
    E = C.triplet_loss(e, labels, smooth_loss=True, **kw)
    ed = e.detach().double()
    lp = lambda i, j: float((ed[i] - ed[j]).norm())  # noqa: E731
    cs = lambda i, j: float(ed[i] @ ed[j])            # noqa: E731
    l_lp = [max(0.0, lp(a, p) - lp(a, n) + m) for a, p, n in TRIPLETS]
    l_cs = [max(0.0, cs(a, n) - cs(a, p) + m) for a, p, n in TRIPLETS]
    l_sm = [math.log1p(math.exp(lp(a, p) - lp(a, n) + m)) for a, p, n in TRIPLETS]
    close(A, sum(l_lp) / sum(v > 0 for v in l_lp), dtype)
    close(B, sum(l_lp) / len(TRIPLETS), dtype)
    close(Cc, sum(l_cs) / sum(v > 0 for v in l_cs), dtype)
    close(D, sum(l_cs) / len(TRIPLETS), dtype)
    close(E, sum(l_sm) / len(TRIPLETS), dtype)
    _, (a, p, n) = C.triplet_loss(e, labels, return_triplets=True, **kw)
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist())) == sorted(TRIPLETS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_with_no_valid_triplets(dtype):
    e = coords([0, 20, 40, 60, 80], dtype)
    labels = torch.tensor([0, 1, 2, 3, 4])
    for reduction in ("mean_nonzero", "mean"):
        for mining in ("batch_all", "batch_hard"):
            assert C.triplet_loss(e, labels, margin=0.2, mining=mining, reduction=reduction) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_backward(dtype):
    for kw in (dict(margin=0.2), dict(margin=0.2, reduction="mean"), dict(smooth_loss=True)):
        e = coords([0, 20, 40, 60, 80], dtype)
        loss = C.triplet_loss(e, torch.tensor([0, 0, 1, 1, 2]), mining="batch_all", **kw)
        loss.backward()
        assert e.grad is not None and torch.isfinite(e.grad).all()


# -- direct cross-checks against PML ---------------------------------------------------------------------

def _pml():
    try:
        from pytorch_metric_learning import distances, losses, miners, reducers
    except Exception as e:  # installed with --no-deps: a missing dependency skips cleanly
        pytest.skip(f"pytorch-metric-learning unavailable: {e}")
    return distances, losses, miners, reducers


def _data(n=24, d=6, classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def test_pml_supcon_distances_and_ref_emb():
    distances, losses, _, _ = _pml()
    x, lab = _data()
    r, rlab = _data(17, seed=1)
    for dist in (distances.CosineSimilarity(), distances.LpDistance(), distances.LpDistance(power=2),
                 distances.LpDistance(normalize_embeddings=False), distances.DotProductSimilarity()):
        ref = losses.SupConLoss(temperature=0.3, distance=dist)
        torch.testing.assert_close(C.supcon_loss(x, lab, temperature=0.3, distance=dist), ref(x, lab))
        torch.testing.assert_close(C.supcon_loss(x, lab, temperature=0.3, distance=dist, ref_emb=r, ref_labels=rlab),
                                   ref(x, lab, ref_emb=r, ref_labels=rlab))


def test_pml_triplet_all_triplets_and_distances():
    distances, losses, _, reducers = _pml()
    x, lab = _data()
    for dist, kind, norm in ((distances.LpDistance(), "euclidean", True), (distances.CosineSimilarity(), "cosine", True),
                             (distances.LpDistance(power=2, normalize_embeddings=False), "squared_euclidean", False)):
        for reducer, reduction in ((None, "mean_nonzero"), (reducers.MeanReducer(), "mean")):
            for smooth in (False, True):
                kw = {"reducer": reducer} if reducer is not None else {}
                ref = losses.TripletMarginLoss(margin=0.1, distance=dist, smooth_loss=smooth, **kw)(x, lab)
                out = C.triplet_loss(x, lab, margin=0.1, mining="batch_all", distance=kind, normalize=norm,
                                     reduction=reduction, smooth_loss=smooth)
                torch.testing.assert_close(out, ref)


def test_pml_batch_hard_miner_and_mined_indices():
    _, losses, miners, _ = _pml()
    x, lab = _data(31, seed=3)
    miner = miners.BatchHardMiner()
    a, p, n = miner(x, lab)
    ref = losses.TripletMarginLoss(margin=0.2)(x, lab, (a, p, n))
    out, (ha, hp_, hn) = C.triplet_loss(x, lab, margin=0.2, return_triplets=True)
    torch.testing.assert_close(out, ref)
    assert torch.equal(ha, a) and torch.equal(hp_, p) and torch.equal(hn, n)


def test_pml_triplet_ref_emb():
    _, losses, _, _ = _pml()
    x, lab = _data(9, seed=4)
    r, rlab = _data(14, seed=5)
    ref = losses.TripletMarginLoss(margin=0.1)(x, lab, ref_emb=r, ref_labels=rlab)
    out = C.triplet_loss(x, lab, margin=0.1, mining="batch_all", ref_emb=r, ref_labels=rlab)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pml_returns_the_input_dtype(dtype):
    _, losses, _, _ = _pml()
    x, lab = _data(16, dtype=torch.float32)
    x = x.to(dtype)
    ref = losses.SupConLoss(temperature=0.2)(x, lab)
    out = C.supcon_loss(x, lab, temperature=0.2)
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol(dtype), atol=rtol(dtype))
