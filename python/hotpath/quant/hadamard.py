"""Random Hadamard transform along the last dimension (QuaRot / NVFP4-style rotation).

T(v) = H_b (s * v) / sqrt(b) on every block of b consecutive entries, s a seeded +-1 vector of
length K: an orthogonal map, so (x T^T)(W T^T)^T = x W^T in exact arithmetic. Rotating weights
and activations by the same T spreads outliers over the block before quantization (the
quantization error of the rotated weight is what the matmul sees, rotated back).
"""
import torch

from .. import _validate as V
from .. import backends
from .._ops import quant_lowbit as ops

MIN_BLOCK, MAX_BLOCK = 16, 256


def check_block(block, K=None, name="block"):
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"{name} must be an int, got {type(block).__name__}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"{name} must be a power of two, got {block}")
    if not MIN_BLOCK <= block <= MAX_BLOCK:
        raise ValueError(f"{name} must be between {MIN_BLOCK} and {MAX_BLOCK}, got {block}")
    if K is not None and K % block:
        raise ValueError(f"{name}={block} must divide the transformed dimension K={K}")
    return block


def default_block(K, largest=MAX_BLOCK):
    """The largest power of two in [16, largest] dividing K (None when 16 does not divide K)."""
    b = largest
    while b >= MIN_BLOCK:
        if K % b == 0:
            return b
        b //= 2
    return None


def hadamard_signs(K, seed=0, dtype=torch.float32, device=None):
    """The seeded +-1 vector (K,) of the transform (CPU generator: the same on every device)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    # device="cpu" too: under torch.set_default_device("cuda") a bare randint would ask a CUDA
    # draw of this CPU generator, which torch refuses
    bits = torch.randint(0, 2, (K,), generator=g, device="cpu")
    # device=None: torch's default device, as a factory function's
    return (1 - 2 * bits).to(dtype=dtype, device=torch.get_default_device() if device is None else device)


@backends.takes_backend
def random_hadamard(x, block=None, *, seed=0, signs=None, inverse=False, backend="auto"):
    """Apply the blockwise random Hadamard transform (or its inverse) along the last dim of x.

    x: (..., K) float tensor. block: power of two in 16..256 dividing K (default: the largest).
    signs: (K,) +-1 tensor (default: hadamard_signs(K, seed)). Returns a tensor like x
    (float16 / bfloat16 computed in float32).
    """
    V.tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    K = x.shape[-1]
    if block is None:
        block = default_block(K)
        if block is None:
            raise ValueError(f"the last dimension K={K} must be a multiple of 16 for a Hadamard block")
    check_block(block, K)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    if signs is None:
        signs = hadamard_signs(K, seed, cd, x.device)
    else:
        V.tensor("signs", signs, ndims=(1,))
        if signs.shape[0] != K:
            raise ValueError(f"signs must have shape ({K},), got {tuple(signs.shape)}")
        signs = signs.to(device=x.device, dtype=cd).contiguous()
    x2 = x.reshape(-1, K).to(cd).contiguous()
    y = _Fwht.apply(x2, signs, int(block), bool(inverse))
    return y.reshape(x.shape).to(x.dtype)


class _Fwht(backends.Function):
    """The transform is orthogonal: its gradient is the inverse transform of the incoming gradient."""

    @staticmethod
    def forward(ctx, x, signs, block, inverse):
        ctx.save_for_backward(signs)
        ctx.cfg = (block, inverse)
        return ops.fwht(x, signs, block, inverse)

    @staticmethod
    def backward(ctx, g):
        (signs,) = ctx.saved_tensors
        block, inverse = ctx.cfg
        return ops.fwht(g.contiguous(), signs, block, not inverse), None, None, None
