"""POT drop-in argument handling: the array type follows the input, as in POT.

POT-named functions accept numpy arrays (and lists, which POT turns into arrays) and then return
numpy; given torch tensors they return tensors. Inside, everything is a torch tensor: numpy arrays
are wrapped without a copy (float64 stays float64), integer or boolean arrays are promoted to
float64. A mix of tensors and arrays is accepted; the arrays move to the tensors' device.
"""
import numbers

import numpy as np
import torch


def numpy_mode(*args):
    """True when no argument is a tensor and at least one is a numpy array or a list (POT's
    backend rule: the result has the type of the inputs)."""
    if any(isinstance(a, torch.Tensor) for a in args):
        return False
    return any(isinstance(a, (np.ndarray, list, tuple, np.generic)) for a in args)


def as_tensor(name, t, *, device=None, empty_is_none=False):
    """numpy array / list / numpy scalar -> tensor (tensors and None pass through; anything else is
    left for the caller's type check, so the error names the argument). empty_is_none: an empty
    1-D weight vector means uniform, POT's convention for `a=[]`."""
    if isinstance(t, torch.Tensor):
        if empty_is_none and t.dim() == 1 and t.numel() == 0:
            return None
        return t
    if t is None:
        return None
    if not isinstance(t, (np.ndarray, list, tuple, np.generic)):
        return t
    try:
        arr = np.asarray(t)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name} must be an array of numbers, got an irregular {type(t).__name__}: {e}") from None
    if empty_is_none and arr.ndim == 1 and arr.size == 0:
        return None
    if arr.dtype.kind in "biu" or (arr.size == 0 and arr.dtype == object):
        arr = arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must hold real floating-point numbers, got a {arr.dtype} array")
    out = torch.from_numpy(np.ascontiguousarray(arr))
    return out if device is None else out.to(device)


def first_device(*args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def to_numpy(t):
    """Tensor -> numpy; a 0-d result becomes a numpy scalar (what POT's numpy backend returns)."""
    if isinstance(t, torch.Tensor):
        arr = t.detach().cpu().numpy()
        return arr[()] if arr.ndim == 0 else arr
    if isinstance(t, dict):
        return {k: to_numpy(v) for k, v in t.items()}
    if isinstance(t, tuple):
        return tuple(to_numpy(v) for v in t)
    return t


def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
