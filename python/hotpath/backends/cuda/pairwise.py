"""pairwise_lse forward on CUDA tensors: the CUDA C++ kernel (csrc/cuda/pairwise_lse.cu) for
large problems with narrow features (d, k <= 16: one thread a row, features in registers, at
least CPP_MIN_PAIRS pairs) where the extension was built with CUDA, Triton otherwise."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import OPS, op, triton_available

NARROW = 16
# The CUDA C++ kernel's share: problems of at least this many pairs. The one H200 measurement
# (d = 3, an earlier Triton kernel) had it 3x slower than Triton at 10k x 10k (1e8 pairs) and
# 1.35x faster at 100k x 100k (1e10); this splits the difference until `bench pairwise --device
# cuda` (its "CUDA C++ vs Triton" rows) places the crossover.
CPP_MIN_PAIRS = 10 ** 9


def _narrow_fake(x, y, col_bias, values, scale, metric):
    k = 0 if values is None else values.shape[-1]
    return x.new_empty(x.shape[0], x.shape[1]), x.new_empty(x.shape[0], x.shape[1], k)


@op("pairwise_lse_fwd_narrow", fake=_narrow_fake)
def pairwise_lse_fwd_narrow(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                            scale: float, metric: str) -> Tuple[Tensor, Tensor]:
    """The CUDA C++ kernel's op; anywhere else the pairwise reference."""
    return OPS["pairwise_lse_fwd"].default(x, y, col_bias, values, scale, metric)


def cuda_kernels_built():
    """Whether the C++ extension holds the CUDA kernels (it then defines this marker op)."""
    return hasattr(torch.ops.hotpath, "cuda_kernels_built")


def pairwise_lse_fwd(x, y, col_bias, values, scale, metric):
    narrow = x.shape[-1] <= NARROW and (values is None or values.shape[-1] <= NARROW)
    # the CUDA C++ kernel reads float32 / float64; 16-bit operands go to Triton's tensor-core tiles
    big = x.shape[0] * x.shape[1] * y.shape[1] >= CPP_MIN_PAIRS
    if narrow and big and x.dtype in (torch.float32, torch.float64) and cuda_kernels_built():
        return pairwise_lse_fwd_narrow.overload(x, y, col_bias, values, scale, metric)
    if not triton_available():  # no Triton kernel here: the reference, as for any other device
        return OPS["pairwise_lse_fwd"].default(x, y, col_bias, values, scale, metric)
    from ..triton import pairwise as triton_pairwise
    return triton_pairwise.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
