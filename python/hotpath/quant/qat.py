"""Quantization-aware training: fake quantization with STE / LSQ, prepare_qat and convert_qat.

prepare_qat swaps nn.Linear for QATLinear, which keeps the float weight (trainable), the format's
QAT parameters (learned LSQ "scale", fixed "zero") and computes
F.linear(config.fake_quantize_input(x), config.fake_quantize(W, qparams), bias).
convert_qat turns each QATLinear into a QuantLinear quantized with the learned parameters, so the
converted model's outputs equal the fake-quantized model's outputs up to float rounding.
Only the QuantConfig contract is used, so every registered format works (formats with no QAT
parameters train with a plain straight-through fake_quantize).
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import QuantConfig
from .linear import QuantLinear


def fake_quantize(x: Tensor, config: QuantConfig, qparams: Optional[Dict[str, Tensor]] = None) -> Tensor:
    """Quantize-dequantize a weight x (out_features, in_features) in format `config`, with a
    straight-through gradient for x and an LSQ gradient for qparams["scale"] when it requires grad
    (get initial qparams from config.qat_params(x)). Same values as dequantize(quantize(x))."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D weight (out_features, in_features), got shape {tuple(x.shape)}")
    config.validate_shape(*x.shape)
    if qparams:
        return config.fake_quantize(x, qparams)
    return config.fake_quantize(x)


class QATLinear(nn.Module):
    """nn.Linear with fake-quantized weight (and input, for dynamic-activation formats)."""

    def __init__(self, linear: nn.Linear, config: QuantConfig):
        super().__init__()
        config.validate_shape(linear.out_features, linear.in_features)
        self.in_features, self.out_features, self.config = linear.in_features, linear.out_features, config
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self._qnames = []
        for name, t in config.qat_params(self.weight.detach()).items():
            self._qnames.append(name)
            if name == "scale":
                self.register_parameter("qat_" + name, nn.Parameter(t.clone()))
            else:
                self.register_buffer("qat_" + name, t.clone())

    def qparams(self):
        return {n: getattr(self, "qat_" + n) for n in self._qnames}

    def fake_weight(self):
        q = self.qparams()
        return self.config.fake_quantize(self.weight, q) if q else self.config.fake_quantize(self.weight)

    def forward(self, x):
        w = self.fake_weight()
        xq = self.config.fake_quantize_input(x)
        return F.linear(xq, w.to(xq.dtype), None if self.bias is None else self.bias.to(xq.dtype))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, config={self.config}"


def _swap(model, pred, make):
    if pred(model, ""):
        return make(model)
    for fqn, mod in list(model.named_modules()):
        for name, child in list(mod.named_children()):
            full = f"{fqn}.{name}" if fqn else name
            if pred(child, full):
                setattr(mod, name, make(child))
    return model


def prepare_qat(model: nn.Module, config: QuantConfig,
                filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> nn.Module:
    """In place: nn.Linear -> QATLinear (fake quantization in `config`). Returns model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    return _swap(model, lambda m, f: type(m) is nn.Linear and (filter_fn is None or filter_fn(m, f)),
                 lambda m: QATLinear(m, config))


def convert_qat(model: nn.Module, backend: str = "auto") -> nn.Module:
    """In place: QATLinear -> QuantLinear quantized with the learned parameters. Returns model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")

    def make(m):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device)
        with torch.no_grad():
            lin.weight.copy_(m.weight)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        q = {k: v.detach() for k, v in m.qparams().items()}
        return QuantLinear.from_linear(lin, m.config, backend, qparams=q or None)

    return _swap(model, lambda m, f: isinstance(m, QATLinear), make)
