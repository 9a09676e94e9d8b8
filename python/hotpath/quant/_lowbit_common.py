"""Helpers shared by the quantization formats: argument checks, x preparation, STE."""
import torch

from .. import _validate as V
from ..backends.triton.target import on_gpu


def check_weight(weight, *, name="weight", finite=True):
    V.tensor(name, weight, ndims=(2,))
    if finite and not bool(torch.isfinite(weight).all()):
        bad = (~torch.isfinite(weight)).nonzero()[0].tolist()
        raise ValueError(f"{name} holds a non-finite value at {tuple(bad)}: every quantization format stores "
                         "finite weights only (fake_quantize passes NaN / inf through element-wise instead)")
    return weight


def host_int(t):
    """int(t) of a one-element metadata buffer (a layer's K, its Hadamard block), read from the
    device once per value: a read per call would be a host sync every decode step (and CUDA graph
    capture refuses one). Cached on the tensor with its version counter, so an in-place write
    (load_state_dict copies into the buffers) is read again."""
    hit = getattr(t, "_hotpath_host_int", None)
    if hit is not None and hit[0] == t._version:
        return hit[1]
    v = int(t.reshape(-1)[0])
    try:
        t._hotpath_host_int = (t._version, v)
    except (AttributeError, RuntimeError):   # a tensor subclass that takes no attributes
        pass
    return v


def check_rounding(rounding):
    return V.one_of("rounding", rounding, ("nearest", "stochastic"))


def prep_x(x, K):
    V.tensor("x", x, ndims=(2,))
    if x.shape[1] != K:
        raise ValueError(f"x must have {K} features (in_features), got shape {tuple(x.shape)}")
    return kernel_activations(x)


def kernel_activations(x):
    """x as the linear kernels read it: bf16 / fp16 stay as they are where a compiled GPU kernel
    reads them (they feed the tensor cores), everything else is float32."""
    if on_gpu(x) and x.dtype in (torch.bfloat16, torch.float16):
        return x.contiguous()
    return x.to(torch.float32).contiguous()


def prep_bias(bias, N, device):
    if bias is None:
        return None
    V.tensor("bias", bias, ndims=(1,))
    if bias.shape[0] != N:
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    return bias.to(device=device, dtype=torch.float32).contiguous()


def ste(w, wq):
    """Straight-through estimator: value wq, gradient identity w.r.t. w. Where w is not finite
    (and wq passes it through) the correction is 0, so inf stays inf rather than inf - inf."""
    d = (wq.to(w.dtype) - w).detach()
    return w + torch.where(torch.isfinite(d), d, torch.zeros_like(d))


def finite_passthrough(w, wq):
    """Non-finite weights stay as they are, element-wise (they never enter a scale)."""
    fin = torch.isfinite(w)
    return torch.where(fin, wq.to(w.dtype), w)
