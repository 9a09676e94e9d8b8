"""Distributed CLIP and SigLIP losses through torch.distributed (any backend: gloo, nccl, ...).

The collectives are written here with explicit autograd rules that need only all_gather,
all_reduce and point-to-point send / recv (gloo has no reduce_scatter):
  * all_gather with gradient: backward all-reduces the gathered gradient and keeps this rank's
    slice (the sum over ranks of d loss_r / d features, as torch.distributed.nn.all_gather).
  * neighbour exchange (SigLIP): backward sends the gradient back the way the tensor came.
Loss values and gradients equal open_clip's for the same settings; averaged over ranks (as DDP
averages gradients) they equal the single-process loss on the concatenated batch.
"""
import torch
import torch.distributed as dist

from .. import backends
from ._core import bias_arg as _bias_arg, clip_terms as _clip_terms, features_pair, operands, scale_arg
from ._core import siglip_sum as _siglip_sum


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        ws = dist.get_world_size(group)
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x, group=group)
        ctx.group, ctx.rank, ctx.n = group, dist.get_rank(group), x.shape[0]
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def all_gather_with_grad(x, group=None):
    return _AllGather.apply(x, group)


def all_gather_no_grad(x, group=None):
    with torch.no_grad():
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
    return out


def gather_features(image_features, text_features, *, local_loss, gather_with_grad, rank, world_size, group=None):
    """open_clip.loss.gather_features without horovod."""
    if gather_with_grad:
        return all_gather_with_grad(image_features, group), all_gather_with_grad(text_features, group)
    gi, gt = all_gather_no_grad(image_features, group), all_gather_no_grad(text_features, group)
    if not local_loss:
        # this rank's slice keeps its graph, so the local features still get gradients
        gi[rank], gt[rank] = image_features, text_features
    return torch.cat(gi, 0), torch.cat(gt, 0)


def _check_dist(rank, world_size):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("world_size > 1 needs torch.distributed to be initialized (init_process_group)")
    if dist.get_world_size() != world_size:
        raise ValueError(f"world_size={world_size} but torch.distributed has {dist.get_world_size()} processes")
    if dist.get_rank() != rank:
        raise ValueError(f"rank={rank} but torch.distributed says this process is rank {dist.get_rank()}")


@backends.takes_backend
def distributed_clip_loss(image_features, text_features, logit_scale, logit_bias=None, *, local_loss=False,
                          gather_with_grad=False, rank=0, world_size=1, backend="auto"):
    _check_dist(rank, world_size)
    features_pair("image_features", image_features, "text_features", text_features)
    (img, txt), dtype = operands(image_features, text_features)
    bias_t, _ = _bias_arg(logit_bias, dtype, img.device)
    n = img.shape[0]
    if isinstance(logit_scale, torch.Tensor) and logit_scale.numel() > 1 and not local_loss:
        raise ValueError("per-sample logit_scale with world_size > 1 needs local_loss=True")
    all_img, all_txt = gather_features(img, txt, local_loss=local_loss, gather_with_grad=gather_with_grad,
                                       rank=rank, world_size=world_size)
    if local_loss:
        li, lt = _clip_terms(img, txt, all_img, all_txt, logit_scale, rank * n, symmetric=False)
    else:
        li, lt = _clip_terms(all_img, all_txt, all_img, all_txt, logit_scale, 0, symmetric=True)
    if bias_t is not None:
        li, lt = li + (bias_t - bias_t), lt + (bias_t - bias_t)
    return (li.mean() + lt.mean()) / 2


# -- SigLIP neighbour exchange -------------------------------------------------------------------------

def _exchange(from_rank, to_rank, tensor, group=None):
    recv = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), to_rank, group=group),
           dist.P2POp(dist.irecv, recv, from_rank, group=group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return recv


def _exchange_bidir(left, right, to_left, to_right, group=None):
    from_left, from_right = torch.empty_like(to_right), torch.empty_like(to_left)
    ops = [dist.P2POp(dist.isend, to_right.contiguous(), right, group=group),
           dist.P2POp(dist.isend, to_left.contiguous(), left, group=group),
           dist.P2POp(dist.irecv, from_right, right, group=group),
           dist.P2POp(dist.irecv, from_left, left, group=group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return from_right, from_left


class _NeighbourExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_rank, to_rank, group, tensor):
        ctx.from_rank, ctx.to_rank, ctx.group = from_rank, to_rank, group
        return _exchange(from_rank, to_rank, tensor, group)

    @staticmethod
    def backward(ctx, g):
        return None, None, None, _NeighbourExchange.apply(ctx.to_rank, ctx.from_rank, ctx.group, g.contiguous())


class _NeighbourExchangeBidir(torch.autograd.Function):
    @staticmethod
    def forward(ctx, left, right, group, to_left, to_right):
        ctx.left, ctx.right, ctx.group = left, right, group
        return _exchange_bidir(left, right, to_left, to_right, group)

    @staticmethod
    def backward(ctx, g_from_right, g_from_left):
        g_from_right = torch.zeros_like(g_from_left) if g_from_right is None else g_from_right.contiguous()
        g_from_left = torch.zeros_like(g_from_right) if g_from_left is None else g_from_left.contiguous()
        return (None, None, None) + _NeighbourExchangeBidir.apply(ctx.right, ctx.left, ctx.group,
                                                                  g_from_right, g_from_left)


@backends.takes_backend
def siglip_exchange_terms(image_features, text_features, logit_scale, logit_bias=None, *, rank, world_size,
                          dist_impl="bidir", backend="auto"):
    """The negative-only SigLIP terms of this rank's images against every other rank's texts
    (divided by the local batch size), obtained by passing text features around the ring."""
    _check_dist(rank, world_size)
    (img, txt), dtype = operands(image_features, text_features)
    n = img.shape[0]
    s_f, s_t, _ = scale_arg("logit_scale", logit_scale, n, allow_vector=False)
    b_t, b_f = _bias_arg(logit_bias, dtype, img.device)
    s_t = s_t.to(dtype) if s_t is not None else None

    def neg(t):
        return _siglip_sum(img, t, s_t, s_f, b_t, b_f, True) / n

    total = img.sum() * 0
    right, left = (rank + 1) % world_size, (rank - 1 + world_size) % world_size
    if dist_impl == "bidir":
        to_left = to_right = txt
        nb, rem = divmod(world_size - 1, 2)
        for _ in range(nb):
            recv = _NeighbourExchangeBidir.apply(left, right, None, to_left, to_right)
            for f in recv:
                total = total + neg(f)
            to_left, to_right = recv
        if rem:
            total = total + neg(_NeighbourExchange.apply(left, right, None, to_right))
    elif dist_impl == "shift":
        to_right = txt
        for _ in range(world_size - 1):
            to_right = _NeighbourExchange.apply(left, right, None, to_right)
            total = total + neg(to_right)
    else:
        all_txt = all_gather_with_grad(txt)
        for i in range(world_size):
            if i != rank:
                total = total + neg(all_txt[i * n:(i + 1) * n])
    return total
