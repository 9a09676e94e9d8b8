"""Contrastive losses: float64 references, open_clip / pytorch-metric-learning cross-checks,
gradcheck, opcheck, bad input. Triton runs through the interpreter on tiny shapes."""
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F

import hotpath as hp
from hotpath._ops import contrastive as ops
from hotpath.reference import contrastive as R

from conftest import assert_close, backend_param

C = hp.contrastive
SIZES = [1, 3, 59]


def sizes_for(backend):
    return [1, 5, 19] if backend == "triton" else SIZES


def feats(n, d, dtype=torch.float64, m=None, scale=1.0, grad=True):
    x = (scale * torch.randn(n, d, dtype=dtype)).requires_grad_(grad)
    y = (scale * torch.randn(m or n, d, dtype=dtype)).requires_grad_(grad)
    return x, y


def grads(loss, inputs):
    gs = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs)]


def check_same(fn, ref, inputs, dtype=torch.float64, scale=1.0):
    l1 = fn()
    g1 = grads(l1, inputs)
    l2 = ref()
    g2 = grads(l2, inputs)
    assert_close(l1, l2, dtype, scale=scale, msg="loss")
    for a, b in zip(g1, g2):
        assert_close(a, b, dtype, scale=scale, msg="grad")


def _open_clip_loss():
    import site
    for base in site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]:
        path = os.path.join(base, "open_clip", "loss.py")
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    pytest.skip("open_clip not installed")


def _pml():
    try:
        from pytorch_metric_learning import losses, miners
    except Exception as e:  # installed with --no-deps: anything missing skips cleanly
        pytest.skip(f"pytorch-metric-learning unavailable: {e}")
    return losses, miners


# -- CLIP --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("bias", [None, -1.5])
def test_clip_matches_reference(backend, bias):
    for n in sizes_for(backend):
        x, y = feats(n, 7)
        s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        b = None if bias is None else torch.tensor(bias, dtype=torch.float64, requires_grad=True)
        ins = [x, y, s] + ([b] if b is not None else [])
        check_same(lambda: C.clip_loss(x, y, s, b, backend=backend), lambda: R.clip_loss(x, y, s, b), ins)


@pytest.mark.parametrize("backend", backend_param())
def test_clip_per_sample_scale(backend):
    n = 5 if backend == "triton" else 41
    x, y = feats(n, 9)
    s = (torch.rand(n, dtype=torch.float64) * 5 + 0.5).requires_grad_()
    check_same(lambda: C.clip_loss(x, y, s, backend=backend), lambda: R.clip_loss(x, y, s), [x, y, s])


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_features_reach_the_kernels_as_they_are(backend, half, monkeypatch):
    """On the GPU (and backend="triton" on CPU) 16-bit features go to the ops unconverted --
    tensor-core tiles -- and come back as float32 statistics; the CPU kernels read float32.
    Losses and gradients equal the float64 losses on the same 16-bit values, in the input dtype."""
    seen = []
    for name in ("lse_sweep", "siglip_rows", "siglip_acc", "softmax_acc", "softmax_acc_xy", "siglip_grads", "topk"):
        orig = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=orig, _n=name: (seen.append((_n, a[0].dtype)), _f(*a))[1])
    x, y = feats(19, 24, grad=False)
    xh, yh = x.to(half).requires_grad_(), y.to(half).requires_grad_()
    X, Y = xh.detach().double().requires_grad_(), yh.detach().double().requires_grad_()
    keep = backend == "triton" or xh.device.type == "cuda"
    cases = [(lambda a, b, **k: C.clip_loss(a, b, 8.0, **k), lambda a, b: R.clip_loss(a, b, 8.0)),
             (lambda a, b, **k: C.siglip_loss(a, b, 4.0, -2.0, **k), lambda a, b: R.siglip_loss(a, b, 4.0, -2.0)),
             (lambda a, b, **k: C.info_nce(a, b, temperature=0.25, **k), lambda a, b: R.info_nce(a, b, 0.25))]
    for fn, ref in cases:
        seen.clear()
        out = fn(xh, yh, backend=backend)
        assert out.dtype == half
        gx, gy = torch.autograd.grad(out, (xh, yh))
        want = ref(X, Y)
        wx, wy = torch.autograd.grad(want, (X, Y))
        assert gx.dtype == gy.dtype == half
        assert seen and all(dt == (half if keep else torch.float32) for _, dt in seen), seen
        assert_close(out, want, half, scale=2)
        assert_close(gx, wx, half, scale=2)
        assert_close(gy, wy, half, scale=2)
    seen.clear()
    v, i = C.topk_similarity(xh.detach(), yh.detach(), 3, backend=backend)
    rv, ri = R.topk_similarity(X.detach(), Y.detach(), 3)
    assert v.dtype == torch.float32 and seen[-1][1] == (half if keep else torch.float32)
    assert_close(v, rv, torch.float32, scale=4)
    assert torch.equal(i.cpu(), ri.cpu())


def test_clip_float32_and_bf16():
    x, y = feats(97, 33, grad=False)
    ref = R.clip_loss(x, y, 10.0)
    out = C.clip_loss(x.float(), y.float(), 10.0)
    assert out.dtype == torch.float32
    assert_close(out, ref, torch.float32, scale=5)
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16().requires_grad_()
    out = C.clip_loss(xb, yb, 10.0)
    # computed in float32, returned in the input dtype (as open_clip returns it)
    assert out.dtype == torch.bfloat16
    assert_close(out, R.clip_loss(xb.double(), yb.double(), 10.0), torch.bfloat16)
    out.backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


def test_clip_huge_scale_unnormalized():
    x, y = feats(64, 16, dtype=torch.float32, scale=10.0)
    loss = C.clip_loss(x, y, 1e4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    ref = R.clip_loss(x.double(), y.double(), 1e4)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-2)


def test_clip_matches_open_clip():
    oc = _open_clip_loss()
    for dtype in (torch.float32, torch.float64):
        x, y = feats(59, 32, dtype=dtype)
        x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
        s = torch.tensor(14.3, dtype=dtype, requires_grad=True)
        s2 = s.detach().clone().requires_grad_()
        b = torch.tensor(-3.0, dtype=dtype, requires_grad=True)
        ours = C.ClipLoss()(x, y, s, b)
        theirs = oc.ClipLoss()(x2, y2, s2, b.detach())
        ours.backward()
        theirs.backward()
        assert_close(ours, theirs.double(), dtype, scale=4)
        for a, c in [(x.grad, x2.grad), (y.grad, y2.grad), (s.grad, s2.grad)]:
            assert_close(a, c.double(), dtype, scale=4)
        assert b.grad is not None and float(b.grad) == 0.0


def test_three_modalities_sum_of_pairs():
    a, b = feats(23, 8)
    c = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
    loss = C.clip_loss(a, b, 3.0) + C.clip_loss(a, c, 3.0) + C.clip_loss(b, c, 3.0)
    ref = R.clip_loss(a, b, 3.0) + R.clip_loss(a, c, 3.0) + R.clip_loss(b, c, 3.0)
    assert_close(loss, ref)
    g1, g2 = grads(loss, [a, b, c]), grads(ref, [a, b, c])
    for u, v in zip(g1, g2):
        assert_close(u, v)


def test_clip_gradcheck():
    x, y = feats(6, 4)
    s = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, s: C.clip_loss(x, y, s, backend="cpu"), (x, y, s))
    sv = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, s: C.clip_loss(x, y, s, backend="cpu"), (x, y, sv))


# -- InfoNCE -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
def test_info_nce_with_queue(backend):
    for n in sizes_for(backend):
        q, k = feats(n, 8)
        neg = torch.randn(n + 13, 8, dtype=torch.float64, requires_grad=True)
        t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        check_same(lambda: C.info_nce(q, k, temperature=t, negatives=neg, backend=backend),
                   lambda: R.info_nce(q, k, t, neg), [q, k, neg, t])


def test_info_nce_per_sample_temperature_and_reductions():
    q, k = feats(17, 8)
    t = (torch.rand(17, dtype=torch.float64) + 0.1).requires_grad_()
    check_same(lambda: C.info_nce(q, k, temperature=t), lambda: R.info_nce(q, k, t), [q, k, t])
    per = C.info_nce(q, k, temperature=0.5, reduction="none")
    assert per.shape == (17,)
    assert_close(per.sum(), C.info_nce(q, k, temperature=0.5, reduction="sum"))
    assert torch.autograd.gradcheck(lambda q, k: C.info_nce(q, k, temperature=0.7, negatives=k[:3] * 2), (q[:5], k[:5]))



def _loss_and_grads(backend, q, k, temperature):
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    loss = C.info_nce(q, k, temperature=temperature, backend=backend)
    return (loss.detach(), *torch.autograd.grad(loss, [q, k]))


@pytest.mark.parametrize("backend", backend_param())
def test_info_nce_small_temperature_one_row_is_exact(backend):
    # one row: the loss is LSE of one score minus that score, 0 for every q, k, and so are its
    # gradients. At t = 1e-4 (|s| ~ 2e5) the C++ backward fused scale * <q, k> - lse into an FMA,
    # missing the forward's rounded score by up to half an ulp: gradients of -143 instead of 0
    q = torch.tensor([[0.5899502038955688, -1.7055879831314087, 2.2008419036865234, -1.3592422008514404,
                       1.799838662147522, -1.7555197477340698, -2.792278289794922]])
    k = torch.tensor([[2.505363941192627, -2.418508768081665, 1.2525070905685425, 0.24156899750232697,
                       2.479546546936035, 0.15427252650260925, -2.2775583267211914]])
    loss, gq, gk = _loss_and_grads(backend, q, k, 1e-4)
    assert loss == 0 and (gq == 0).all() and (gk == 0).all()


@pytest.mark.parametrize("backend", backend_param(["reference", "cpu"]))
def test_info_nce_huge_key_gradients_finite(backend):
    # a key of -1e30 (finite, float32): scores ~ 3e31. The reference scored (scale * q) @ k.T
    # forward and (scale * k) @ q.T backward, which differ by 1e24 there: exp(s - lse) = inf and
    # a -inf key gradient where C++ had -11. (Triton still gives one -inf query gradient here:
    # its lse makes a ln / log2 round trip, ulps of 1e31 off.)
    q = torch.tensor([[0.1489427238702774], [2.5730414390563965], [-2.3796491622924805], [1.4136263132095337],
                      [-2.171924114227295], [-2.1433968544006348], [-0.8716487884521484]])
    k = torch.tensor([[2.1430015563964844], [-2.1872143745422363], [-1.002025842666626], [2.9324822425842285],
                      [-1.0000000150474662e+30], [-2.860487937927246], [-0.6746044754981995]])
    loss, gq, gk = _loss_and_grads(backend, q, k, 0.07)
    assert torch.isfinite(gq).all() and torch.isfinite(gk).all()
    _, rq, rk = _loss_and_grads("reference", q, k, 0.07)
    assert_close(gk, rk, torch.float32, scale=rk.abs().max().item())



@pytest.mark.parametrize("backend", backend_param(["cpu"]))
def test_info_nce_strided_features_score_like_the_reference(backend):
    # q = k given as a transposed view, t = 1e-4: the loss is LSE minus a dominant score ~ 4e4,
    # one ulp of which (0.004) is its whole size. The reference's matmul on the strided view
    # rounded the scores an ulp away from the kernels' GEMM on the contiguous copy (0 vs -0.0039)
    base = torch.tensor([[2.505363941192627, -2.418508768081665], [1.2525070905685425, 0.24156899750232697],
                         [2.479546546936035, 0.15427252650260925], [-2.2775583267211914, -1.3983160257339478],
                         [1.1566758155822754, -0.22642527520656586]])
    q = base.T
    out = C.info_nce(q, q, temperature=1e-4, backend=backend)
    assert torch.equal(out, C.info_nce(q, q, temperature=1e-4, backend="reference"))


# -- SigLIP ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
def test_siglip_matches_reference(backend):
    for n in sizes_for(backend):
        x, y = feats(n, 7)
        s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        check_same(lambda: C.siglip_loss(x, y, s, b, backend=backend), lambda: R.siglip_loss(x, y, s, b), [x, y, s, b])
        check_same(lambda: C.siglip_loss(x, y, 4.0, 1.0, negative_only=True, backend=backend),
                   lambda: R.siglip_loss(x, y, 4.0, 1.0, negative_only=True), [x, y])


@pytest.mark.parametrize("backend", backend_param())
def test_siglip_forward_forms_the_gradient(backend, monkeypatch):
    """With a gradient wanted, the forward's sweep also forms the gradient sums (siglip_grads, the
    y side only when y needs it); without, it sums the loss alone (siglip_rows). The backward scales
    the saved sums without changing them: a second backward (retain_graph) gives the same grads."""
    seen = []
    for name in ("siglip_rows", "siglip_grads", "siglip_acc"):
        orig = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=orig, _n=name: (seen.append((_n, a[4:])), _f(*a))[1])
    x, y = feats(9, 5)
    with torch.no_grad():
        C.siglip_loss(x, y, 3.0, -2.0, backend=backend)
    assert seen == [("siglip_rows", ())]
    seen.clear()
    loss = C.siglip_loss(x, y.detach(), 3.0, -2.0, backend=backend)
    assert seen[0] == ("siglip_grads", (False,))   # (the C++ CPU kernel's composite calls the others)
    seen.clear()
    loss = C.siglip_loss(x, y, 3.0, -2.0, backend=backend)
    assert seen[0] == ("siglip_grads", (True,))
    g1 = torch.autograd.grad(loss, (x, y), retain_graph=True)
    g2 = torch.autograd.grad(2 * loss, (x, y))
    want = torch.autograd.grad(R.siglip_loss(x, y, 3.0, -2.0), (x, y))
    for a, b, w in zip(g1, g2, want):
        assert_close(a, w)
        assert_close(b, 2 * w)


def test_siglip_float32_accuracy():
    x, y = feats(300, 64, grad=False)
    ref = R.siglip_loss(x, y, 10.0, -10.0)
    own32 = R.siglip_loss(x.float(), y.float(), 10.0, -10.0)
    err_ref = (own32.double() - ref).abs()
    out = C.siglip_loss(x.float(), y.float(), 10.0, -10.0, backend="cpu")
    assert (out.double() - ref).abs() <= 2 * err_ref + 1e-5 * ref.abs()


def test_siglip_matches_open_clip_and_gradcheck():
    oc = _open_clip_loss()
    x, y = feats(37, 16, dtype=torch.float32)
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    s2, b2 = s.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours, theirs = C.SigLipLoss()(x, y, s, b), oc.SigLipLoss()(x2, y2, s2, b2)
    ours.backward()
    theirs.backward()
    assert_close(ours, theirs.double(), torch.float32, scale=4)
    for a, c in [(x.grad, x2.grad), (y.grad, y2.grad), (s.grad, s2.grad), (b.grad, b2.grad)]:
        assert_close(a, c.double(), torch.float32, scale=10)
    xd, yd = feats(5, 3)
    sd, bd = torch.tensor(2.0, dtype=torch.float64, requires_grad=True), torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: C.siglip_loss(*a, backend="cpu"), (xd, yd, sd, bd))


# -- SupCon ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
def test_supcon_matches_reference(backend):
    for n in sizes_for(backend):
        x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
        lab = torch.randint(0, 3, (n,))
        check_same(lambda: C.supcon_loss(x, lab, temperature=0.2, backend=backend),
                   lambda: R.supcon_loss(x, lab, 0.2), [x])


def test_supcon_matches_pml_and_gradcheck():
    losses, _ = _pml()
    x = torch.randn(97, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    lab = torch.randint(0, 10, (97,))
    ours, theirs = C.supcon_loss(x, lab, temperature=0.07), losses.SupConLoss(temperature=0.07)(x2, lab)
    ours.backward()
    theirs.backward()
    assert_close(ours, theirs.double(), torch.float32, scale=10)
    assert_close(x.grad, x2.grad.double(), torch.float32, scale=10)
    xd = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labd = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda x: C.supcon_loss(x, labd, temperature=0.5, backend="cpu"), (xd,))


def test_supcon_degenerate_labels():
    x = torch.randn(6, 4, requires_grad=True)
    assert float(C.supcon_loss(x, torch.zeros(6, dtype=torch.long), temperature=0.1).detach()) == 0.0
    assert float(C.supcon_loss(x, torch.arange(6), temperature=0.1).detach()) == 0.0  # no positives


# -- triplet -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_matches_reference(backend, distance, mining):
    for n in sizes_for(backend):
        x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
        lab = torch.randint(0, 3, (n,))
        for normalize, red in [(True, "mean_nonzero"), (False, "mean"), (False, "sum")]:
            check_same(lambda: C.triplet_loss(x, lab, margin=0.3, mining=mining, distance=distance, normalize=normalize,
                                              reduction=red, backend=backend),
                       lambda: R.triplet_loss(x, lab, 0.3, mining=mining, distance=distance, normalize=normalize,
                                              reduction=red), [x])


def test_triplet_matches_pml():
    losses, miners = _pml()
    x = torch.randn(120, 16, requires_grad=True)
    lab = torch.randint(0, 8, (120,))
    x2 = x.detach().clone().requires_grad_()
    ours = C.triplet_loss(x, lab, margin=0.2)
    miner = miners.BatchHardMiner()
    theirs = losses.TripletMarginLoss(margin=0.2)(x2, lab, miner(x2, lab))
    ours.backward()
    theirs.backward()
    assert_close(ours, theirs.double(), torch.float32, scale=20)
    assert_close(x.grad, x2.grad.double(), torch.float32, scale=20)
    x3 = x.detach().clone().requires_grad_()
    xs = x.detach()[:40].clone().requires_grad_()
    theirs_all = losses.TripletMarginLoss(margin=0.2)(xs, lab[:40])
    ours_all = C.triplet_loss(x3[:40], lab[:40], margin=0.2, mining="batch_all")
    assert_close(ours_all, theirs_all.double(), torch.float32, scale=20)


def test_hard_mine_kernel():
    x = torch.randn(300, 12)
    lab = torch.randint(0, 9, (300,))
    lab[5] = 99  # a class of one: no positive
    pi, ni = ops.hard_mine.with_backend("cpu", x, lab)
    rp, rn = R.hard_mine(x.double(), lab)
    assert torch.equal(pi, rp) and torch.equal(ni, rn)
    assert int(pi[5]) == -1


# -- DINO --------------------------------------------------------------------------------------------

def test_dino_loss_and_center():
    s = torch.randn(4, 9, 33, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 9, 33, dtype=torch.float64)
    c = torch.randn(1, 33, dtype=torch.float64)
    check_same(lambda: C.dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.04),
               lambda: R.dino_loss(s, t, c, 0.1, 0.04), [s])
    check_same(lambda: C.dino_loss(s[0], t[0], c, student_temp=0.1, teacher_temp=0.04),
               lambda: R.dino_loss(s[0], t[0], c, 0.1, 0.04), [s])
    c0 = c.clone()
    C.update_center(c, t, momentum=0.9)
    assert_close(c, 0.9 * c0 + 0.1 * t.reshape(-1, 33).mean(0, keepdim=True))


# -- top-k -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_param())
def test_topk_similarity(backend):
    nq, nk = (5, 40) if backend == "triton" else (59, 3000)
    q, k = torch.randn(nq, 24), torch.randn(nk, 24)
    for kk in (1, 7):
        v, i = C.topk_similarity(q, k, kk, backend=backend)
        rv, ri = torch.topk(q.double() @ k.double().T, kk, dim=1)
        assert torch.equal(i, ri)
        assert_close(v, rv, torch.float32, scale=5)
    v, i = C.topk_similarity(q, k, nk, backend=backend)  # k = every key
    assert torch.equal(torch.sort(i, 1).values, torch.arange(nk).expand(nq, nk))


def _topk_exact(q, k, kk):
    return C.topk_similarity(q, k, kk, screen=False, backend="cpu")


@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 2049, 33), (515, 2500, 64)])
@pytest.mark.parametrize("data", ["gaussian", "clustered", "scaled"])
def test_topk_screened_is_exact(shape, data):
    # the bfloat16 screen must return exactly the float32 top-k, whatever the score spread
    nq, nk, d = shape
    g = torch.Generator().manual_seed(nk)
    q, k = torch.randn(nq, d, generator=g), torch.randn(nk, d, generator=g)
    if data == "clustered":  # many near-equal scores: keys are 5 centres plus tiny noise
        k = torch.randn(5, d, generator=g)[torch.randint(0, 5, (nk,), generator=g)] + 1e-3 * k
        q = k[torch.randint(0, nk, (nq,), generator=g)] + 1e-2 * q
    elif data == "scaled":  # norms over 40 decades
        k = k * torch.logspace(-20, 20, nk)[torch.randperm(nk, generator=g)][:, None]
        q = q * 1e15
    s64 = q.double() @ k.double().T
    tol = 1e-5 * q.double().norm(dim=1, keepdim=True) * k.double().norm(dim=1).max()  # float32 rounding
    for kk in sorted({1, min(7, nk), nk}):
        v, i, flagged = ops.topk_screened(q, k, kk)
        ok = ~flagged
        assert (s64.gather(1, i)[ok] - s64.topk(kk, dim=1).values[ok]).abs().le(tol[ok]).all()
        assert (v.double() - s64.gather(1, i)).abs()[ok].le(tol[ok]).all()
        v, i = C.topk_similarity(q, k, kk, screen=True)
        assert (s64.gather(1, i) - s64.topk(kk, dim=1).values).abs().le(tol).all()
        if kk < nk and data != "clustered":  # clear gaps: the very same keys as the float32 path
            assert torch.equal(i, _topk_exact(q, k, kk)[1])


def test_topk_screened_ties_and_nonfinite():
    # 100000 equal scores: no screen can settle them, the query is flagged and redone in float32
    q, k = torch.ones(2, 16), torch.ones(100_000, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one key range: its candidate list passes the cap
    try:
        v, i, flagged = ops.topk_screened(q, k, 3)
    finally:
        torch.set_num_threads(threads)
    assert bool(flagged.all())
    v, i = C.topk_similarity(q, k, 3, screen=True)
    assert torch.equal(i, torch.arange(3).expand(2, 3))  # ties: lowest key index
    q, k = torch.randn(4, 16), torch.randn(300, 16)
    q[1, 3], k[7, 0] = math.nan, math.inf
    k[1::2, 2] = math.nan  # NaN keys beside finite ones in every block of the scan
    (v, i), (v0, i0) = C.topk_similarity(q, k, 5, screen=True), _topk_exact(q, k, 5)
    assert torch.equal(i, i0)  # the NaN query selects nothing (-1), as in float32
    assert_close(v, v0, torch.float32)
    s64 = (q.double() @ k.double().T).nan_to_num(nan=-math.inf)  # NaN scores are never selected
    want = s64[[0, 2, 3]].topk(5, dim=1).indices
    assert torch.equal(i[[0, 2, 3]], want) and bool((i[1] == -1).all())
    with pytest.raises(ValueError, match="screen"):
        C.topk_similarity(q, k, 5, screen="yes")


# -- custom ops --------------------------------------------------------------------------------------

def test_opcheck():
    x, y = torch.randn(13, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    lab = torch.randint(0, 3, (13,))
    lr, lc = ops.lse_sweep.with_backend("cpu", x, y, 0.7, True, False)
    cases = [
        (ops.lse_sweep, (x, y, 0.7, True, False)),
        (ops.lse_sweep, (x, x, 0.7, False, True)),
        (ops.softmax_acc, (x, y, 0.7, torch.rand(13, dtype=torch.float64), lr, torch.rand(11, dtype=torch.float64), lc,
                           False)),
        (ops.siglip_rows, (x, y, 2.0, -1.0)),
        (ops.siglip_acc, (x, y, 2.0, -1.0)),
        (ops.softmax_acc_xy, (x, y, 0.7, torch.rand(13, dtype=torch.float64), lr, None, None, False)),
        (ops.siglip_grads, (x, y, 2.0, -1.0, True)),
        (ops.siglip_grads, (x, y, 2.0, -1.0, False)),
        (ops.hard_mine, (x, lab)),
        (ops.topk, (x, y, 3)),
        (ops.topk_screened, (x.float(), y.float(), 3)),
    ]
    for op, args in cases:
        torch.library.opcheck(op.overload, args)


# -- bad input ---------------------------------------------------------------------------------------

def test_bad_inputs():
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="batch size"):
        C.clip_loss(x, torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="feature size"):
        C.clip_loss(x, torch.randn(4, 2), 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        C.clip_loss(x, y, float("inf"))
    with pytest.raises(ValueError, match="logit_scale"):
        C.clip_loss(x, y, torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        C.info_nce(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        C.supcon_loss(x, torch.arange(4), temperature=-1.0)
    with pytest.raises(ValueError, match="labels"):
        C.supcon_loss(x, torch.arange(3), temperature=0.1)
    with pytest.raises(TypeError, match="labels"):
        C.triplet_loss(x, torch.rand(4), margin=0.1)
    with pytest.raises(ValueError, match="mining"):
        C.triplet_loss(x, torch.arange(4), margin=0.1, mining="semi")
    with pytest.raises(ValueError, match="k must be"):
        C.topk_similarity(x, y, 5)
    with pytest.raises(TypeError, match="image_features"):
        C.clip_loss(x.long(), y, 1.0)
    with pytest.raises(ValueError, match="center"):
        C.dino_loss(x, y, torch.zeros(5), student_temp=0.1, teacher_temp=0.04)
    with pytest.raises(ValueError, match="logit_bias"):
        C.siglip_loss(x, y, 1.0, float("nan"))


def test_nan_propagates():
    x, y = torch.randn(9, 3), torch.randn(9, 3)
    x[2, 1] = float("nan")
    assert torch.isnan(C.clip_loss(x, y, 2.0))
    assert torch.isnan(C.siglip_loss(x, y, 2.0, -1.0))


def test_cpu_kernels_across_tiles():
    """Sizes crossing the C++ row blocks (128) and column tiles (1024) with ragged tails, so the
    multi-task paths and the per-thread column partials of the one-sweep CLIP forward run."""
    n, m = 1100, 1031
    x, y = torch.randn(n, 9, dtype=torch.float64), torch.randn(m, 9, dtype=torch.float64)
    for dt in (torch.float64, torch.float32):
        xs, ys = x.to(dt), y.to(dt)
        scale = 1.3
        S = scale * x @ y.T
        lr, lc = ops.lse_sweep.with_backend("cpu", xs, ys, scale, True, False)
        assert_close(lr, S.logsumexp(1), dt, scale=5)
        assert_close(lc, S.logsumexp(0), dt, scale=5)
        ra, ca = torch.rand(n, dtype=torch.float64), torch.rand(m, dtype=torch.float64)
        rl, cl = S.logsumexp(1), S.logsumexp(0)
        acc = ops.softmax_acc.with_backend("cpu", xs, ys, scale, ra.to(dt), rl.to(dt), ca.to(dt), cl.to(dt), False)
        ref = ops.softmax_acc.with_backend("reference", x, y, scale, ra, rl, ca, cl, False)
        assert_close(acc, ref, dt, scale=20)
        assert_close(ops.siglip_rows.with_backend("cpu", xs, ys, scale, -2.0), ops.siglip_rows.with_backend("reference", x, y, scale, -2.0), dt,
                     scale=200)
        a1, r1 = ops.siglip_acc.with_backend("cpu", xs, ys, scale, -2.0)
        a2, r2 = ops.siglip_acc.with_backend("reference", x, y, scale, -2.0)
        assert_close(a1, a2, dt, scale=200)
        assert_close(r1, r2, dt, scale=200)
    lse = ops.lse_sweep.with_backend("cpu", x, x, 0.5, False, True)[0]
    assert_close(lse, R.lse_offdiag(x, 0.5))
    lab = torch.randint(0, 13, (n,))
    for got, want in zip(ops.hard_mine.with_backend("cpu", x, lab), R.hard_mine(x, lab)):
        assert torch.equal(got, want)
    v, i = ops.topk.with_backend("cpu", x, y, 4)
    rv, ri = torch.topk(x @ y.T, 4, dim=1)
    assert torch.equal(i, ri)
    assert_close(v, rv)


def test_noncontiguous_inputs():
    x, y = feats(40, 16, grad=False)
    xt, yt = x.T.contiguous().T, y[:, ::1].T.contiguous().T
    xs, ys = torch.randn(40, 32, dtype=torch.float64)[:, ::2], torch.randn(40, 32, dtype=torch.float64)[:, ::2]
    assert not xs.is_contiguous()
    assert_close(C.clip_loss(xs, ys, 2.0), R.clip_loss(xs, ys, 2.0))
    assert_close(C.siglip_loss(xs, ys, 2.0, -1.0), R.siglip_loss(xs, ys, 2.0, -1.0))
    assert_close(C.clip_loss(xt, yt, 2.0), R.clip_loss(x, y, 2.0))
