"""Autograd functions over the contrastive custom ops, and argument checks shared by the losses.

Every backward calls streaming custom ops again (scores are recomputed tile by tile): the only
saved tensors are the inputs and per-row log-sum-exps, O((n + m) d) memory.
"""
import numbers

import torch

from .. import _validate as V
from .. import backends
from .._ops import contrastive as ops


# -- arguments ---------------------------------------------------------------------------------------

def features_pair(name_a, a, name_b, b, *, same_rows=True):
    V.tensor(name_a, a, ndims=(2,))
    V.tensor(name_b, b, ndims=(2,))
    V.same_device(**{name_a: a, name_b: b})
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same feature size, got {tuple(a.shape)} and {tuple(b.shape)}")
    if same_rows and a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]}")


def operands(*ts):
    """The features in the dtype the ops read (backends.operand_dtype: 16-bit stays 16-bit on the
    GPU, statistics are float32), and the dtype the loss terms are computed in."""
    dtype = backends.operand_dtype(*ts)
    return cast(dtype, *ts), backends.stat_dtype(dtype)


def cast(dtype, *ts):
    return tuple(None if t is None else t.to(dtype) for t in ts)


def rowdot(a, b):
    """<a_i, b_i> per row, in float32 for 16-bit rows (a 16-bit sum of d products would be off by
    about sqrt(d) of its ulps, more than the loss's tolerance)."""
    return torch.einsum("ij,ij->i", *backends.widen(a, b))


def scale_arg(name, v, n, *, positive=False, allow_vector=True):
    """A scale / temperature: python number, 0-d / 1-element tensor, or (n,) tensor (per sample).
    Returns (float value or None, tensor or None, is_vector)."""
    if isinstance(v, torch.Tensor) and v.numel() > 1:
        if not allow_vector:
            raise ValueError(f"{name} must be a scalar here, got shape {tuple(v.shape)}")
        if v.dim() != 1 or v.shape[0] != n:
            raise ValueError(f"{name} must be a scalar or a ({n},) tensor (one per sample), got shape {tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
        vals = v.detach()
        if not bool(torch.isfinite(vals).all()):
            raise ValueError(f"{name} must be finite")
        if positive and not bool((vals > 0).all()):
            raise ValueError(f"{name} must be > 0")
        return None, v, True
    if isinstance(v, torch.Tensor) and not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor or a number, got {v.dtype}")
    V.scalar(name, v, positive=positive)
    if isinstance(v, torch.Tensor):
        return float(v.detach().reshape(())), v.reshape(()), False
    if not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor")
    return float(v), None, False


def labels_arg(labels, n, name="labels"):
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(torch.long).contiguous()


def result_dtype(*tensors):
    """The dtype a loss is returned in: the inputs' promoted floating dtype. float16 / bfloat16
    inputs are computed in float32 and the loss is cast back, as open_clip and
    pytorch-metric-learning return the dtype of their inputs."""
    dt = None
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    return dt or torch.float32


def scalar_tensor(t_or_none, value, like):
    return t_or_none.to(like.dtype) if t_or_none is not None else like.new_tensor(value)


def bias_arg(logit_bias, dtype, device):
    if logit_bias is None:
        return None, 0.0
    if isinstance(logit_bias, torch.Tensor):
        if not logit_bias.is_floating_point():
            raise TypeError(f"logit_bias must be a floating-point tensor or a number, got {logit_bias.dtype}")
        V.scalar("logit_bias", logit_bias)
        return logit_bias.reshape(()).to(dtype), float(logit_bias.detach().reshape(()))
    V.scalar("logit_bias", logit_bias)
    return None, float(logit_bias)


# -- autograd ----------------------------------------------------------------------------------------

def _contiguous(*ts):
    """Every backend scores the same contiguous operands (the C++ kernels copy strided ones
    anyway): the reference's matmul then rounds the scores as the kernels' GEMM does, instead
    of through a transposed-operand path an ulp away. At |s| ~ 1e5 (small temperatures) an ulp
    is 0.008, the size of a loss that is LSE minus its dominant score."""
    return tuple(t.contiguous() for t in ts)


class RowLSE(backends.Function):
    """lse_i = LSE_j scale <x_i, y_j> (j != i when exclude_diag). Differentiable in x, y, scale."""

    @staticmethod
    def forward(ctx, x, y, scale_t, scale, exclude_diag):
        x, y = _contiguous(x, y)
        lse, _ = ops.lse_sweep(x, y, scale, False, exclude_diag)
        ctx.save_for_backward(x, y, lse)
        ctx.cfg = (scale, exclude_diag)
        return lse

    @staticmethod
    def backward(ctx, g):
        x, y, lse = ctx.saved_tensors
        scale, excl = ctx.cfg
        g = g.contiguous()
        ax, ay = _softmax_grads(ctx, x, y, scale, g, lse, None, None, excl)
        return _scaled_grads(ctx, x, y, ax, ay, scale) + (None, None)


class SelfLSE(backends.Function):
    """lse_i = LSE_{j != i} scale <x_i, x_j> (x against itself). The score matrix is symmetric, so
    the row and column parts of the gradient come out of one sweep:
    d/dx sum_i g_i lse_i = scale * sum_j (g_i P_ij + g_j P_ji) x_j."""

    @staticmethod
    def forward(ctx, x, scale_t, scale):
        (x,) = _contiguous(x)
        lse, _ = ops.lse_sweep(x, x, scale, False, True)
        ctx.save_for_backward(x, lse)
        ctx.cfg = scale
        return lse

    @staticmethod
    def backward(ctx, g):
        x, lse = ctx.saved_tensors
        scale = ctx.cfg
        g = g.contiguous()
        acc = ops.softmax_acc(x, x, scale, g, lse, g, lse, True)
        gs = _dot(x, acc) / 2 if ctx.needs_input_grad[1] else None
        return acc.mul_(scale).to(x.dtype), gs, None


def _softmax_grads(ctx, x, y, scale, ra, rl, ca, cl, excl):
    """(acc_x, acc_y) of softmax_acc for the sides the backward needs (None for the others); both
    from one op when both are needed (the library sweeps score each chunk once for the two)."""
    want_x = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
    if want_x and ctx.needs_input_grad[1]:
        return ops.softmax_acc_xy(x, y, scale, ra, rl, ca, cl, excl)
    ax = ops.softmax_acc(x, y, scale, ra, rl, ca, cl, excl) if want_x else None
    ay = ops.softmax_acc(y, x, scale, ca, cl, ra, rl, excl) if ctx.needs_input_grad[1] else None
    return ax, ay


def _scaled_grads(ctx, x, y, ax, ay, scale):
    """(grad x, grad y, grad scale) from the accumulators ax = dL/ds @ y, ay = dL/ds^T @ x."""
    gs = _dot(x, ax) if ctx.needs_input_grad[2] else None
    gx = ax.mul_(scale).to(x.dtype) if ctx.needs_input_grad[0] else None
    gy = ay.mul_(scale).to(y.dtype) if ctx.needs_input_grad[1] else None
    return gx, gy, gs


def _dot(a, b):
    """sum(a * b) without an (n, d) temporary (a 16-bit operand is widened to b's float32)."""
    return torch.dot(a.reshape(-1).to(b.dtype), b.reshape(-1))


class RowColLSE(backends.Function):
    """Row and column log-sum-exps of one score matrix scale * x @ y.T, in one forward sweep."""

    @staticmethod
    def forward(ctx, x, y, scale_t, scale):
        x, y = _contiguous(x, y)
        lr, lc = ops.lse_sweep(x, y, scale, True, False)
        ctx.save_for_backward(x, y, lr, lc)
        ctx.cfg = scale
        return lr, lc

    @staticmethod
    def backward(ctx, gr, gc):
        x, y, lr, lc = ctx.saved_tensors
        scale = ctx.cfg
        gr = torch.zeros_like(lr) if gr is None else gr.contiguous()
        gc = torch.zeros_like(lc) if gc is None else gc.contiguous()
        # dL/ds_ij = gr_i P_ij + gc_j Q_ij (row and column softmaxes)
        ax, ay = _softmax_grads(ctx, x, y, scale, gr, lr, gc, lc, False)
        return _scaled_grads(ctx, x, y, ax, ay, scale) + (None,)


class SoftplusSum(backends.Function):
    """sum_ij softplus(scale <x_i, y_j> + bias), differentiable in x, y, scale, bias.

    Where a gradient is wanted the forward forms it too, while it has the scores: the loss's
    gradient in z_ij is g sigmoid(z_ij) and g is a scalar, so the backward only scales the saved
    sums: one sweep fewer than forming them in the backward."""

    @staticmethod
    def forward(ctx, x, y, scale_t, bias_t, scale, bias, grad_enabled):
        # (needs_input_grad follows requires_grad even under no_grad; the caller's mode decides)
        if not (grad_enabled and any(ctx.needs_input_grad[:4])):
            return ops.siglip_rows(x, y, scale, bias).sum()
        rows, ax, ay, rs = ops.siglip_grads(x, y, scale, bias, ctx.needs_input_grad[1])
        ctx.save_for_backward(x, ax, ay, rs)
        ctx.cfg = (scale, y.dtype)
        return rows.sum()

    @staticmethod
    def backward(ctx, g):
        x, ax, ay, rs = ctx.saved_tensors
        scale, y_dtype = ctx.cfg
        # out of place: the saved sums serve a second backward (retain_graph) too
        gs = g * _dot(x, ax) if ctx.needs_input_grad[2] else None
        gb = g * rs.sum() if ctx.needs_input_grad[3] else None
        gx = (ax * (g * scale)).to(x.dtype) if ctx.needs_input_grad[0] else None
        gy = (ay * (g * scale)).to(y_dtype) if ctx.needs_input_grad[1] else None
        return gx, gy, gs, gb, None, None, None


# -- loss terms shared by the one-process and distributed losses ----------------------------------------

def clip_terms(img, txt, all_img, all_txt, logit_scale, offset, symmetric):
    """(image->text CE per local row, text->image CE per local row).

    img / txt are this process's rows; all_img / all_txt the columns they are scored against
    (the same tensors in one process). Positives sit at column offset + i. symmetric: the two
    score matrices are transposes (global loss), so one sweep gives both log-sum-exps.
    """
    n = img.shape[0]
    s_f, s_t, per_sample = scale_arg("logit_scale", logit_scale, n, positive=False)
    pos_t = all_txt[offset:offset + n]
    pos_i = all_img[offset:offset + n]
    ct = backends.stat_dtype(img.dtype)
    if per_sample:
        # scaled rows are new operands: rounding them to 16 bits would move each logit by
        # ~s |x| |y| / 256, so this (rare) path reads float32 tiles
        s = s_t.to(ct)
        img, txt, all_img, all_txt = cast(ct, img, txt, all_img, all_txt)
        lse_i = RowLSE.apply(img * s[:, None], all_txt, None, 1.0, False)
        lse_t = RowLSE.apply(txt * s[:, None], all_img, None, 1.0, False)
        return lse_i - s * rowdot(img, pos_t), lse_t - s * rowdot(txt, pos_i)
    s = s_t.to(ct) if s_t is not None else s_f
    if symmetric:
        lse_i, lse_t = RowColLSE.apply(img, txt, s_t, s_f)
    else:
        lse_i = RowLSE.apply(img, all_txt, s_t, s_f, False)
        lse_t = RowLSE.apply(txt, all_img, s_t, s_f, False)
    return lse_i - s * rowdot(img, pos_t), lse_t - s * rowdot(txt, pos_i)


def siglip_sum(img, txt, s_t, s_f, b_t, b_f, negative_only):
    """sum_ij -log sigmoid(label_ij z_ij) = sum_ij softplus(z_ij) - sum_i z_ii (labels +1 on the diagonal)."""
    total = SoftplusSum.apply(img, txt, s_t, b_t, s_f, b_f, torch.is_grad_enabled())
    if not negative_only:
        n = min(img.shape[0], txt.shape[0])
        s = s_t if s_t is not None else s_f
        b = b_t if b_t is not None else b_f
        total = total - (s * rowdot(img[:n], txt[:n]) + b).sum()
    return total
