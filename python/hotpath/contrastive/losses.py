"""Contrastive losses with memory linear in the batch (no B x B matrix, forward or backward)."""
import torch
import torch.nn.functional as F

from .. import _backend, _ext
from .. import _validate as V
from .._backend import check_backend
from .._ops import contrastive as ops
from ._core import RowColLSE, RowLSE, SelfLSE, SoftplusSum, cast, features_pair, labels_arg, scale_arg


def _bias_arg(logit_bias, dtype, device):
    if logit_bias is None:
        return None, 0.0
    if isinstance(logit_bias, torch.Tensor):
        if not logit_bias.is_floating_point():
            raise TypeError(f"logit_bias must be a floating-point tensor or a number, got {logit_bias.dtype}")
        V.scalar("logit_bias", logit_bias)
        return logit_bias.reshape(()).to(dtype), float(logit_bias.detach().reshape(()))
    V.scalar("logit_bias", logit_bias)
    return None, float(logit_bias)


# -- CLIP / InfoNCE ----------------------------------------------------------------------------------

def _clip_terms(img, txt, all_img, all_txt, logit_scale, offset, backend, symmetric):
    """(image->text CE per local row, text->image CE per local row).

    img / txt are this process's rows; all_img / all_txt the columns they are scored against
    (the same tensors in one process). Positives sit at column offset + i. symmetric: the two
    score matrices are transposes (global loss), so one sweep gives both log-sum-exps.
    """
    n = img.shape[0]
    s_f, s_t, per_sample = scale_arg("logit_scale", logit_scale, n, positive=False)
    pos_t = all_txt[offset:offset + n]
    pos_i = all_img[offset:offset + n]
    if per_sample:
        s = s_t.to(img.dtype)
        lse_i = RowLSE.apply(img * s[:, None], all_txt, None, 1.0, False, backend)
        lse_t = RowLSE.apply(txt * s[:, None], all_img, None, 1.0, False, backend)
        return lse_i - s * (img * pos_t).sum(1), lse_t - s * (txt * pos_i).sum(1)
    s = s_t.to(img.dtype) if s_t is not None else s_f
    if symmetric:
        lse_i, lse_t = RowColLSE.apply(img, txt, s_t, s_f, backend)
    else:
        lse_i = RowLSE.apply(img, all_txt, s_t, s_f, False, backend)
        lse_t = RowLSE.apply(txt, all_img, s_t, s_f, False, backend)
    return lse_i - s * (img * pos_t).sum(1), lse_t - s * (txt * pos_i).sum(1)


def clip_loss(image_features, text_features, logit_scale, logit_bias=None, *, backend="auto"):
    """open_clip's ClipLoss (one process): (CE(image -> text) + CE(text -> image)) / 2.

    logit_scale is the multiplier (open_clip's `logit_scale.exp()`), a number, a 0-d tensor or a
    (B,) tensor of per-sample scales (row i of both logit matrices is scaled by logit_scale[i]);
    tensors receive gradients. logit_bias (optional) is added to every logit as open_clip does; it
    cancels in the softmax, so its gradient is zero. Half-precision features accumulate in float32.
    """
    check_backend(backend)
    features_pair("image_features", image_features, "text_features", text_features)
    dtype = V.compute_dtype(image_features, text_features)
    img, txt = cast(dtype, image_features, text_features)
    bias_t, bias_f = _bias_arg(logit_bias, dtype, img.device)
    if img.shape[0] == 0:
        raise ValueError("image_features must hold at least one sample")
    li, lt = _clip_terms(img, txt, img, txt, logit_scale, 0, backend, symmetric=True)
    if bias_t is not None:  # keeps logit_bias in the graph (its gradient is exactly zero)
        li, lt = li + (bias_t - bias_t), lt + (bias_t - bias_t)
    return (li.mean() + lt.mean()) / 2


def info_nce(query, keys, *, temperature, negatives=None, reduction="mean", backend="auto"):
    """InfoNCE: -log softmax of <q_i, k_i> / t among {<q_i, k_j> / t} and, optionally, extra
    negatives {<q_i, n_l> / t} (a MoCo queue (Q, d)): the two log-sum-exps are streamed separately
    and merged, never concatenated into B x (B + Q). temperature: number, 0-d tensor or (B,)
    per-sample tensor (> 0, differentiable). reduction: "mean" | "sum" | "none"."""
    check_backend(backend)
    V.one_of("reduction", reduction, ("mean", "sum", "none"))
    features_pair("query", query, "keys", keys)
    if negatives is not None:
        features_pair("query", query, "negatives", negatives, same_rows=False)
    dtype = V.compute_dtype(query, keys, negatives)
    q, k, neg = cast(dtype, query, keys, negatives)
    n = q.shape[0]
    t_f, t_t, per_sample = scale_arg("temperature", temperature, n, positive=True)
    if per_sample:
        inv = 1.0 / t_t.to(dtype)
        qs = q * inv[:, None]
        lse = RowLSE.apply(qs, k, None, 1.0, False, backend)
        if neg is not None and neg.shape[0] > 0:
            lse = torch.logaddexp(lse, RowLSE.apply(qs, neg, None, 1.0, False, backend))
        pos = (qs * k).sum(1)
    else:
        inv_t = (1.0 / t_t.to(dtype)) if t_t is not None else None
        inv_f = 1.0 / t_f
        lse = RowLSE.apply(q, k, inv_t, inv_f, False, backend)
        if neg is not None and neg.shape[0] > 0:
            lse = torch.logaddexp(lse, RowLSE.apply(q, neg, inv_t, inv_f, False, backend))
        pos = (inv_t if inv_t is not None else inv_f) * (q * k).sum(1)
    loss = lse - pos
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
        check_backend(backend)
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
            from .distributed import distributed_clip_loss
            loss = distributed_clip_loss(image_features, text_features, logit_scale, logit_bias,
                                         local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                                         rank=self.rank, world_size=self.world_size, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


# -- SigLIP ------------------------------------------------------------------------------------------

def _siglip_sum(img, txt, s_t, s_f, b_t, b_f, negative_only, backend):
    """sum_ij -log sigmoid(label_ij z_ij) = sum_ij softplus(z_ij) - sum_i z_ii (labels +1 on the diagonal)."""
    total = SoftplusSum.apply(img, txt, s_t, b_t, s_f, b_f, backend)
    if not negative_only:
        n = min(img.shape[0], txt.shape[0])
        s = s_t if s_t is not None else s_f
        b = b_t if b_t is not None else b_f
        total = total - (s * (img[:n] * txt[:n]).sum(1) + b).sum()
    return total


def siglip_loss(image_features, text_features, logit_scale, logit_bias=None, *, negative_only=False, backend="auto"):
    """open_clip's SigLipLoss (one process): -sum_ij log sigmoid(label_ij (s <x_i, y_j> + b)) / B,
    label +1 for i == j and -1 otherwise (all -1 with negative_only). Streams a softplus epilogue:
    no B x B. logit_scale (multiplier) and logit_bias: numbers or 0-d tensors (differentiable)."""
    check_backend(backend)
    features_pair("image_features", image_features, "text_features", text_features, same_rows=negative_only)
    dtype = V.compute_dtype(image_features, text_features)
    img, txt = cast(dtype, image_features, text_features)
    if img.shape[0] == 0:
        raise ValueError("image_features must hold at least one sample")
    s_f, s_t, _ = scale_arg("logit_scale", logit_scale, img.shape[0], allow_vector=False)
    b_t, b_f = _bias_arg(logit_bias, dtype, img.device)
    s_t = s_t.to(dtype) if s_t is not None else None
    return _siglip_sum(img, txt, s_t, s_f, b_t, b_f, negative_only, backend) / img.shape[0]


class SigLipLoss(torch.nn.Module):
    """Drop-in for open_clip.loss.SigLipLoss. world_size > 1 exchanges text features with the
    neighbouring ranks (dist_impl "bidir" (default) or "shift", point-to-point, with gradients
    sent back the other way) or gathers them ("gather"), as open_clip does."""

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, backend="auto"):
        super().__init__()
        check_backend(backend)
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size), got {rank!r}")
        self.dist_impl = dist_impl or "bidir"
        V.one_of("dist_impl", self.dist_impl, ("bidir", "shift", "gather"))
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, backend=self.backend)
        if self.world_size > 1:
            from .distributed import siglip_exchange_terms
            loss = loss + siglip_exchange_terms(image_features, text_features, logit_scale, logit_bias,
                                                rank=self.rank, world_size=self.world_size,
                                                dist_impl=self.dist_impl, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


# -- supervised contrastive ----------------------------------------------------------------------------

def supcon_loss(features, labels, *, temperature=0.1, backend="auto"):
    """Supervised contrastive loss, as pytorch-metric-learning's SupConLoss(temperature):
    cosine similarities / temperature; for each anchor i with at least one positive (same label,
    j != i), -mean over positives p of [s_ip - LSE_{j != i} s_ij]; averaged over those anchors.

    The positives' score sum is <x_i, (class sum of x) - x_i> (class sums in O(B d)); the
    denominator is a streamed log-sum-exp with the diagonal excluded: no B x B, no mask matrix.
    """
    check_backend(backend)
    V.tensor("features", features, ndims=(2,))
    n = features.shape[0]
    lab = labels_arg(labels, n)
    V.same_device(features=features, labels=labels)
    t_f, t_t, _ = scale_arg("temperature", temperature, n, positive=True, allow_vector=False)
    dtype = V.compute_dtype(features)
    x = F.normalize(features.to(dtype), dim=1)
    if n < 2:
        return x.sum() * 0
    uniq, inv, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    if uniq.numel() == 1:  # no negatives anywhere: pytorch-metric-learning returns zero
        return x.sum() * 0
    inv_t = (1.0 / t_t.to(dtype)) if t_t is not None else 1.0 / t_f
    lse = SelfLSE.apply(x, (1.0 / t_t.to(dtype)) if t_t is not None else None, 1.0 / t_f, backend)
    csum = torch.zeros(uniq.numel(), x.shape[1], dtype=dtype, device=x.device).index_add(0, inv, x)
    npos = (counts[inv] - 1).to(dtype)
    pos_score = inv_t * (x * (csum[inv] - x)).sum(1)
    has = npos > 0
    if not bool(has.any()):
        return x.sum() * 0
    mean_log_pos = pos_score[has] / npos[has] - lse[has]
    return -mean_log_pos.mean()


# -- triplet -------------------------------------------------------------------------------------------

def _pair_dist(a, b, distance):
    if distance == "euclidean":
        return torch.linalg.vector_norm(a - b, dim=1)
    return 1 - (a * b).sum(1)


def _reduce(losses, reduction, like):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean() if losses.numel() else like.sum() * 0
    nz = losses > 0
    return losses[nz].mean() if bool(nz.any()) else like.sum() * 0


def triplet_loss(embeddings, labels, *, margin=0.05, mining="batch_hard", distance="euclidean", normalize=True,
                 reduction="mean_nonzero", backend="auto"):
    """Triplet margin loss relu(d(a, p) - d(a, n) + margin).

    mining="batch_hard": per anchor the farthest positive and nearest negative (anchors lacking
    either are dropped), found by a streaming masked arg-max / arg-min with label masks formed on
    the fly — pytorch-metric-learning's TripletMarginLoss + BatchHardMiner. mining="batch_all":
    every valid (a, p, n), summed per anchor in O(B log B) from sorted negative distances, anchors
    streamed in chunks. distance "euclidean" or "cosine" (1 - cosine similarity); normalize=True
    L2-normalizes first (pytorch-metric-learning's default). reduction "mean_nonzero" (average over
    triplets with positive loss, PML's default), "mean", "sum", or "none" (batch_hard: per anchor).
    """
    check_backend(backend)
    V.tensor("embeddings", embeddings, ndims=(2,))
    n = embeddings.shape[0]
    lab = labels_arg(labels, n)
    V.same_device(embeddings=embeddings, labels=labels)
    V.scalar("margin", margin, allow_tensor=False)
    V.one_of("mining", mining, ("batch_hard", "batch_all"))
    V.one_of("distance", distance, ("euclidean", "cosine"))
    V.one_of("reduction", reduction, ("mean_nonzero", "mean", "sum", "none"))
    dtype = V.compute_dtype(embeddings)
    x = embeddings.to(dtype)
    if normalize or distance == "cosine":
        x = F.normalize(x, dim=1)
    if mining == "batch_hard":
        # squared-Euclidean order = cosine order on unit vectors, so one miner serves both.
        pi, ni = ops.hard_mine(x.detach().contiguous(), lab, backend)
        a = torch.nonzero((pi >= 0) & (ni >= 0)).flatten()
        losses = F.relu(_pair_dist(x[a], x[pi[a]], distance) - _pair_dist(x[a], x[ni[a]], distance) + margin)
        return _reduce(losses, reduction, x)
    if reduction == "none":
        raise ValueError("reduction='none' is only defined for mining='batch_hard'")
    return _batch_all(x, lab, float(margin), distance, reduction)


def _batch_all(x, lab, margin, distance, reduction, chunk_elems=1 << 21):
    n = x.shape[0]
    chunk = max(1, chunk_elems // max(n, 1))
    total = x.sum() * 0
    n_active = 0
    n_trip = 0
    for i0 in range(0, n, chunk):
        xa = x[i0:i0 + chunk]
        if distance == "euclidean":
            D = torch.cdist(xa, x)
        else:
            D = 1 - xa @ x.T
        la = lab[i0:i0 + chunk]
        same = la[:, None] == lab[None, :]
        rows = torch.arange(i0, i0 + xa.shape[0], device=x.device)
        pos = same.clone()
        pos[torch.arange(xa.shape[0], device=x.device), rows] = False
        neg = ~same
        inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
        dn, _ = torch.sort(torch.where(neg, D, inf), dim=1)
        csum = torch.cat([dn.new_zeros(dn.shape[0], 1), torch.cumsum(torch.where(torch.isinf(dn), 0.0, dn), 1)], 1)
        thr = D + margin
        k = torch.searchsorted(dn.detach(), thr.detach().contiguous(), right=False)  # negatives with d_an < d_ap + margin
        s_active = k.to(x.dtype) * thr - torch.gather(csum, 1, k)
        total = total + torch.where(pos, s_active, 0.0).sum()
        n_active += int(torch.where(pos, k, 0).sum())
        n_trip += int((pos.sum(1) * neg.sum(1)).sum())
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / n_trip if n_trip else total
    return total / n_active if n_active else total


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
        return (lse - (p * s).sum(-1) / student_temp).mean()
    vs, vt, B = s.shape[0], p.shape[0], s.shape[1]
    lse = torch.logsumexp(s / student_temp, dim=-1)          # (vs, B)
    full = vt * lse.sum() - (p.sum(0) * s.sum(0)).sum() / student_temp
    d = min(vs, vt)
    same = lse[:d].sum() - (p[:d] * s[:d]).sum() / student_temp
    npairs = vt * vs - d
    if npairs == 0:
        raise ValueError("dino_loss with views needs at least one (teacher, student) pair of different views")
    return (full - same) / (npairs * B)


@torch.no_grad()
def update_center(center, teacher, momentum=0.9, *, distributed=None):
    """DINO's center EMA, in place: center = m * center + (1 - m) * mean of teacher rows (over
    every process when torch.distributed is initialized, unless distributed=False). Returns center."""
    V.tensor("center", center, ndims=(1, 2))
    V.tensor("teacher", teacher, ndims=(2, 3))
    V.scalar("momentum", momentum, allow_tensor=False)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    K = center.shape[-1]
    if teacher.shape[-1] != K:
        raise ValueError(f"teacher must have K = {K} columns, got {tuple(teacher.shape)}")
    t = teacher.reshape(-1, K).to(torch.float32 if center.dtype != torch.float64 else torch.float64)
    batch = t.sum(0)
    count = t.shape[0]
    dist = torch.distributed
    use = dist.is_available() and dist.is_initialized() if distributed is None else bool(distributed)
    if use:
        dist.all_reduce(batch)
        count *= dist.get_world_size()
    center.mul_(momentum).add_((batch / count).to(center.dtype).reshape(center.shape), alpha=1 - momentum)
    return center


# -- retrieval -----------------------------------------------------------------------------------------

def topk_similarity(queries, keys, k, *, screen="auto", backend="auto"):
    """Exact top-k keys by inner product for each query: (values (n, k) descending, indices (n, k)).

    Streams key tiles with a per-query sorted buffer, so memory is O((n + m) d) however many keys
    (Recall@k on millions of keys). Ties keep the lower key index; NaN scores are never selected.

    screen: on CPUs with bfloat16 dot-product instructions (AVX512-BF16 / AMX), float32 inputs
    are first scored by a bfloat16 GEMM and only the keys whose score bound can still reach the
    top-k are rescored in float32 -- the same exact result, several times faster. "auto" uses it
    there for problems of at least 2^24 pairs; True forces it (where the CPU has the
    instructions), False always scores every pair in float32. The screen's error bound and
    exactness argument are in docs/contrastive.md.
    """
    check_backend(backend)
    features_pair("queries", queries, "keys", keys, same_rows=False)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be in [1, number of keys = {keys.shape[0]}], got {k}")
    if screen not in ("auto", True, False):
        raise ValueError(f"screen must be 'auto', True or False, got {screen!r}")
    dtype = V.compute_dtype(queries, keys)
    q, kk = cast(dtype, queries, keys)
    q, kk = q.detach().contiguous(), kk.detach().contiguous()
    with torch.no_grad():
        if _use_screen(screen, q, kk, backend):
            vals, idx, flagged = ops.topk_screened(q, kk, k)
            if bool(flagged.any()):  # queries the screen could not settle: every pair in float32
                rows = flagged.nonzero().squeeze(1)
                vals[rows], idx[rows] = ops.topk(q[rows], kk, k, backend)
            return vals, idx
        return ops.topk(q, kk, k, backend)


def _use_screen(screen, q, kk, backend):
    if screen is False or q.dtype != torch.float32 or q.device.type != "cpu" or backend not in ("auto", "cpu"):
        return False
    if _backend.resolve(backend, q.device) != "cpu" or not _ext.has_op("hotpath_cpu", "cpu_has_bf16_dot"):
        return False
    if not torch.ops.hotpath_cpu.cpu_has_bf16_dot():
        return False
    if screen is True:
        return True
    # a finite sum means finite entries (an overflowing sum only sends us to the float32 path);
    # isfinite(kk).all() would allocate several times the keys' size
    finite = bool(torch.isfinite(q.sum())) and bool(torch.isfinite(kk.sum()))
    return finite and q.shape[0] * kk.shape[0] >= 1 << 24 and q.shape[1] >= 32
