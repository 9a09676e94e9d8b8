"""The contract between QuantLinear / quantize_ and the quantization formats.

A format is a QuantConfig subclass (a dataclass). QuantLinear stores what `quantize_weight`
returns as buffers (so state_dict / torch.save round-trip bit-exactly) and records the config
through `to_dict` / `config_from_dict` in its extra state. Formats register by name.
"""
import abc
import dataclasses
from typing import Dict, Optional

from torch import Tensor

_REGISTRY: Dict[str, type] = {}


def register_format(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def config_from_dict(d):
    d = dict(d)
    name = d.pop("format")
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantization format {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**d)


@dataclasses.dataclass
class QuantConfig(abc.ABC):
    """Base of every format config. Subclasses implement the four methods below."""

    def validate_shape(self, out_features: int, in_features: int) -> None:
        """Raise ValueError when the layer shape does not fit the format (e.g. K % group_size)."""

    @abc.abstractmethod
    def quantize_weight(self, weight: Tensor) -> Dict[str, Tensor]:
        """(N, K) float weight -> named buffers (packed codes, scales, ...), in kernel layout."""

    @abc.abstractmethod
    def linear(self, x: Tensor, q: Dict[str, Tensor], bias: Optional[Tensor], backend: str = "auto") -> Tensor:
        """y = x @ W^T + bias for x (M, K) 2-D float; W given by its buffers q."""

    @abc.abstractmethod
    def dequantize_weight(self, q: Dict[str, Tensor]) -> Tensor:
        """Buffers -> the (N, K) float32 weight they encode."""

    @abc.abstractmethod
    def fake_quantize(self, w: Tensor) -> Tensor:
        """Quantize-dequantize with a straight-through gradient (QAT); same values as dequantize(quantize(w))."""

    # ---- optional extensions (defaults keep formats that do not need them working) ----------
    def qat_params(self, weight: Tensor) -> Dict[str, Tensor]:
        """Initial quantization parameters for QAT. Entries named "scale" are learned (LSQ) by
        prepare_qat; the others are kept fixed. A format returning {} (the default) is trained
        with plain fake_quantize(w); one returning parameters must accept
        fake_quantize(w, qparams) and quantize_weight(w, qparams) so convert_qat reproduces the
        fake-quantized values exactly."""
        return {}

    def gptq_quantizer(self, weight: Tensor):
        """For GPTQ rounding (quantize_(..., calibrate=)): (qparams, round_columns), qparams fixed
        from the original (N, K) weight and round_columns(w_cols (N, c), k0) -> the float values
        columns k0 .. k0 + c - 1 take under them. quantize_weight(w_rounded, qparams) must then
        store exactly those values. None (the default): the format has no GPTQ path."""
        return None

    def fake_quantize_input(self, x: Tensor) -> Tensor:
        """Fake quantization of the layer input during QAT (dynamic-activation formats); identity by default."""
        return x

    def to_dict(self):
        return {"format": type(self).__name__, **dataclasses.asdict(self)}
