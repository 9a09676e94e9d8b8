"""Quantized linear layers and quantized embedding search.

    import hotpath as hp
    hp.quant.quantize_(model, hp.quant.Int8Dynamic())          # nn.Linear -> QuantLinear, in place
    hp.quant.quantize_(model, hp.quant.Int4WeightOnly(group_size=32), filter_fn=lambda m, fqn: "head" not in fqn)

Integer formats: Int8WeightOnly (W8A16), Int8Dynamic (W8A8), Int4WeightOnly (W4A16),
Int4Dynamic (W4A8). Low-bit float / ternary formats: FP8WeightOnly, MXFP4, NVFP4 (optionally with
a random Hadamard rotation), Ternary. QAT: fake_quantize, prepare_qat, convert_qat. Embeddings:
quantize_embeddings, embedding_search. Kernel layouts: hotpath.quant.packing.
"""
from ._base import QuantConfig, config_from_dict, register_format
from ._minifloat import decode_table
from .embeddings import QuantizedEmbeddings, embedding_search, quantize_embeddings
from .fp4 import MXFP4, NVFP4, decode_fp4, encode_fp4, mx_dequantize, mx_quantize, nv_dequantize, nv_quantize
from .fp8 import FP8WeightOnly, decode_fp8, encode_fp8, round_fp8
from .fp8_dynamic import FP8Dynamic
from .hadamard import hadamard_signs, random_hadamard
from .int4 import Int4Dynamic, Int4WeightOnly
from .int8 import Int8Dynamic, Int8WeightOnly
from .linear import QuantLinear, quantize_
from .qat import QATLinear, convert_qat, fake_quantize, prepare_qat
from .ternary import Ternary, fake_quantize_act_int8, ternarize

__all__ = [
    "QuantConfig", "config_from_dict", "register_format", "QuantLinear", "quantize_",
    "Int8WeightOnly", "Int8Dynamic", "Int4WeightOnly", "Int4Dynamic",
    "FP8WeightOnly", "FP8Dynamic", "MXFP4", "NVFP4", "Ternary",
    "QATLinear", "fake_quantize", "prepare_qat", "convert_qat",
    "encode_fp8", "decode_fp8", "round_fp8", "encode_fp4", "decode_fp4", "decode_table",
    "mx_quantize", "mx_dequantize", "nv_quantize", "nv_dequantize",
    "random_hadamard", "hadamard_signs", "ternarize", "fake_quantize_act_int8",
    "quantize_embeddings", "embedding_search", "QuantizedEmbeddings",
]
