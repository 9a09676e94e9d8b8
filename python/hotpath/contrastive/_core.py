"""Autograd functions over the contrastive custom ops, and argument checks shared by the losses.

Every backward calls streaming custom ops again (scores are recomputed tile by tile): the only
saved tensors are the inputs and per-row log-sum-exps, O((n + m) d) memory.
"""
import numbers

import torch

from .. import _validate as V
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


def cast(dtype, *ts):
    return tuple(None if t is None else t.to(dtype) for t in ts)


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


def scalar_tensor(t_or_none, value, like):
    return t_or_none.to(like.dtype) if t_or_none is not None else like.new_tensor(value)


# -- autograd ----------------------------------------------------------------------------------------

class RowLSE(torch.autograd.Function):
    """lse_i = LSE_j scale <x_i, y_j> (j != i when exclude_diag). Differentiable in x, y, scale."""

    @staticmethod
    def forward(ctx, x, y, scale_t, scale, exclude_diag, backend):
        lse, _ = ops.lse_sweep(x, y, scale, False, exclude_diag, backend)
        ctx.save_for_backward(x, y, lse)
        ctx.cfg = (scale, exclude_diag, backend)
        return lse

    @staticmethod
    def backward(ctx, g):
        x, y, lse = ctx.saved_tensors
        scale, excl, backend = ctx.cfg
        g = g.contiguous()
        gx = gy = gs = None
        ax = ops.softmax_acc(x, y, scale, g, lse, None, None, excl, backend)
        if ctx.needs_input_grad[2]:
            gs = _dot(x, ax)
        if ctx.needs_input_grad[0]:
            gx = ax.mul_(scale)
        if ctx.needs_input_grad[1]:
            gy = ops.softmax_acc(y, x, scale, None, None, g, lse, excl, backend).mul_(scale)
        return gx, gy, gs, None, None, None


class SelfLSE(torch.autograd.Function):
    """lse_i = LSE_{j != i} scale <x_i, x_j> (x against itself). The score matrix is symmetric, so
    the row and column parts of the gradient come out of one sweep:
    d/dx sum_i g_i lse_i = scale * sum_j (g_i P_ij + g_j P_ji) x_j."""

    @staticmethod
    def forward(ctx, x, scale_t, scale, backend):
        lse, _ = ops.lse_sweep(x, x, scale, False, True, backend)
        ctx.save_for_backward(x, lse)
        ctx.cfg = (scale, backend)
        return lse

    @staticmethod
    def backward(ctx, g):
        x, lse = ctx.saved_tensors
        scale, backend = ctx.cfg
        g = g.contiguous()
        acc = ops.softmax_acc(x, x, scale, g, lse, g, lse, True, backend)
        gs = _dot(x, acc) / 2 if ctx.needs_input_grad[1] else None
        return acc.mul_(scale), gs, None, None


def _dot(a, b):
    """sum(a * b) without an (n, d) temporary."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


class RowColLSE(torch.autograd.Function):
    """Row and column log-sum-exps of one score matrix scale * x @ y.T, in one forward sweep."""

    @staticmethod
    def forward(ctx, x, y, scale_t, scale, backend):
        lr, lc = ops.lse_sweep(x, y, scale, True, False, backend)
        ctx.save_for_backward(x, y, lr, lc)
        ctx.cfg = (scale, backend)
        return lr, lc

    @staticmethod
    def backward(ctx, gr, gc):
        x, y, lr, lc = ctx.saved_tensors
        scale, backend = ctx.cfg
        gr = torch.zeros_like(lr) if gr is None else gr.contiguous()
        gc = torch.zeros_like(lc) if gc is None else gc.contiguous()
        # dL/ds_ij = gr_i P_ij + gc_j Q_ij (row and column softmaxes): one sweep per side.
        ax = ops.softmax_acc(x, y, scale, gr, lr, gc, lc, False, backend)
        gs = _dot(x, ax) if ctx.needs_input_grad[2] else None
        gx = ax.mul_(scale) if ctx.needs_input_grad[0] else None
        gy = ops.softmax_acc(y, x, scale, gc, lc, gr, lr, False, backend).mul_(scale) if ctx.needs_input_grad[1] else None
        return gx, gy, gs, None, None


class SoftplusSum(torch.autograd.Function):
    """sum_ij softplus(scale <x_i, y_j> + bias), differentiable in x, y, scale, bias."""

    @staticmethod
    def forward(ctx, x, y, scale_t, bias_t, scale, bias, backend):
        rows = ops.siglip_rows(x, y, scale, bias, backend)
        ctx.save_for_backward(x, y)
        ctx.cfg = (scale, bias, backend)
        return rows.sum()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        scale, bias, backend = ctx.cfg
        ax, rs = ops.siglip_acc(x, y, scale, bias, backend)
        gs = g * _dot(x, ax) if ctx.needs_input_grad[2] else None
        gb = g * rs.sum() if ctx.needs_input_grad[3] else None
        gx = ax.mul_(g * scale) if ctx.needs_input_grad[0] else None
        gy = None
        if ctx.needs_input_grad[1]:
            ay, _ = ops.siglip_acc(y, x, scale, bias, backend)
            gy = ay.mul_(g * scale)
        return gx, gy, gs, gb, None, None, None
