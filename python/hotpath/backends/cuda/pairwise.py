"""pairwise_lse forward on CUDA tensors: the CUDA C++ kernel (csrc/cuda/pairwise_lse.cu) for
narrow features (d, k <= 16: one thread a row, features in registers), Triton otherwise."""
from typing import Optional, Tuple

from torch import Tensor

from .. import OPS, op, triton_available

NARROW = 16
_state = {"cuda_cpp": True}


def _narrow_fake(x, y, col_bias, values, scale, metric):
    k = 0 if values is None else values.shape[-1]
    return x.new_empty(x.shape[0], x.shape[1]), x.new_empty(x.shape[0], x.shape[1], k)


@op("pairwise_lse_fwd_narrow", fake=_narrow_fake)
def pairwise_lse_fwd_narrow(x: Tensor, y: Tensor, col_bias: Optional[Tensor], values: Optional[Tensor],
                            scale: float, metric: str) -> Tuple[Tensor, Tensor]:
    """Registered for CUDA by the C++ extension; anywhere else there is no such kernel."""
    raise NotImplementedError("pairwise_lse_fwd_narrow runs only where the CUDA C++ extension is built")


def pairwise_lse_fwd(x, y, col_bias, values, scale, metric):
    narrow = x.shape[-1] <= NARROW and (values is None or values.shape[-1] <= NARROW)
    if narrow and _state["cuda_cpp"]:
        try:
            return pairwise_lse_fwd_narrow.overload(x, y, col_bias, values, scale, metric)
        except NotImplementedError:  # extension built without CUDA: remember, use Triton
            _state["cuda_cpp"] = False
    if not triton_available():  # no Triton kernel here: the reference, as for any other device
        return OPS["pairwise_lse_fwd"].default(x, y, col_bias, values, scale, metric)
    from ..triton import pairwise as triton_pairwise
    return triton_pairwise.pairwise_lse_fwd(x, y, col_bias, values, scale, metric)
