"""Quantized linear layers (issues 6 and 7).

    import hotpath as hp
    hp.quant.quantize_(model, hp.quant.Int8Dynamic())          # nn.Linear -> QuantLinear, in place
    hp.quant.quantize_(model, hp.quant.Int4WeightOnly(group_size=32), filter_fn=lambda m, fqn: "head" not in fqn)

Integer formats: Int8WeightOnly (W8A16), Int8Dynamic (W8A8), Int4WeightOnly (W4A16),
Int4Dynamic (W4A8). QAT: fake_quantize, prepare_qat, convert_qat.
"""
import importlib

from ._base import QuantConfig, config_from_dict, register_format
from .int8 import Int8WeightOnly, Int8Dynamic
from .int4 import Int4WeightOnly, Int4Dynamic
from .linear import QuantLinear, quantize_
from .qat import QATLinear, fake_quantize, prepare_qat, convert_qat

__all__ = ["QuantConfig", "config_from_dict", "register_format", "Int8WeightOnly", "Int8Dynamic",
           "Int4WeightOnly", "Int4Dynamic", "QuantLinear", "quantize_", "QATLinear", "fake_quantize",
           "prepare_qat", "convert_qat"]

# Formats and tools of the other quantization modules (FP8 / FP4 / ternary / embeddings), when present.
for _mod in ("fp8", "fp4", "hadamard", "ternary", "embeddings", "lowbit"):
    try:
        _m = importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_mod}":
            raise
        continue
    for _name in getattr(_m, "__all__", ()):
        globals()[_name] = getattr(_m, _name)
        __all__.append(_name)
