"""Distances and pair / triplet bookkeeping of the metric-learning losses (SupCon, triplet).

pytorch-metric-learning (PML) lets a loss compare embeddings under a distance object
(CosineSimilarity, DotProductSimilarity, LpDistance with or without normalization and power) and
against a separate reference set (ref_emb / ref_labels). Here a distance is one of four kinds:

    "cosine"             similarity <x, y> of L2-normalized vectors (PML CosineSimilarity)
    "dot"                similarity <x, y>, normalized or not (PML DotProductSimilarity)
    "euclidean"          |x - y| (PML LpDistance(p=2))
    "squared_euclidean"  |x - y|^2 (PML LpDistance(p=2, power=2))

plus whether the embeddings are L2-normalized first (PML's normalize_embeddings, True by default).
The streaming kernels serve the kinds that reduce to inner products; the others are computed
here from the materialized (n, m) matrix, as PML computes all of them.
"""
import torch
import torch.nn.functional as F

KINDS = ("cosine", "dot", "euclidean", "squared_euclidean")
SIMILARITIES = ("cosine", "dot")


def distance_arg(distance, normalize, *, default):
    """(kind, normalize) from a kind name, None (default) or a PML distance object."""
    if distance is None:
        distance = default
    if isinstance(distance, str):
        if distance not in KINDS:
            raise ValueError(f"distance must be one of {KINDS} or a pytorch-metric-learning distance object, "
                             f"got {distance!r}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        return distance, normalize or distance == "cosine"
    names = [c.__name__ for c in type(distance).__mro__]
    if "BaseDistance" not in names:
        raise TypeError(f"distance must be one of {KINDS} or a pytorch-metric-learning distance object, "
                        f"got {type(distance).__name__}")
    power = getattr(distance, "power", 1)
    norm = bool(getattr(distance, "normalize_embeddings", True))
    if "CosineSimilarity" in names or "DotProductSimilarity" in names:
        if power != 1:
            raise ValueError(f"distance: {type(distance).__name__} with power={power} is not supported (power=1 only)")
        return ("cosine" if "CosineSimilarity" in names else "dot"), norm
    if "LpDistance" in names:
        if getattr(distance, "p", 2) != 2 or power not in (1, 2):
            raise ValueError(f"distance: LpDistance is supported with p=2 and power 1 or 2, "
                             f"got p={getattr(distance, 'p', None)}, power={power}")
        return ("euclidean" if power == 1 else "squared_euclidean"), norm
    raise ValueError(f"distance: {type(distance).__name__} is not supported; use CosineSimilarity, "
                     f"DotProductSimilarity or LpDistance(p=2)")


def ref_arg(ref_emb, ref_labels, x, name_emb="embeddings"):
    """Check ref_emb / ref_labels against the embeddings: both or neither."""
    if ref_emb is None and ref_labels is None:
        return None, None
    if ref_emb is None or ref_labels is None:
        raise ValueError("ref_emb and ref_labels must be given together")
    if not isinstance(ref_emb, torch.Tensor) or not ref_emb.is_floating_point() or ref_emb.dim() != 2:
        raise TypeError(f"ref_emb must be a 2-D floating-point tensor, got {getattr(ref_emb, 'dtype', type(ref_emb))}")
    if ref_emb.shape[1] != x.shape[1]:
        raise ValueError(f"ref_emb must have {x.shape[1]} features (as {name_emb}), got shape {tuple(ref_emb.shape)}")
    if ref_emb.device != x.device:
        raise ValueError(f"ref_emb is on {ref_emb.device} but {name_emb} on {x.device}")
    return ref_emb, ref_labels


def pair_matrix(x, y, kind):
    """(n, m) matrix of the kind: similarities for cosine / dot, distances otherwise. The
    Euclidean distance has the zero subgradient where two points coincide (sqrt'(0) is inf)."""
    if kind in SIMILARITIES:
        return x @ y.T
    d2 = (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)
    if kind == "squared_euclidean":
        return d2
    return torch.where(d2 > 0, d2.clamp(min=torch.finfo(d2.dtype).tiny).sqrt(), d2 * 0)  # NaN stays NaN


def as_distance(mat, kind):
    """Larger = farther for every kind (a similarity s becomes -s: the margins are differences)."""
    return -mat if kind in SIMILARITIES else mat


def pair_masks(lab, rlab, exclude_self):
    same = lab[:, None] == rlab[None, :]
    pos = same.clone()
    if exclude_self:
        pos.fill_diagonal_(False)
    return pos, ~same


def supcon_dense(x, y, lab, rlab, exclude_self, kind, temperature):
    """PML SupConLoss on the materialized matrix: per anchor with a positive, -mean over positives
    of the log-softmax over every other reference; None when there is no positive or no negative."""
    mat = pair_matrix(x, y, kind)
    s = (mat if kind in SIMILARITIES else -mat) / temperature
    pos, neg = pair_masks(lab, rlab, exclude_self)
    if not bool(pos.any()) or not bool(neg.any()):
        return None
    keep = pos | neg
    lse = torch.logsumexp(s.masked_fill(~keep, -float("inf")), dim=1, keepdim=True)
    npos = pos.sum(1)
    has = npos > 0
    logp = torch.where(pos, s - lse, torch.zeros_like(s))
    return -(logp.sum(1)[has] / npos[has].to(s.dtype))


def hard_triplets_dense(x, y, lab, rlab, exclude_self, kind):
    """Batch-hard mining on the materialized distances: (anchors, positives, negatives, d_ap, d_an)
    for the anchors that have a positive and a negative. A NaN distance is the hardest of all
    (torch's max / min propagate it), so a NaN embedding reaches the loss."""
    D = as_distance(pair_matrix(x, y, kind), kind)
    pos, neg = pair_masks(lab, rlab, exclude_self)
    has = pos.any(1) & neg.any(1)
    a = torch.nonzero(has).flatten()
    if a.numel() == 0:  # argmax over an empty reference set is undefined: no triplet at all
        return a, a, a, D.new_zeros(0), D.new_zeros(0)
    Dp = D.masked_fill(~pos, -float("inf"))[a]
    Dn = D.masked_fill(~neg, float("inf"))[a]
    p = _nan_first(Dp, largest=True)
    n = _nan_first(Dn, largest=False)
    return a, p, n, Dp.gather(1, p[:, None])[:, 0], Dn.gather(1, n[:, None])[:, 0]


def _nan_first(D, largest):
    """arg-max (arg-min) per row where a NaN entry wins, as torch.max / min do."""
    nan = torch.isnan(D)
    clean = D.masked_fill(nan, -float("inf") if largest else float("inf"))
    idx = clean.argmax(1) if largest else clean.argmin(1)
    return torch.where(nan.any(1), nan.to(torch.int8).argmax(1), idx)


def all_triplets(lab, rlab, exclude_self):
    """Every valid (anchor, positive, negative) index triple (PML's get_all_triplets_indices)."""
    pos, neg = pair_masks(lab, rlab, exclude_self)
    return torch.where(pos[:, :, None] & neg[:, None, :])


def triplet_terms(x, y, lab, rlab, exclude_self, kind, margin, smooth, reduction, chunk_elems=1 << 22):
    """Every valid triplet's loss relu(d_ap - d_an + margin) (softplus when smooth), summed in chunks
    of anchors: returns (sum, number of triplets, number with a positive loss)."""
    n, m = x.shape[0], y.shape[0]
    chunk = max(1, chunk_elems // max(m * m, 1))
    total = x.sum() * 0
    n_trip = n_pos = 0
    for i0 in range(0, n, chunk):
        D = as_distance(pair_matrix(x[i0:i0 + chunk], y, kind), kind)
        pos, neg = pair_masks(lab[i0:i0 + chunk], rlab, False)
        if exclude_self:
            r = torch.arange(D.shape[0], device=D.device)
            pos[r, r + i0] = False
        mask = pos[:, :, None] & neg[:, None, :]
        v = D[:, :, None] - D[:, None, :] + margin
        t = F.softplus(v) if smooth else F.relu(v)
        t = t[mask]
        total = total + t.sum()
        n_trip += t.numel()
        n_pos += int(((t > 0) | torch.isnan(t)).sum())
    return total, n_trip, n_pos
