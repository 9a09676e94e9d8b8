"""The low-bit float / ternary formats, the Hadamard transform and quantized embedding search in
one namespace (hotpath.quant exports the same names)."""
from ._minifloat import decode_table
from .embeddings import QuantizedEmbeddings, embedding_search, quantize_embeddings
from .fp4 import MXFP4, NVFP4, decode_fp4, encode_fp4, mx_dequantize, mx_quantize, nv_dequantize, nv_quantize
from .fp8 import FP8WeightOnly, decode_fp8, encode_fp8, round_fp8
from .hadamard import hadamard_signs, random_hadamard
from .ternary import Ternary, fake_quantize_act_int8, ternarize

__all__ = [
    "FP8WeightOnly", "MXFP4", "NVFP4", "Ternary",
    "encode_fp8", "decode_fp8", "round_fp8", "encode_fp4", "decode_fp4", "decode_table",
    "mx_quantize", "mx_dequantize", "nv_quantize", "nv_dequantize",
    "random_hadamard", "hadamard_signs", "ternarize", "fake_quantize_act_int8",
    "quantize_embeddings", "embedding_search", "QuantizedEmbeddings",
]
