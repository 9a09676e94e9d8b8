"""hotpath: streaming pairwise kernels for optimal transport, contrastive losses and quantized
linear layers, with C++ (CPU) and Triton (GPU) kernels behind thin autograd wrappers."""
from ._layout import alias_checkout_packages

alias_checkout_packages()

from ._version import __version__  # noqa: E402
from ._info import info  # noqa: E402
from .pairwise import pairwise_lse  # noqa: E402
from . import ot, contrastive, quant  # noqa: E402

__all__ = ["__version__", "pairwise_lse", "info", "ot", "contrastive", "quant"]
