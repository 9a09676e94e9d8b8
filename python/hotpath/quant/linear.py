"""QuantLinear and quantize_: format-generic (only the QuantConfig contract is used)."""
import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ._base import QuantConfig, config_from_dict
from .gptq import gptq_converter
from .. import backends
from .._ops.linear_out import row_flag


def _nan_rows(x, y):
    """NaN rule of the quantized layers: an input row holding NaN or +-inf gives a NaN output row,
    for every format and backend (_ops/linear_out.py). Every kernel but the C++ CPU ones applies it
    in its epilogue; their float32 output gets the same row flag here (reading a CPU scalar on the
    host waits for no device)."""
    if y.device.type != "cpu":
        return y
    if not torch.compiler.is_compiling():
        if x.numel() == 0:
            return y
        # almost every input is all finite: one pass over x and two scalars read on the host (no
        # device to wait for) skip the per-row flags, which cost more than a small layer's kernel
        lo, hi = torch.aminmax(x)
        if math.isfinite(lo.item()) and math.isfinite(hi.item()):
            return y
    return y + row_flag(x)[:, None].to(y.dtype)


def input_grad(g, w):
    """dy W with the dequantized (float32) weight. On a GPU a 16-bit gradient meets the weight
    rounded to its own dtype, a tensor-core GEMM with float32 accumulation (what nn.Linear's
    backward runs in bf16; a float32 GEMM there is several times slower). Elsewhere float32."""
    if g.device.type == "cuda" and g.dtype in (torch.float16, torch.bfloat16):
        return g @ w.to(g.dtype)
    return g.to(w.dtype) @ w


class _QuantLinearFn(backends.Function):
    """y = x W^T + bias by the format's kernel. The weight is frozen; the input gradient is a
    plain GEMM with the dequantized weight, dx = dy W (LoRA and other adapters on a quantized
    base train through it), and db = sum of dy when the bias is trainable. The dynamic formats'
    activation rounding passes the gradient straight through, as in QAT."""

    @staticmethod
    def forward(ctx, x, bias, config, q):
        ctx.config, ctx.q, ctx.x_dtype = config, q, x.dtype
        return config.linear(x, q, bias)

    @staticmethod
    def backward(ctx, g):
        gx = gb = None
        if ctx.needs_input_grad[0]:
            gx = input_grad(g, ctx.config.dequantize_weight(ctx.q)).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gb = g.sum(0)
        return gx, gb, None, None


class QuantLinear(nn.Module):
    """y = x @ W^T + bias with W stored in a quantized format (buffers from config.quantize_weight).

    x may have any leading batch dimensions; float32 / bfloat16 / float16 / float64 inputs compute
    with float32 accumulation and return the input dtype. state_dict holds the packed buffers, the
    bias and (as extra state) the config and shape, so save / load round-trips bit-exactly.

    The quantized weight is frozen, but gradients flow to the input (dx = dy @ W, W the
    dequantized weight) and to the bias if it is made trainable: adapters such as LoRA train on a
    quantized base. Module casts (``.half()``, ``.to(torch.bfloat16)``, ``.double()``) leave the
    quantized buffers' dtypes alone (codes and scales are the format); only the bias follows
    the cast, as in torchao's and bitsandbytes' layers. Device moves move everything.
    """

    def __init__(self, in_features: int, out_features: int, config: QuantConfig, bias: bool = True,
                 weight: Optional[Tensor] = None, backend: str = "auto", device=None):
        super().__init__()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig (e.g. Int8WeightOnly()), got {type(config).__name__}")
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        backends.check(backend)
        config.validate_shape(out_features, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.config = config
        self.backend = backend
        if weight is None:
            weight = torch.zeros(out_features, in_features, device=device)
        elif tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"weight must have shape ({out_features}, {in_features}), got {tuple(weight.shape)}")
        self._names = []
        self._set_buffers(config.quantize_weight(weight.detach()))
        self.bias = nn.Parameter(torch.zeros(out_features, device=weight.device), requires_grad=False) if bias else None

    def _set_buffers(self, q):
        for name in self._names:
            delattr(self, name)
        self._names = list(q)
        for name, t in q.items():
            self.register_buffer(name, t)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, backend: str = "auto", qparams=None, weight=None):
        """weight: the (already rounded) values to store instead of linear.weight (GPTQ)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach() if weight is None else weight.detach()
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        backends.check(backend)
        config.validate_shape(linear.out_features, linear.in_features)
        mod.in_features, mod.out_features, mod.config, mod.backend = linear.in_features, linear.out_features, config, backend
        mod._names = []
        mod._set_buffers(config.quantize_weight(w, qparams) if qparams else config.quantize_weight(w))
        mod.bias = None
        if linear.bias is not None:
            mod.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return mod

    def qbuffers(self):
        bufs = self._buffers   # read directly: nn.Module.__getattr__ costs a lookup chain per name
        return {name: bufs[name] for name in self._names}

    def _apply(self, fn, recurse=True):
        # the quantized buffers follow device moves but never dtype casts: model.half() must not
        # turn float32 scales into float16 ones (the kernels read float32, and the values would
        # change); the bias, a float parameter, follows the cast
        held = {name: self._buffers.pop(name) for name in self._names if name in self._buffers}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in held.items():
                moved = fn(t)
                if moved.dtype != t.dtype:
                    moved = t.to(device=moved.device)
                self._buffers[name] = moved
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise TypeError(f"input must be float32, bfloat16, float16 or float64, got {x.dtype}")
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        bias = self.bias
        if bias is not None and bias.dtype != torch.float32:
            bias = bias.float()  # a cast module holds a half bias
        y = _nan_rows(x2, backends.under(self.backend, self._linear, x2, bias))
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _linear(self, x2, bias):
        if torch.is_grad_enabled() and (x2.requires_grad or (bias is not None and bias.requires_grad)):
            return _QuantLinearFn.apply(x2, bias, self.config, self.qbuffers())
        return self.config.linear(x2, self.qbuffers(), bias)

    def dequantize(self) -> nn.Linear:
        """A float nn.Linear holding the weight these buffers encode."""
        w = self.config.dequantize_weight(self.qbuffers())
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def get_extra_state(self):
        return {"config": self.config.to_dict(), "in_features": self.in_features, "out_features": self.out_features}

    def set_extra_state(self, state):
        if (state["in_features"], state["out_features"]) != (self.in_features, self.out_features):
            raise ValueError(f"state_dict is for a ({state['out_features']}, {state['in_features']}) layer, "
                             f"this QuantLinear is ({self.out_features}, {self.in_features})")
        config = config_from_dict(state["config"])
        if config != self.config:
            # a different format: rebuild buffers of the right shapes; load_state_dict fills them
            self.config = config
            self._set_buffers(config.quantize_weight(torch.zeros(self.out_features, self.in_features)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # apply the recorded config first so buffers have the shapes of the saved format
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self.set_extra_state(extra)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, config={self.config}"


@backends.takes_backend
def quantize_(model: nn.Module, config: QuantConfig, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
              backend: str = "auto", *, calibrate: Optional[Callable[[nn.Module], object]] = None,
              gptq_damp: float = 0.1) -> nn.Module:
    """Replace, in place, every nn.Linear of model (for which filter_fn(module, fqn) is true) by a
    QuantLinear in format `config`. Returns model (an nn.Linear passed directly is returned
    converted, since it cannot be replaced in place).

    calibrate: a function that runs the float model on sample inputs (e.g. ``lambda m:
    m.encode(sentences)``). With it, weights are rounded by GPTQ (hotpath.quant.gptq) against
    the input statistics it collects, instead of round-to-nearest: same format, same kernels,
    lower output error. gptq_damp: the Hessian damping, a fraction of its mean diagonal."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig (e.g. Int8WeightOnly()), got {type(config).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be callable (module, fqn) -> bool or None")

    def want(mod, fqn):
        return type(mod) is nn.Linear and (filter_fn is None or filter_fn(mod, fqn))

    rounder = gptq_converter(model, config, want, calibrate, gptq_damp) if calibrate is not None else None

    def convert(fqn, lin):
        try:
            if rounder is None:
                return QuantLinear.from_linear(lin, config, backend)
            qparams, wq = rounder(fqn, lin)
            return QuantLinear.from_linear(lin, config, backend, qparams=qparams, weight=wq)
        except ValueError as e:  # name the layer: "weight holds NaN" alone does not say which one
            raise ValueError(f"layer {fqn or type(model).__name__!r}: {e}") from e

    if want(model, ""):
        return convert("", model)
    for fqn, mod in list(model.named_modules()):
        for name, child in list(mod.named_children()):
            full = f"{fqn}.{name}" if fqn else name
            if want(child, full):
                setattr(mod, name, convert(full, child))
    return model
