"""References for the contrastive family: plain torch, B x B matrices materialized, clear first.

Each function is the oracle of one hotpath op (tests run them in float64) and the benchmark
baseline. Conventions follow the libraries users come from: open_clip (logit_scale is the
multiplier), pytorch-metric-learning (SupCon / triplet reductions), DINO.
"""
import torch
import torch.nn.functional as F


def _row_scale(logit_scale, n, like):
    """logit_scale as a column (n, 1) or a scalar tensor: per-sample scales multiply their own row."""
    s = torch.as_tensor(logit_scale, dtype=like.dtype, device=like.device)
    return s.reshape(n, 1) if s.numel() > 1 or (s.dim() == 1 and n == 1) else s.reshape(())


def clip_loss(image_features, text_features, logit_scale, logit_bias=None):
    """open_clip ClipLoss (world_size 1): mean of the image->text and text->image cross-entropies."""
    n = image_features.shape[0]
    s = _row_scale(logit_scale, n, image_features)
    logits_i = s * image_features @ text_features.T
    logits_t = s * text_features @ image_features.T
    if logit_bias is not None:
        logits_i = logits_i + logit_bias
        logits_t = logits_t + logit_bias
    labels = torch.arange(n, device=image_features.device)
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def info_nce(query, keys, temperature, negatives=None):
    """Mean over rows of -log softmax of the positive <q_i, k_i> among keys (and extra negatives)."""
    n = query.shape[0]
    t = torch.as_tensor(temperature, dtype=query.dtype, device=query.device)
    t = t.reshape(n, 1) if t.numel() > 1 else t.reshape(())
    logits = query @ keys.T
    if negatives is not None:
        logits = torch.cat([logits, query @ negatives.T], dim=1)
    logits = logits / t
    return F.cross_entropy(logits, torch.arange(n, device=query.device))


def siglip_loss(image_features, text_features, logit_scale, logit_bias=None, negative_only=False):
    """open_clip SigLipLoss._loss: -sum log sigmoid(label * logit) / B, labels +1 on the diagonal."""
    n = image_features.shape[0]
    logits = logit_scale * image_features @ text_features.T
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = -torch.ones(n, text_features.shape[0], dtype=logits.dtype, device=logits.device)
    if not negative_only:
        labels = labels + 2 * torch.eye(n, text_features.shape[0], dtype=logits.dtype, device=logits.device)
    return -F.logsigmoid(labels * logits).sum() / n


def supcon_loss(features, labels, temperature):
    """pytorch-metric-learning SupConLoss: cosine similarities / T; for each anchor with a positive,
    -mean over positives of log softmax over all other samples; averaged over those anchors."""
    x = F.normalize(features, dim=1)
    n = x.shape[0]
    mat = x @ x.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    same = labels[:, None] == labels[None, :]
    pos = same & ~eye
    lse = torch.logsumexp(mat.masked_fill(eye, -float("inf")), dim=1, keepdim=True)
    log_prob = mat - lse
    npos = pos.sum(1)
    mean_log_pos = (log_prob * pos).sum(1) / npos.clamp(min=1)
    has = npos > 0
    if not bool(has.any()) or not bool((~same).any()):
        return features.sum() * 0
    return -mean_log_pos[has].mean()


def pairwise_distance(x, distance):
    """Distances (larger = farther): euclidean, squared_euclidean, cosine (1 - <x, y>), dot (-<x, y>)."""
    if distance in ("euclidean", "squared_euclidean"):
        sq = x.pow(2).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0)
        d2 = d2.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)
        if distance == "squared_euclidean":
            return d2
        # sqrt's gradient at 0 (the diagonal) would be inf * 0 = NaN: use the zero subgradient
        # (d2 * 0 keeps a NaN distance NaN)
        return torch.where(d2 > 0, d2.clamp(min=torch.finfo(d2.dtype).tiny).sqrt(), d2 * 0)
    if distance == "dot":
        return -(x @ x.T)
    return 1 - x @ x.T


def triplet_loss(embeddings, labels, margin, mining="batch_hard", distance="euclidean", normalize=True,
                 reduction="mean_nonzero", smooth_loss=False):
    """Triplet margin loss relu(d(a, p) - d(a, n) + margin) over mined triplets.

    batch_hard: per anchor the farthest positive and the nearest negative (anchors lacking either
    are dropped) — pytorch-metric-learning's BatchHardMiner + TripletMarginLoss. batch_all: every
    valid (a, p, n). reduction "mean_nonzero" averages over triplets with positive loss (PML's
    AvgNonZeroReducer), "mean" over all mined triplets, "sum" sums. smooth_loss: softplus
    instead of relu. NaN distances propagate (torch's max / min do) and count as nonzero.
    """
    act = F.softplus if smooth_loss else F.relu
    x = F.normalize(embeddings, dim=1) if (normalize or distance == "cosine") else embeddings
    dist = pairwise_distance(x, distance)
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    if mining == "batch_hard":
        has = pos.any(1) & neg.any(1)
        dap = dist.masked_fill(~pos, -float("inf")).max(1).values[has]
        dan = dist.masked_fill(~neg, float("inf")).min(1).values[has]
        losses = act(dap - dan + margin)
    else:
        trip = pos[:, :, None] & neg[:, None, :]
        losses = act(dist[:, :, None] - dist[:, None, :] + margin)[trip]
    return _reduce(losses, reduction, embeddings)


def _reduce(losses, reduction, like):
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean() if losses.numel() else like.sum() * 0
    nz = (losses > 0) | torch.isnan(losses)
    if not bool(nz.any()):
        return like.sum() * 0
    return losses[nz].mean()


def dino_loss(student, teacher, center, student_temp, teacher_temp):
    """DINO cross-entropy: teacher softmax((t - center) / teacher_temp) (no gradient) against the
    student log_softmax(s / student_temp). 2-D (B, K): mean over rows. 3-D (views, B, K): mean over
    all (teacher view, student view) pairs with different view indices, as DINOLoss does."""
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach()
    s = F.log_softmax(student / student_temp, dim=-1)
    if student.dim() == 2:
        return -(t * s).sum(-1).mean()
    total, count = 0, 0
    for iq in range(t.shape[0]):
        for v in range(s.shape[0]):
            if v == iq:
                continue
            total = total + (-(t[iq] * s[v]).sum(-1)).mean()
            count += 1
    return total / count


def topk_similarity(queries, keys, k):
    """Exact top-k keys by inner product per query: (values, indices), values sorted descending,
    ties to the lower key index. NaN and -inf scores are never selected: slots they leave empty
    hold value -inf and index -1."""
    return topk_chunked(queries, keys, k, chunk=max(1, keys.shape[0]))


def _topk_stable(s, k):
    s = torch.where(torch.isnan(s), -float("inf"), s)
    v, i = torch.sort(s, dim=1, descending=True, stable=True)
    return v[:, :k], i[:, :k]


def topk_chunked(queries, keys, k, chunk=65536):
    """Memory-bounded top-k: matmul + top-k per key chunk, merged (earlier keys first, so a
    stable sort keeps the lower index on ties). The sentinel rule of topk_similarity above."""
    best_v = best_i = None
    for j0 in range(0, keys.shape[0], chunk):
        v, i = _topk_stable(queries @ keys[j0:j0 + chunk].T, k)
        i = i + j0
        if best_v is not None:
            v, pos = _topk_stable(torch.cat([best_v, v], 1), k)
            i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
        best_v, best_i = v, i
    return best_v, torch.where(best_v == -float("inf"), -1, best_i)


# Kernel-level references (what the custom ops compute), used by the "reference" backend.

def siglip_rows(x, y, scale, bias):
    """sum_j softplus(scale <x_i, y_j> + bias) per row."""
    return F.softplus(scale * x @ y.T + bias).sum(1)


def siglip_rows_bwd(x, y, scale, bias):
    """(sum_j sigmoid(z_ij) y_j, sum_j sigmoid(z_ij)) per row."""
    p = torch.sigmoid(scale * x @ y.T + bias)
    return p @ y, p.sum(1)


def lse_offdiag(x, scale):
    """LSE over j != i of scale <x_i, x_j> (x is compared with itself)."""
    s = scale * x @ x.T
    s = s.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), -float("inf"))
    return torch.logsumexp(s, dim=1)


def hard_mine(x, labels):
    """Per row: index of the farthest positive and nearest negative by squared Euclidean distance
    (same label, j != i / different label); -1 where none exists."""
    n = x.shape[0]
    if n == 0:
        return labels.new_empty(0), labels.new_empty(0)
    d2 = (x.pow(2).sum(1)[:, None] + x.pow(2).sum(1)[None, :] - 2 * x @ x.T)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    pi = d2.masked_fill(~pos, -float("inf")).argmax(1)
    ni = d2.masked_fill(~neg, float("inf")).argmin(1)
    pi = torch.where(pos.any(1), pi, -1)
    ni = torch.where(neg.any(1), ni, -1)
    return pi, ni
