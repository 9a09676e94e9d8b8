"""hotpath: streaming pairwise kernels for optimal transport, contrastive losses and quantized
linear layers, with C++ (CPU) and Triton (GPU) kernels behind thin autograd wrappers."""
from ._version import __version__
from ._info import info
from .pairwise import pairwise_lse
from . import backends, ot, contrastive, quant

__all__ = ["__version__", "pairwise_lse", "info", "backends", "ot", "contrastive", "quant"]
