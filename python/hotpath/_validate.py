"""Argument checks shared by the public functions: errors name the argument and what was expected."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name, t, *, ndims=None, floating=True, allow_none=False):
    if t is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if ndims is not None and t.dim() not in ndims:
        exp = " or ".join(f"{k}-D" for k in ndims)
        raise ValueError(f"{name} must be {exp}, got shape {tuple(t.shape)}")
    return t


def same_device(**tensors):
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def scalar(name, v, *, positive=False, nonzero=False, finite=True, allow_tensor=True, minimum=None):
    """A float parameter (python number or 0-d tensor). Returns it unchanged."""
    if isinstance(v, torch.Tensor):
        if not allow_tensor:
            raise TypeError(f"{name} must be a python number, got a tensor")
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(v.shape)}")
        val = float(v.detach().reshape(()).item())
    elif isinstance(v, numbers.Real) and not isinstance(v, bool):
        val = float(v)
    else:
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if finite and not math.isfinite(val):
        raise ValueError(f"{name} must be finite, got {val}")
    if positive and not val > 0:
        raise ValueError(f"{name} must be > 0, got {val}")
    if nonzero and val == 0:
        raise ValueError(f"{name} must be nonzero, got {val}")
    if minimum is not None and val < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {val}")
    return v


def compute_dtype(*tensors):
    """float64 if any input is float64, else float32 (half inputs accumulate in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def one_of(name, v, options):
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")
    return v
