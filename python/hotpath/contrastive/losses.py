"""Contrastive losses with memory linear in the batch (no B x B matrix, forward or backward)."""
import torch
import torch.nn.functional as F

from .. import _ext
from .. import _validate as V
from .. import backends
from .._ops import contrastive as ops
from ._core import RowLSE, SelfLSE, bias_arg as _bias_arg, cast, clip_terms as _clip_terms, features_pair, labels_arg
from ._core import operands, rowdot, scale_arg
from ._core import siglip_sum as _siglip_sum
from ._core import result_dtype
from ._metric import (all_triplets, as_distance, distance_arg, hard_triplets_dense, pair_masks, pair_matrix,
                      ref_arg, supcon_dense, triplet_terms)
from .distributed import distributed_clip_loss, gather_features, siglip_exchange_terms


# -- CLIP / InfoNCE ----------------------------------------------------------------------------------

@backends.takes_backend
def clip_loss(image_features, text_features, logit_scale, logit_bias=None, *, backend="auto"):
    """open_clip's ClipLoss (one process): (CE(image -> text) + CE(text -> image)) / 2.

    logit_scale is the multiplier (open_clip's `logit_scale.exp()`), a number, a 0-d tensor or a
    (B,) tensor of per-sample scales (row i of both logit matrices is scaled by logit_scale[i]);
    tensors receive gradients. logit_bias (optional) is added to every logit as open_clip does; it
    cancels in the softmax, so its gradient is zero. Half-precision features accumulate in float32
    (on the GPU their tiles feed the tensor cores as they are: backends.operand_dtype).
    """
    features_pair("image_features", image_features, "text_features", text_features)
    (img, txt), dtype = operands(image_features, text_features)
    bias_t, bias_f = _bias_arg(logit_bias, dtype, img.device)
    if img.shape[0] == 0:
        raise ValueError("image_features must hold at least one sample")
    li, lt = _clip_terms(img, txt, img, txt, logit_scale, 0, symmetric=True)
    if bias_t is not None:  # keeps logit_bias in the graph (its gradient is exactly zero)
        li, lt = li + (bias_t - bias_t), lt + (bias_t - bias_t)
    return ((li.mean() + lt.mean()) / 2).to(result_dtype(image_features, text_features))


@backends.takes_backend
def info_nce(query, keys, *, temperature, negatives=None, reduction="mean", backend="auto"):
    """InfoNCE: -log softmax of <q_i, k_i> / t among {<q_i, k_j> / t} and, optionally, extra
    negatives {<q_i, n_l> / t} (a MoCo queue (Q, d)): the two log-sum-exps are streamed separately
    and merged, never concatenated into B x (B + Q). temperature: number, 0-d tensor or (B,)
    per-sample tensor (> 0, differentiable). reduction: "mean" | "sum" | "none"."""
    V.one_of("reduction", reduction, ("mean", "sum", "none"))
    features_pair("query", query, "keys", keys)
    if negatives is not None:
        features_pair("query", query, "negatives", negatives, same_rows=False)
    (q, k, neg), dtype = operands(query, keys, negatives)
    n = q.shape[0]
    t_f, t_t, per_sample = scale_arg("temperature", temperature, n, positive=True)
    if per_sample:
        # the scaled queries are new operands: float32 tiles (see clip_terms)
        q, k, neg = cast(dtype, q, k, neg)
        inv = 1.0 / t_t.to(dtype)
        qs = q * inv[:, None]
        lse = RowLSE.apply(qs, k, None, 1.0, False)
        if neg is not None and neg.shape[0] > 0:
            lse = torch.logaddexp(lse, RowLSE.apply(qs, neg, None, 1.0, False))
        pos = rowdot(qs, k)
    else:
        inv_t = (1.0 / t_t.to(dtype)) if t_t is not None else None
        inv_f = 1.0 / t_f
        lse = RowLSE.apply(q, k, inv_t, inv_f, False)
        if neg is not None and neg.shape[0] > 0:
            lse = torch.logaddexp(lse, RowLSE.apply(q, neg, inv_t, inv_f, False))
        pos = (inv_t if inv_t is not None else inv_f) * rowdot(q, k)
    loss = (lse - pos).to(result_dtype(query, keys, negatives))
    return loss.mean() if reduction == "mean" else (loss.sum() if reduction == "sum" else loss)


class ClipLoss(torch.nn.Module):
    """Drop-in for open_clip.loss.ClipLoss; see hotpath.contrastive.clip_loss.

    world_size > 1 gathers features through torch.distributed exactly as open_clip does
    (local_loss: this rank's rows against all columns; gather_with_grad: gradients flow through
    the gather), so loss and gradients match open_clip's for every setting.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False, backend="auto"):
        super().__init__()
        if use_horovod:
            raise ValueError("use_horovod is not supported: use torch.distributed")
        backends.check(backend)
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size), got {rank!r}")
        self.local_loss, self.gather_with_grad = bool(local_loss), bool(gather_with_grad)
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        if self.world_size == 1:
            loss = clip_loss(image_features, text_features, logit_scale, logit_bias, backend=self.backend)
        else:
            loss = distributed_clip_loss(image_features, text_features, logit_scale, logit_bias,
                                         local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                                         rank=self.rank, world_size=self.world_size, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """(logits_per_image, logits_per_text), as open_clip's ClipLoss.get_logits: the full
        score matrices (B x B, or B x global batch with local_loss), for evaluation code that
        reads them. The loss itself never builds them. Features gathered as the loss gathers."""
        features_pair("image_features", image_features, "text_features", text_features)
        if self.world_size > 1:
            all_img, all_txt = gather_features(image_features, text_features, local_loss=self.local_loss,
                                               gather_with_grad=self.gather_with_grad, rank=self.rank,
                                               world_size=self.world_size)
            if self.local_loss:
                per_image = logit_scale * image_features @ all_txt.T
                per_text = logit_scale * text_features @ all_img.T
            else:
                per_image = logit_scale * all_img @ all_txt.T
                per_text = per_image.T
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image, per_text = per_image + logit_bias, per_text + logit_bias
        return per_image, per_text


# -- SigLIP ------------------------------------------------------------------------------------------

@backends.takes_backend
def siglip_loss(image_features, text_features, logit_scale, logit_bias=None, *, negative_only=False, backend="auto"):
    """open_clip's SigLipLoss (one process): -sum_ij log sigmoid(label_ij (s <x_i, y_j> + b)) / B,
    label +1 for i == j and -1 otherwise (all -1 with negative_only). Streams a softplus epilogue:
    no B x B. logit_scale (multiplier) and logit_bias: numbers or 0-d tensors (differentiable)."""
    # positives sit on the diagonal, so only the negative-only terms (another rank's texts) may
    # pair batches of different sizes
    features_pair("image_features", image_features, "text_features", text_features, same_rows=not negative_only)
    (img, txt), dtype = operands(image_features, text_features)
    if img.shape[0] == 0:
        raise ValueError("image_features must hold at least one sample")
    s_f, s_t, _ = scale_arg("logit_scale", logit_scale, img.shape[0], allow_vector=False)
    b_t, b_f = _bias_arg(logit_bias, dtype, img.device)
    s_t = s_t.to(dtype) if s_t is not None else None
    loss = _siglip_sum(img, txt, s_t, s_f, b_t, b_f, negative_only) / img.shape[0]
    return loss.to(result_dtype(image_features, text_features))


class SigLipLoss(torch.nn.Module):
    """Drop-in for open_clip.loss.SigLipLoss. world_size > 1 exchanges text features with the
    neighbouring ranks (dist_impl "bidir" (default) or "shift", point-to-point, with gradients
    sent back the other way) or gathers them ("gather"), as open_clip does. open_clip's
    "reduce" (one all_reduce per rank to broadcast its texts) gives the same terms as "gather"
    and runs that path: world_size all-reduces of the whole text block cost more than one gather."""

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, chunk_size=0, backend="auto"):
        super().__init__()
        backends.check(backend)
        # open_clip's chunk_size bounds its B x B logits; hotpath never builds them, so any value
        # is accepted and changes nothing
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0, got {chunk_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size), got {rank!r}")
        self.dist_impl = dist_impl or "bidir"
        V.one_of("dist_impl", self.dist_impl, ("bidir", "shift", "reduce", "gather"))
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, backend=self.backend)
        if self.world_size > 1:
            loss = loss + siglip_exchange_terms(image_features, text_features, logit_scale, logit_bias,
                                                rank=self.rank, world_size=self.world_size,
                                                dist_impl="gather" if self.dist_impl == "reduce" else self.dist_impl,
                                                backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, logit_bias=None, negative_only=False):
        """open_clip's SigLipLoss._loss (this process's terms), which code written for it calls."""
        return siglip_loss(image_features, text_features, logit_scale, logit_bias, negative_only=negative_only,
                           backend=self.backend)

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """open_clip's SigLipLoss.get_logits: logit_scale * image @ text.T (+ logit_bias), B x B."""
        logits = logit_scale * image_features @ text_features.T
        return logits + logit_bias if logit_bias is not None else logits


# -- supervised contrastive ----------------------------------------------------------------------------

@backends.takes_backend
def supcon_loss(features, labels, *, temperature=0.1, distance="cosine", normalize=True, ref_emb=None,
                ref_labels=None, backend="auto"):
    """Supervised contrastive loss, as pytorch-metric-learning's SupConLoss(temperature):
    similarities / temperature (distances enter negated); for each anchor i with at least one
    positive (same label, j != i), -mean over positives p of [s_ip - LSE_{j != i} s_ij]; averaged
    over the anchors whose loss is nonzero (PML's AvgNonZeroReducer, which drops anchors without
    positives). Zero when the batch has no positive or no negative pair.

    distance: "cosine" (default), "dot", "euclidean", "squared_euclidean", or a PML distance
    object (CosineSimilarity, DotProductSimilarity, LpDistance(p=2, power=1 or 2)); normalize:
    L2-normalize the features first (PML's normalize_embeddings; always on for "cosine").
    ref_emb / ref_labels: score the features against this reference set instead of against
    themselves (PML's ref_emb): every (i, j) pair counts, no diagonal is excluded.

    Inner-product similarities (and the squared distance of normalized features, 2 - 2 cos) are
    streamed: the positives' score sum is <x_i, class sum> (class sums in O(B d)) and the
    denominator a streamed log-sum-exp, no B x B. "euclidean" and unnormalized squared
    distances are computed from the B x B matrix, as PML computes them.
    Half-precision features are computed in float32 and the loss is returned in their dtype.
    """
    V.tensor("features", features, ndims=(2,))
    n = features.shape[0]
    lab = labels_arg(labels, n)
    V.same_device(features=features, labels=labels)
    kind, norm = distance_arg(distance, normalize, default="cosine")
    ref_emb, ref_labels = ref_arg(ref_emb, ref_labels, features, "features")
    t_f, t_t, _ = scale_arg("temperature", temperature, n, positive=True, allow_vector=False)
    dtype = V.compute_dtype(features, ref_emb)
    x = features.to(dtype)
    x = F.normalize(x, dim=1) if norm else x
    self_ref = ref_emb is None
    if self_ref:
        y, rlab = x, lab
    else:
        rlab = labels_arg(ref_labels, ref_emb.shape[0], "ref_labels")
        V.same_device(ref_emb=ref_emb, ref_labels=ref_labels)
        y = ref_emb.to(dtype)
        y = F.normalize(y, dim=1) if norm else y
    out = result_dtype(features, ref_emb)
    zero = (x.sum() + y.sum()) * 0
    if x.shape[0] == 0 or y.shape[0] == 0:
        return zero.to(out)
    if kind in ("euclidean", "squared_euclidean") and not (kind == "squared_euclidean" and norm):
        t = t_t.to(dtype) if t_t is not None else t_f
        losses = supcon_dense(x, y, lab, rlab, self_ref, kind, t)
        return (zero if losses is None else _reduce(losses, "mean_nonzero", x)).to(out)
    # |x - y|^2 = 2 - 2 <x, y> on unit vectors: the constant cancels in the softmax, the 2 scales
    mult = 2.0 if kind == "squared_euclidean" else 1.0
    inv_t = mult / (t_t.to(dtype) if t_t is not None else t_f)
    uniq, inv = torch.unique(torch.cat([lab, rlab]), return_inverse=True)
    inv_x, inv_y = inv[:n], inv[n:]
    cnt = torch.bincount(inv_y, minlength=uniq.numel())
    npos = cnt[inv_x] - (1 if self_ref else 0)
    if not bool((npos > 0).any()) or not bool((cnt[inv_x] < y.shape[0]).any()):
        return zero.to(out)  # no positive or no negative pair anywhere: PML returns zero
    scale_t = inv_t if t_t is not None else None
    if self_ref:
        lse = SelfLSE.apply(x, scale_t, mult / t_f)
    else:
        lse = RowLSE.apply(x, y, scale_t, mult / t_f, False)
    csum = torch.zeros(uniq.numel(), x.shape[1], dtype=dtype, device=x.device).index_add(0, inv_y, y)
    pos_sum = csum[inv_x] - x if self_ref else csum[inv_x]
    has = npos > 0
    pos_score = inv_t * (x * pos_sum).sum(1)
    losses = lse[has] - pos_score[has] / npos[has].to(dtype)
    return _reduce(losses, "mean_nonzero", x).to(out)


# -- triplet -------------------------------------------------------------------------------------------

def _pair_dist(a, b, kind):
    if kind == "euclidean":
        return torch.linalg.vector_norm(a - b, dim=1)
    if kind == "squared_euclidean":
        return (a - b).pow(2).sum(1)
    if kind == "cosine":
        return 1 - (a * b).sum(1)
    return -(a * b).sum(1)


def _reduce(losses, reduction, like):
    """PML's reducers. A NaN term counts as nonzero: it propagates instead of being filtered out."""
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean() if losses.numel() else like.sum() * 0
    nz = (losses > 0) | torch.isnan(losses)
    return losses[nz].mean() if bool(nz.any()) else like.sum() * 0


@backends.takes_backend
def triplet_loss(embeddings, labels, *, margin=0.05, mining="batch_hard", distance="euclidean", normalize=True,
                 reduction="mean_nonzero", smooth_loss=False, ref_emb=None, ref_labels=None, return_triplets=False,
                 backend="auto"):
    """Triplet margin loss relu(d(a, p) - d(a, n) + margin) (softplus with smooth_loss=True).

    mining="batch_hard": per anchor the farthest positive and nearest negative (anchors lacking
    either are dropped), found by a streaming masked arg-max / arg-min with label masks formed on
    the fly — pytorch-metric-learning's TripletMarginLoss + BatchHardMiner. mining="batch_all":
    every valid (a, p, n) (PML's TripletMarginLoss without a miner), summed per anchor in
    O(B log B) from sorted negative distances, anchors streamed in chunks.

    distance: "euclidean" (default), "squared_euclidean", "cosine" (1 - cosine similarity),
    "dot" (negated inner product), or a PML distance object (LpDistance(p=2, power=1 or 2),
    CosineSimilarity, DotProductSimilarity); for similarities the margin applies to s_an - s_ap,
    as in PML. normalize=True L2-normalizes first (PML's default). ref_emb / ref_labels:
    positives and negatives come from this reference set (PML's ref_emb); the anchor itself is
    then not excluded. reduction "mean_nonzero" (average over triplets with positive loss, PML's
    default), "mean", "sum", or "none" (batch_hard: per kept anchor).
    return_triplets=True returns (loss, (anchors, positives, negatives)): the mined index
    triples (indices into ref_emb for positives / negatives when given). With batch_all that is
    every valid triple, O(B^3) indices.

    NaN: a NaN (or inf) embedding makes every triplet it enters NaN, and a NaN triplet makes the
    reduced loss NaN (also under mean_nonzero, where PML would silently drop it).
    Half-precision embeddings are computed in float32; the loss is returned in their dtype.
    """
    V.tensor("embeddings", embeddings, ndims=(2,))
    n = embeddings.shape[0]
    lab = labels_arg(labels, n)
    V.same_device(embeddings=embeddings, labels=labels)
    V.scalar("margin", margin, allow_tensor=False)
    V.one_of("mining", mining, ("batch_hard", "batch_all"))
    V.one_of("reduction", reduction, ("mean_nonzero", "mean", "sum", "none"))
    if not isinstance(smooth_loss, bool):
        raise TypeError(f"smooth_loss must be a bool, got {type(smooth_loss).__name__}")
    if reduction == "none" and mining != "batch_hard":
        raise ValueError("reduction='none' is only defined for mining='batch_hard'")
    kind, norm = distance_arg(distance, normalize, default="euclidean")
    ref_emb, ref_labels = ref_arg(ref_emb, ref_labels, embeddings)
    dtype = V.compute_dtype(embeddings, ref_emb)
    out = result_dtype(embeddings, ref_emb)
    x = embeddings.to(dtype)
    x = F.normalize(x, dim=1) if norm else x
    self_ref = ref_emb is None
    if self_ref:
        y, rlab = x, lab
    else:
        rlab = labels_arg(ref_labels, ref_emb.shape[0], "ref_labels")
        V.same_device(ref_emb=ref_emb, ref_labels=ref_labels)
        y = ref_emb.to(dtype)
        y = F.normalize(y, dim=1) if norm else y
    finite = bool(torch.isfinite(x.detach().sum())) and (self_ref or bool(torch.isfinite(y.detach().sum())))
    margin = float(margin)
    act = F.softplus if smooth_loss else F.relu
    if mining == "batch_hard":
        # squared-Euclidean order is the order of every kind on unit vectors (and of both
        # Euclidean kinds always), so the streaming miner serves those; NaN goes the dense way
        streamed = self_ref and finite and (kind in ("euclidean", "squared_euclidean") or norm)
        if streamed:
            pi, ni = ops.hard_mine(x.detach().contiguous(), lab)
            a = torch.nonzero((pi >= 0) & (ni >= 0)).flatten()
            p, ng = pi[a], ni[a]
            losses = act(_pair_dist(x[a], x[p], kind) - _pair_dist(x[a], x[ng], kind) + margin)
        else:
            a, p, ng, dap, dan = hard_triplets_dense(x, y, lab, rlab, self_ref, kind)
            losses = act(dap - dan + margin)
        loss = _reduce(losses, reduction, x).to(out)
        return (loss, (a, p, ng)) if return_triplets else loss
    if smooth_loss or not finite:
        total, n_trip, n_pos = triplet_terms(x, y, lab, rlab, self_ref, kind, margin, smooth_loss, reduction)
    else:
        total, n_trip, n_pos = _batch_all(x, y, lab, rlab, self_ref, kind, margin)
    if reduction == "sum":
        loss = total
    else:
        count = n_trip if reduction == "mean" else n_pos
        loss = total / count if count else total
    loss = loss.to(out)
    return (loss, all_triplets(lab, rlab, self_ref)) if return_triplets else loss


def _batch_all(x, y, lab, rlab, self_ref, kind, margin, chunk_elems=1 << 21):
    """sum over valid triplets of relu(d_ap - d_an + margin), the number of triplets and the
    number with a positive loss: per (a, p), the active negatives are those with
    d_an < d_ap + margin, a prefix of the anchor's sorted negative distances."""
    n, m = x.shape[0], y.shape[0]
    chunk = max(1, chunk_elems // max(m, 1))
    total = x.sum() * 0
    n_active = 0
    n_trip = 0
    for i0 in range(0, n, chunk):
        xa = x[i0:i0 + chunk]
        D = as_distance(pair_matrix(xa, y, kind), kind)
        pos, neg = pair_masks(lab[i0:i0 + chunk], rlab, False)
        if self_ref:
            r = torch.arange(xa.shape[0], device=x.device)
            pos[r, r + i0] = False
        inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
        dn, _ = torch.sort(torch.where(neg, D, inf), dim=1)
        csum = torch.cat([dn.new_zeros(dn.shape[0], 1), torch.cumsum(torch.where(torch.isinf(dn), 0.0, dn), 1)], 1)
        thr = D + margin
        k = torch.searchsorted(dn.detach(), thr.detach().contiguous(), right=False)  # negatives with d_an < d_ap + margin
        s_active = k.to(x.dtype) * thr - torch.gather(csum, 1, k)
        total = total + torch.where(pos, s_active, 0.0).sum()
        n_active += int(torch.where(pos, k, 0).sum())
        n_trip += int((pos.sum(1) * neg.sum(1)).sum())
    return total, n_trip, n_active


# -- DINO ----------------------------------------------------------------------------------------------

def dino_loss(student, teacher, center, *, student_temp=0.1, teacher_temp=0.04):
    """DINO's cross-entropy between the centered, sharpened teacher softmax (no gradient) and the
    student log-softmax over K prototypes.

    2-D student / teacher (B, K): mean over rows. 3-D (views, B, K): mean over all (teacher view
    iq, student view v) pairs with v != iq, as DINOLoss (the first teacher views are the student's
    global views). The pair sum is linear in each side, so it costs O(views), not O(views^2):
    sum_{iq, v} CE = Vt * sum_v lse_v - <sum_iq p_iq, sum_v s_v> / student_temp.
    """
    V.tensor("student", student, ndims=(2, 3))
    V.tensor("teacher", teacher, ndims=(2, 3))
    V.tensor("center", center, ndims=(1, 2))
    V.scalar("student_temp", student_temp, positive=True)
    V.scalar("teacher_temp", teacher_temp, positive=True)
    V.same_device(student=student, teacher=teacher, center=center)
    if student.dim() != teacher.dim():
        raise ValueError(f"student and teacher must both be 2-D or both 3-D, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"student and teacher must agree in (B, K), got {tuple(student.shape)} and {tuple(teacher.shape)}")
    K = student.shape[-1]
    if center.shape[-1] != K or center.numel() != K:
        raise ValueError(f"center must have K = {K} entries, got shape {tuple(center.shape)}")
    dtype = V.compute_dtype(student, teacher, center)
    s = student.to(dtype)
    with torch.no_grad():
        p = torch.softmax((teacher.to(dtype) - center.to(dtype).reshape(K)) / teacher_temp, dim=-1)
    if s.dim() == 2:
        lse = torch.logsumexp(s / student_temp, dim=-1)
        return (lse - (p * s).sum(-1) / student_temp).mean().to(result_dtype(student))
    vs, vt, B = s.shape[0], p.shape[0], s.shape[1]
    lse = torch.logsumexp(s / student_temp, dim=-1)          # (vs, B)
    full = vt * lse.sum() - (p.sum(0) * s.sum(0)).sum() / student_temp
    d = min(vs, vt)
    same = lse[:d].sum() - (p[:d] * s[:d]).sum() / student_temp
    npairs = vt * vs - d
    if npairs == 0:
        raise ValueError("dino_loss with views needs at least one (teacher, student) pair of different views")
    return ((full - same) / (npairs * B)).to(result_dtype(student))


@torch.no_grad()
def update_center(center, teacher, momentum=0.9, *, distributed=None):
    """DINO's center EMA, in place: center = m * center + (1 - m) * mean of teacher rows (over
    every process when torch.distributed is initialized, unless distributed=False). Returns center.

    An empty teacher batch (no rows on any process) has no mean: the center is left unchanged
    (rather than moved towards NaN). Processes with different numbers of rows are weighted by
    their rows, so the mean is the mean of the concatenated batch."""
    V.tensor("center", center, ndims=(1, 2))
    V.tensor("teacher", teacher, ndims=(2, 3))
    V.scalar("momentum", momentum, allow_tensor=False)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    K = center.shape[-1]
    if teacher.shape[-1] != K:
        raise ValueError(f"teacher must have K = {K} columns, got {tuple(teacher.shape)}")
    t = teacher.reshape(-1, K).to(torch.float32 if center.dtype != torch.float64 else torch.float64)
    # the row count travels with the sums: one collective, and ranks may hold different counts
    stats = torch.cat([t.sum(0), t.new_tensor([t.shape[0]])])
    dist = torch.distributed
    use = dist.is_available() and dist.is_initialized() if distributed is None else bool(distributed)
    if use:
        dist.all_reduce(stats)
    count = float(stats[-1])
    if count == 0:
        return center
    center.mul_(momentum).add_((stats[:-1] / count).to(center.dtype).reshape(center.shape), alpha=1 - momentum)
    return center


# -- retrieval -----------------------------------------------------------------------------------------

@backends.takes_backend
def topk_similarity(queries, keys, k, *, screen="auto", backend="auto"):
    """Exact top-k keys by inner product for each query: (values (n, k) descending, indices (n, k)).

    Streams key tiles with a per-query sorted buffer, so memory is O((n + m) d) however many keys
    (Recall@k on millions of keys). Ties keep the lower key index. float16 / bfloat16 inputs are
    scored on the GPU's tensor cores with float32 accumulation and their values come back in
    float32 (values exact for the 16-bit inputs, ranks from those float32 scores).

    Sentinel: NaN and -inf scores are never selected. When a query has fewer than k other
    scores, the slots left over hold value -inf and index -1 (the same on every backend). Do not
    index with such rows directly -- ``keys[idx]`` would silently read the last key for -1; mask
    first: ``found = idx >= 0`` (equivalently ``values > -inf``), e.g.
    ``keys[idx.clamp_min(0)] * found[..., None]``. With finite inputs and finite scores every
    slot is filled.

    screen: on CPUs with bfloat16 dot-product instructions (AVX512-BF16 / AMX), float32 inputs
    are first scored by a bfloat16 GEMM and only the keys whose score bound can still reach the
    top-k are rescored in float32 -- the same exact result, several times faster. "auto" uses it
    there for problems of at least 2^24 pairs; True forces it (where the CPU has the
    instructions), False always scores every pair in float32. The screen's error bound and
    exactness argument are in docs/contrastive.md.
    """
    features_pair("queries", queries, "keys", keys, same_rows=False)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be in [1, number of keys = {keys.shape[0]}], got {k}")
    if screen not in ("auto", True, False):
        raise ValueError(f"screen must be 'auto', True or False, got {screen!r}")
    (q, kk), _ = operands(queries, keys)
    q, kk = q.detach().contiguous(), kk.detach().contiguous()
    with torch.no_grad():
        if _use_screen(screen, q, kk):
            vals, idx, flagged = ops.topk_screened(q, kk, k)
            if bool(flagged.any()):  # queries the screen could not settle: every pair in float32
                rows = flagged.nonzero().squeeze(1)
                vals[rows], idx[rows] = ops.topk(q[rows], kk, k)
            return vals, idx
        return ops.topk(q, kk, k)


def _use_screen(screen, q, kk):
    if screen is False or q.dtype != torch.float32 or q.device.type != "cpu":
        return False
    if backends.current() not in ("auto", "cpu") or not _ext.load_extension():
        return False
    if not torch.ops.hotpath.cpu_has_bf16_dot():
        return False
    # the screen's error bound needs finite scores; non-finite inputs take the float32 path
    # a finite sum means finite entries (an overflowing sum only sends us to the float32 path);
    # isfinite(kk).all() would allocate several times the keys' size
    finite = bool(torch.isfinite(q.sum())) and bool(torch.isfinite(kk.sum()))
    if screen is True:
        return finite
    return finite and q.shape[0] * kk.shape[0] >= 1 << 24 and q.shape[1] >= 32
