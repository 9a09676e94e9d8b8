"""What every quantized-linear op (hotpath::*_linear) returns, whatever kernel computes it.

- y (M, N) is in the activations' dtype when they are bfloat16 / float16 (only GPU kernels are
  handed 16-bit activations: quant/_lowbit_common.kernel_activations), else float32. At prefill
  sizes the output is the largest tensor a layer touches: a float32 y cast back to bf16 would
  write it twice and read it once more.
- A row of x holding NaN or +-inf gives a NaN row of y. Per element, kernels differ there (a
  kernel that factors out a zero point computes inf - inf where a plain product gives +-inf), so
  the rule is applied as a per-row flag, 0 or NaN, added to the output tile: GPU kernels add it
  in their epilogue (one read of x, no extra pass over y). The C++ CPU kernels leave it to
  QuantLinear, which adds the same flag to their float32 output.
"""
import torch

_SIXTEEN = (torch.bfloat16, torch.float16)


def out_dtype(x):
    return x.dtype if x.dtype in _SIXTEEN else torch.float32


def fake(n_of):
    """Fake implementation: (M, N) in out_dtype(x), N read off the op's buffers."""
    return lambda x, *bufs: x.new_empty(x.shape[0], n_of(*bufs), dtype=out_dtype(x))


def row_flag(x):
    """(M,) float32: 0 for a row of x that is all finite, NaN for one holding NaN or +-inf.
    amax / amin never overflow (a sum of large finite values could) and propagate NaN."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], dtype=torch.float32)
    lo, hi = torch.aminmax(x, dim=1)
    return lo.float() * 0.0 + hi.float() * 0.0


def finish(x, y):
    """A float32 result of a reference kernel -> the op's output (NaN rows, dtype, contiguous)."""
    return (y.float() + row_flag(x)[:, None]).to(out_dtype(x)).contiguous()
