"""Contrastive losses: the rules a drop-in user relies on. NaN / inf propagate as in the reference
on every backend, losses come back in the input dtype, batch-size checks, DINO center updates on
empty batches, the top-k sentinel, and the peers' call forms (open_clip's get_logits and
dist_impl names, pytorch-metric-learning's distances, ref_emb and mined triplets)."""
import math

import pytest
import torch
import torch.nn.functional as F

import hotpath as hp
from hotpath.reference import contrastive as R

from conftest import assert_close, backend_param

C = hp.contrastive
NAN, INF = float("nan"), float("inf")


def _labels(n, classes, seed=0):
    g = torch.Generator().manual_seed(seed)  # a CPU generator: draw on the CPU, then move to the test's device
    return torch.randint(0, classes, (n,), generator=g, device="cpu").to(torch.get_default_device())


# -- NaN / inf -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum"])
def test_triplet_batch_hard_keeps_nan_rows(backend, reduction):
    # a NaN embedding used to be dropped by the miner: the loss came back finite
    x = torch.randn(12, 5, dtype=torch.float64)
    lab = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    x[4, 2] = NAN
    out = C.triplet_loss(x, lab, margin=0.2, reduction=reduction, backend=backend)
    ref = R.triplet_loss(x, lab, 0.2, reduction=reduction)
    assert torch.isnan(ref) and torch.isnan(out)


@pytest.mark.parametrize("backend", backend_param())
def test_triplet_batch_hard_nan_per_anchor_matches_reference(backend):
    x = torch.randn(9, 4, dtype=torch.float64)
    lab = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    x[0, 1] = INF  # normalizing an inf row gives NaN: anchors 0..8 all see it as a candidate
    out = C.triplet_loss(x, lab, margin=0.1, reduction="none", backend=backend)
    assert out.shape == (9,) and torch.isnan(out).all()
    assert torch.isnan(R.triplet_loss(x, lab, 0.1, reduction="mean"))


@pytest.mark.parametrize("backend", backend_param())
def test_triplet_batch_hard_finite_unchanged(backend):
    x = torch.randn(23, 6, dtype=torch.float64, requires_grad=True)
    lab = _labels(23, 4)
    for distance in ("euclidean", "cosine", "squared_euclidean"):
        out = C.triplet_loss(x, lab, margin=0.3, distance=distance, reduction="mean", backend=backend)
        ref = R.triplet_loss(x, lab, 0.3, distance=distance, reduction="mean")
        assert_close(out, ref, torch.float64)


def test_triplet_batch_all_nan_propagates():
    x = torch.randn(10, 3, dtype=torch.float64)
    lab = _labels(10, 3)
    x[3] = NAN
    for reduction in ("mean_nonzero", "mean", "sum"):
        out = C.triplet_loss(x, lab, margin=0.1, mining="batch_all", reduction=reduction)
        assert torch.isnan(out) and torch.isnan(R.triplet_loss(x, lab, 0.1, mining="batch_all", reduction=reduction))


def test_reference_reduce_counts_nan_as_nonzero():
    assert torch.isnan(R._reduce(torch.tensor([0.0, NAN, 1.0]), "mean_nonzero", torch.zeros(1)))


@pytest.mark.parametrize("backend", backend_param())
def test_pairwise_lse_infinite_inputs_match_reference(backend):
    # scores that overflow from finite inputs follow torch.logsumexp (+inf scores used to give NaN
    # on CPU, inf - inf in the shifted exp, and -inf on Triton); a NaN / inf input makes its row NaN
    torch.manual_seed(0)
    y = torch.randn(300, 3, dtype=torch.float64).abs() + 1.0
    x = torch.randn(7, 3, dtype=torch.float64)
    x[0] = torch.tensor([1e308, 1e308, 0.2], dtype=torch.float64)    # every score +inf
    x[1] = torch.tensor([-1e308, -1e308, 0.2], dtype=torch.float64)  # every score -inf
    x[2] = torch.tensor([1.0, NAN, 0.0])       # non-finite inputs: NaN
    x[3] = torch.tensor([INF, 0.1, 0.2])
    yy = torch.randn(300, 3, dtype=torch.float64) * 2
    x2 = x.clone()
    x2[1] = torch.tensor([1e308, 0.0, 0.0], dtype=torch.float64)    # mixed +inf / -inf scores: +inf
    for xs, ys in ((x, y), (x2, yy)):
        out = hp.pairwise_lse(xs, ys, backend=backend)
        ref = torch.logsumexp(xs @ ys.T, dim=1)
        assert ref[0] == INF and ref[1] == (-INF if xs is x else INF)
        ref[2:4] = NAN
        torch.testing.assert_close(out, ref, equal_nan=True)


@pytest.mark.parametrize("backend", backend_param())
def test_contrastive_lse_sweep_infinite_scores_match_reference(backend):
    # rows and columns holding +inf scores used to come out NaN from the C++ sweep
    from hotpath._ops import contrastive as ops
    torch.manual_seed(1)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    y[2, 0] = -INF          # column 2: +inf or -inf scores by the sign of x[:, 0]
    x[4] = torch.tensor([0.5, 0.5, 0.5])
    x[1, 1] = NAN           # row 1 and every column: NaN
    for xs in (x, x[[0, 2, 3, 4]]):
        s = 0.7 * xs @ y.T
        with hp.backends.prefer(backend):
            lr, lc = ops.lse_sweep(xs.contiguous(), y, 0.7, True, False)
        torch.testing.assert_close(lr, torch.logsumexp(s, 1), equal_nan=True)
        torch.testing.assert_close(lc, torch.logsumexp(s, 0), equal_nan=True)
    q, k = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    k[0, 0] = -INF
    out = C.info_nce(q, k, temperature=0.5, reduction="none", backend=backend)
    torch.testing.assert_close(out, torch.logsumexp(q @ k.T / 0.5, 1) - (q * k).sum(1) / 0.5, equal_nan=True)


@pytest.mark.parametrize("backend", backend_param())
def test_pairwise_lse_infinite_with_values(backend):
    y = torch.randn(40, 3, dtype=torch.float64).abs()
    x = torch.randn(3, 3, dtype=torch.float64)
    x[0] = torch.tensor([1e308, 1e308, 0.2], dtype=torch.float64)   # finite input, +inf scores: softmax weights 0
    v = torch.randn(40, 2, dtype=torch.float64)
    lse, out = hp.pairwise_lse(x, y, values=v, backend=backend)
    assert lse[0] == INF and torch.equal(out[0], torch.zeros(2, dtype=torch.float64))
    x[0, 0] = INF                              # an infinite input: its row NaN
    lse, out = hp.pairwise_lse(x, y, values=v, backend=backend)
    assert torch.isnan(lse[0]) and torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()
    rl, ro = hp.pairwise_lse(x[1:], y, values=v, backend="reference")
    torch.testing.assert_close(lse[1:], rl)
    torch.testing.assert_close(out[1:], ro)


# -- dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_return_the_input_dtype(dtype):
    x, y = torch.randn(8, 16).to(dtype), torch.randn(8, 16).to(dtype)
    lab = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cases = {
        "supcon": (C.supcon_loss(x, lab), R.supcon_loss(x.double(), lab, 0.1)),
        "triplet": (C.triplet_loss(x, lab, margin=0.2), R.triplet_loss(x.double(), lab, 0.2)),
        "clip": (C.clip_loss(x, y, 5.0), R.clip_loss(x.double(), y.double(), 5.0)),
        "siglip": (C.siglip_loss(x, y, 5.0, -2.0), R.siglip_loss(x.double(), y.double(), 5.0, -2.0)),
        "info_nce": (C.info_nce(x, y, temperature=0.2), R.info_nce(x.double(), y.double(), 0.2)),
        "dino": (C.dino_loss(x, y, torch.zeros(16), student_temp=0.1, teacher_temp=0.04),
                 R.dino_loss(x.double(), y.double(), torch.zeros(16, dtype=torch.float64), 0.1, 0.04)),
    }
    for name, (out, ref) in cases.items():
        assert out.dtype == dtype, name
        assert_close(out, ref, dtype, scale=2, msg=name)


def test_half_loss_backward_gives_half_grads():
    x = torch.randn(10, 8).half().requires_grad_()
    lab = _labels(10, 3)
    loss = C.supcon_loss(x, lab, temperature=0.1)
    loss.backward()
    assert loss.dtype == torch.float16 and x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()


# -- SigLIP batch sizes ---------------------------------------------------------------------------------

def test_siglip_rejects_mismatched_batches_by_default():
    x, y = torch.randn(5, 8), torch.randn(7, 8)
    with pytest.raises(ValueError, match="batch size"):
        C.siglip_loss(x, y, 10.0, -10.0)


@pytest.mark.parametrize("backend", backend_param())
def test_siglip_negative_only_accepts_mismatched_batches(backend):
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    out = C.siglip_loss(x, y, 3.0, -2.0, negative_only=True, backend=backend)
    assert_close(out, R.siglip_loss(x, y, 3.0, -2.0, negative_only=True), torch.float64)


# -- DINO center ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 6), (2, 0, 6)])
def test_update_center_empty_teacher_leaves_center(shape):
    center = torch.randn(1, 6)
    before = center.clone()
    out = C.update_center(center, torch.randn(*shape), 0.9, distributed=False)
    assert out is center and torch.equal(center, before)


def test_update_center_still_updates():
    center = torch.zeros(4)
    t = torch.ones(3, 4)
    C.update_center(center, t, 0.75, distributed=False)
    torch.testing.assert_close(center, torch.full((4,), 0.25))


# -- top-k sentinel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
def test_topk_sentinel_same_on_every_backend(backend):
    q = torch.ones(2, 4)
    q[1] = -1
    keys = torch.randn(6, 4)
    keys[1:3] = -INF      # scores -inf for query 0, +inf for query 1
    keys[3] = NAN         # NaN scores for both
    v, i = C.topk_similarity(q, keys, 5, backend=backend)
    rv, ri = R.topk_similarity(q.double(), keys.double(), 5)
    assert torch.equal(i, ri)
    torch.testing.assert_close(v.double(), rv)
    # query 0: only keys 0, 4, 5 score above -inf; the other slots are (-inf, -1)
    assert torch.equal(i[0, 3:], torch.tensor([-1, -1])) and (v[0, 3:] == -INF).all()
    assert (i[0, :3] >= 0).all()
    # query 1: +inf scores are regular candidates, ties to the lower index
    assert i[1, :2].tolist() == [1, 2]


def test_topk_sentinel_is_safe_to_mask():
    keys = torch.randn(4, 3)
    keys[1:] = NAN
    v, i = C.topk_similarity(torch.randn(2, 3), keys, 3)
    found = i >= 0
    assert torch.equal(found, v > -INF) and found.sum() == 2
    picked = keys[i.clamp_min(0)] * found[..., None]
    assert torch.isfinite(picked).all()


# -- open_clip call forms -------------------------------------------------------------------------------

def test_clip_get_logits():
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    li, lt = C.ClipLoss().get_logits(x, y, 3.0, logit_bias=-1.0)
    torch.testing.assert_close(li, 3.0 * x @ y.T - 1.0)
    torch.testing.assert_close(lt, 3.0 * y @ x.T - 1.0)
    labels = torch.arange(6)
    loss = (F.cross_entropy(li, labels) + F.cross_entropy(lt, labels)) / 2
    torch.testing.assert_close(C.ClipLoss()(x, y, 3.0, -1.0), loss)
    torch.testing.assert_close(C.SigLipLoss().get_logits(x, y, 3.0, -1.0), 3.0 * x @ y.T - 1.0)


@pytest.mark.parametrize("impl", ["bidir", "shift", "reduce", "gather", None])
def test_siglip_dist_impl_names(impl):
    loss = C.SigLipLoss(dist_impl=impl)
    assert loss.dist_impl == (impl or "bidir")
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    assert_close(loss(x, y, 2.0, -1.0), R.siglip_loss(x, y, 2.0, -1.0), torch.float64)
    with pytest.raises(ValueError, match="dist_impl"):
        C.SigLipLoss(dist_impl="ring")


# -- pytorch-metric-learning call forms -----------------------------------------------------------------

def _dense_supcon(x, lab, t, score):
    n = x.shape[0]
    s = score(x, x) / t
    eye = torch.eye(n, dtype=torch.bool)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    lse = torch.logsumexp(s.masked_fill(eye, -INF), 1, keepdim=True)
    per = -((s - lse) * pos).sum(1) / pos.sum(1).clamp(min=1)
    return per[pos.any(1)].mean()


@pytest.mark.parametrize("distance,normalize", [("cosine", True), ("dot", False), ("dot", True),
                                                ("euclidean", True), ("euclidean", False),
                                                ("squared_euclidean", True), ("squared_euclidean", False)])
def test_supcon_distances(distance, normalize):
    x = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    lab = _labels(17, 4)
    xn = F.normalize(x, dim=1) if (normalize or distance == "cosine") else x
    score = {"cosine": lambda a, b: a @ b.T, "dot": lambda a, b: a @ b.T,
             "euclidean": lambda a, b: -torch.cdist(a, b),
             "squared_euclidean": lambda a, b: -torch.cdist(a, b) ** 2}[distance]
    out = C.supcon_loss(x, lab, temperature=0.3, distance=distance, normalize=normalize)
    ref = _dense_supcon(xn, lab, 0.3, score)
    assert_close(out, ref, torch.float64, scale=10)
    g, = torch.autograd.grad(out, x)
    gr, = torch.autograd.grad(ref, x)
    assert_close(g, gr, torch.float64, scale=10)


def test_supcon_ref_emb():
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    lab, rlab = _labels(7, 3, 1), _labels(11, 3, 2)
    out = C.supcon_loss(x, lab, temperature=0.2, ref_emb=r, ref_labels=rlab)
    xn, rn = F.normalize(x, dim=1), F.normalize(r, dim=1)
    s = xn @ rn.T / 0.2
    pos = lab[:, None] == rlab[None, :]
    per = -((s - torch.logsumexp(s, 1, keepdim=True)) * pos).sum(1) / pos.sum(1).clamp(min=1)
    ref = per[pos.any(1)].mean()
    assert_close(out, ref, torch.float64)
    for dist in ("euclidean", "squared_euclidean"):  # the dense path agrees with the streamed one in form
        assert torch.isfinite(C.supcon_loss(x, lab, distance=dist, ref_emb=r, ref_labels=rlab))
    with pytest.raises(ValueError, match="ref_labels"):
        C.supcon_loss(x, lab, ref_emb=r)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_ref_emb_and_return_triplets(mining):
    x = torch.randn(6, 4, dtype=torch.float64)
    r = torch.randn(9, 4, dtype=torch.float64)
    lab, rlab = _labels(6, 3, 3), _labels(9, 3, 4)
    loss, (a, p, n) = C.triplet_loss(x, lab, margin=0.3, mining=mining, reduction="sum", ref_emb=r,
                                     ref_labels=rlab, return_triplets=True)
    xn, rn = F.normalize(x, dim=1), F.normalize(r, dim=1)
    D = torch.cdist(xn, rn)
    assert (lab[a] == rlab[p]).all() and (lab[a] != rlab[n]).all()
    if mining == "batch_hard":
        pos, neg = lab[:, None] == rlab[None, :], lab[:, None] != rlab[None, :]
        dap = D.masked_fill(~pos, -INF).max(1).values
        dan = D.masked_fill(~neg, INF).min(1).values
        keep = pos.any(1) & neg.any(1)
        expected = F.relu(dap - dan + 0.3)[keep].sum()
        assert torch.equal(a, torch.nonzero(keep).flatten())
    else:
        expected = F.relu(D[a, p] - D[a, n] + 0.3).sum()
        assert a.numel() == int(((lab[:, None] == rlab[None, :]).sum(1) * (lab[:, None] != rlab[None, :]).sum(1)).sum())
    assert_close(loss, expected, torch.float64)


def test_triplet_return_triplets_self():
    x = torch.randn(10, 3, dtype=torch.float64)
    lab = _labels(10, 3)
    loss, (a, p, n) = C.triplet_loss(x, lab, margin=0.2, reduction="none", return_triplets=True)
    xn = F.normalize(x, dim=1)
    expected = F.relu((xn[a] - xn[p]).norm(dim=1) - (xn[a] - xn[n]).norm(dim=1) + 0.2)
    assert_close(loss, expected, torch.float64)
    assert (a != p).all() and (lab[a] == lab[p]).all() and (lab[a] != lab[n]).all()


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_smooth_loss_and_dot(mining):
    x = torch.randn(11, 4, dtype=torch.float64)
    lab = _labels(11, 3)
    for distance, normalize in (("euclidean", True), ("dot", False), ("squared_euclidean", False)):
        out = C.triplet_loss(x, lab, margin=0.1, mining=mining, distance=distance, normalize=normalize,
                             smooth_loss=True, reduction="mean")
        xn = F.normalize(x, dim=1) if normalize else x
        ref = R.triplet_loss(xn, lab, 0.1, mining=mining, distance=distance, normalize=False, reduction="mean",
                             smooth_loss=True)
        assert_close(out, ref, torch.float64, msg=f"{distance}")


def test_metric_bad_distance_arguments():
    x, lab = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="distance"):
        C.supcon_loss(x, lab, distance="manhattan")
    with pytest.raises(TypeError, match="distance"):
        C.triplet_loss(x, lab, distance=3)
    with pytest.raises(TypeError, match="smooth_loss"):
        C.triplet_loss(x, lab, smooth_loss="yes")


def test_pml_distance_objects():
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    x = torch.randn(13, 5, dtype=torch.float64)
    lab = _labels(13, 3)
    pairs = [(distances.CosineSimilarity(), "cosine", True),
             (distances.LpDistance(), "euclidean", True),
             (distances.LpDistance(normalize_embeddings=False), "euclidean", False),
             (distances.LpDistance(power=2), "squared_euclidean", True),
             (distances.DotProductSimilarity(normalize_embeddings=False), "dot", False)]
    for obj, kind, norm in pairs:
        assert_close(C.supcon_loss(x, lab, distance=obj), C.supcon_loss(x, lab, distance=kind, normalize=norm),
                     torch.float64)
        assert_close(C.triplet_loss(x, lab, distance=obj, mining="batch_all"),
                     C.triplet_loss(x, lab, distance=kind, normalize=norm, mining="batch_all"), torch.float64)
    with pytest.raises(ValueError, match="p=2"):
        C.supcon_loss(x, lab, distance=distances.LpDistance(p=1))


def test_empty_reference_sets():
    x, lab = torch.randn(3, 4), torch.tensor([0, 1, 1])
    empty, none = torch.randn(0, 4), torch.zeros(0, dtype=torch.long)
    for mining in ("batch_hard", "batch_all"):
        loss, (a, p, n) = C.triplet_loss(x, lab, mining=mining, ref_emb=empty, ref_labels=none, return_triplets=True)
        assert loss == 0 and a.numel() == 0
    assert C.supcon_loss(x, lab, ref_emb=empty, ref_labels=none) == 0
