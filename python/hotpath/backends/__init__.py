"""Where an op's kernels come from, and the one override that picks among them.

Every op is declared once with `op(...)`: a `torch.library` schema, a fake implementation and
its pure-torch default kernel (the reference), which the dispatcher runs on any device that has
no kernel of its own. Per-device kernels register by dispatch key, each from its own place:

    C++ CPU      csrc/cpu/*.cpp       TORCH_LIBRARY_IMPL(hotpath, CPU, m)
    CUDA C++     csrc/cuda/*.cu       TORCH_LIBRARY_IMPL(hotpath, CUDA, m)
    Triton       backends/triton/     registered for "cuda" here, from the op's `triton=` name

So with the default preference ("auto") a call is a plain dispatcher call. The preference
(`backend=` on public functions, `prefer(...)`, or HOTPATH_BACKEND) is context-local. It matters
only where the dispatcher cannot choose: "reference" runs the default kernel on any device, and
"triton" runs the Triton kernel on CPU tensors through the interpreter (TRITON_INTERPRET=1),
which is how the Triton kernels are tested without a GPU. "cpu" and "cuda" only check that the
tensors live there.
"""
import contextlib
import contextvars
import functools
import inspect

import importlib
import importlib.util
import os
import warnings

import torch

from .._ext import load_extension
from .triton import target

KINDS = ("auto", "reference", "cpu", "triton", "cuda")
_preference = contextvars.ContextVar("hotpath_backend", default=None)
_warned = set()


def check(kind):
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"backend must be one of {KINDS}, got {kind!r}")
    return kind


def current():
    """The preference in force: the innermost prefer(...), else HOTPATH_BACKEND, else "auto"."""
    kind = _preference.get()
    if kind is None:
        kind = check(os.environ.get("HOTPATH_BACKEND", "auto") or "auto")
    return kind


@contextlib.contextmanager
def prefer(kind):
    """Run the ops inside with this preference. "auto" keeps the enclosing one, so a public
    function's default backend="auto" does not undo a caller's choice."""
    if check(kind) == "auto":
        yield
        return
    token = _preference.set(kind)
    try:
        yield
    finally:
        _preference.reset(token)


@functools.lru_cache(maxsize=None)
def triton_available():
    # cached: a CUDA call asks at every call, and a package lookup costs microseconds
    return importlib.util.find_spec("triton") is not None


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _device(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


class _Lazy:
    """A kernel imported on first use from backends/<kind>/<module>.py (importing triton costs
    seconds, and nothing should import it unless a Triton kernel runs)."""

    def __init__(self, kind, path):
        self.module, self.name = f"{__name__}.{kind}.{path}".rsplit(".", 1)
        self._fn = None

    def __call__(self, *args):
        if self._fn is None:
            self._fn = getattr(importlib.import_module(self.module), self.name)
        return self._fn(*args)


_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _plain(args):
    """Plain tensors needing no gradient, and no mode, subclass or transform that must see the call."""
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active()):
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in (torch.Tensor, torch.nn.Parameter) or (grad and a.requires_grad)):
            return False
    return True


class Op:
    """A declared op: calling it runs torch.ops.hotpath.<name> under the current preference."""

    def __init__(self, name, default, custom, triton):
        self.name = name
        self.default = default            # the reference kernel, a plain function
        self.custom = custom              # the torch.library CustomOpDef
        self.triton = triton              # the Triton launcher (a _Lazy) or None
        self.overload = getattr(torch.ops.hotpath, name).default
        self._opoverload = self.overload  # what torch.library.opcheck looks for

    def kernel(self, kind):
        """The function that runs for an explicit preference, None where the dispatcher decides."""
        if kind == "reference":
            return self.default
        if kind == "triton":
            if self.triton is None:
                return self.default
            return self.triton
        return None

    def with_backend(self, kind, *args):
        """Call under an explicit preference (tests compare kernels this way)."""
        with prefer(kind):
            return self(*args)

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.overload(*args)
        kind = current()
        device = _device(args)
        if kind == "cpu" and device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if kind == "cuda" and device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if kind == "triton":
            if not triton_available():
                raise ValueError("backend='triton' requested but triton is not installed")
            if device.type == "cpu" and not (triton_interpreting() or target.standing_in()):
                raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (the Triton interpreter)")
        fn = self.kernel(kind)
        if fn is not None:
            return fn(*args)
        load_extension()  # registers the C++ (CPU and CUDA) kernels with the dispatcher, once
        if device.type == "cpu" and _plain(args):
            # nothing for the dispatcher's autograd and Python layers to do: straight to the CPU
            # kernel (they cost more than a small quantized layer's kernel does)
            return self.overload.redispatch(_CPU_KEYS, *args)
        if device.type == "cuda" and self.triton is not None and not triton_available():
            _warn_once("triton", "hotpath: triton is not installed; CUDA ops fall back to the pure-torch reference")
        return self.overload(*args)


OPS = {}


def op(name, *, fake, triton=None, cuda=None, composite=None):
    """Declare torch.ops.hotpath.<name> with the decorated function as its default kernel.

    fake: the fake (meta) implementation. triton: "<module>.<launcher>" in backends/triton/, the
    CUDA kernel when triton is installed. cuda: "<module>.<kernel>" in backends/cuda/, a CUDA
    kernel that chooses between CUDA C++ and Triton by shape (it takes the place of triton= there).
    CUDA C++ kernels that serve every shape register from C++ instead (TORCH_LIBRARY_IMPL).
    composite: a function of other hotpath ops, for an op that fuses what they do where a backend
    can (cuda=) and elsewhere is just them: it is the CPU kernel and the Triton kernel.
    """
    def declare(fn):
        custom = torch.library.custom_op(f"hotpath::{name}", fn, mutates_args=())
        custom.register_fake(fake)
        launcher = _Lazy("triton", triton) if triton is not None else composite
        if composite is not None:
            custom.register_kernel("cpu", composite)
        on_cuda = _Lazy("cuda", cuda) if cuda is not None else launcher
        if on_cuda is not None and (cuda is not None or triton_available()):
            custom.register_kernel("cuda", on_cuda)
        OPS[name] = Op(name, fn, custom, launcher)
        return OPS[name]
    return declare



def operand_dtype(*tensors):
    """The dtype the streaming ops read their operands in (the precision policy).

    Inputs that share one 16-bit dtype stay in it where a GPU kernel reads them (CUDA tensors, or
    backend="triton" on CPU tensors through the interpreter): the tiles feed the tensor cores
    directly, and the ops return their statistics and accumulators in float32. Elsewhere, and for
    mixed dtypes, float32 (float64 if any input is float64): the CPU kernels compute in those.
    """
    dts = {t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if torch.float64 in dts:
        return torch.float64
    if len(dts) == 1 and next(iter(dts)) in (torch.float16, torch.bfloat16):
        if _device(tensors).type != "cpu" or current() == "triton":
            return next(iter(dts))
    return torch.float32


def stat_dtype(dtype):
    """The dtype of the ops' statistics and accumulators for operands of this dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_stat(like, *shape):
    """An empty tensor for an op's statistics (fake kernels): stat_dtype of like's dtype."""
    return like.new_empty(*shape, dtype=stat_dtype(like.dtype))


def widen(*tensors):
    """16-bit tensors in float32 (others, and None, as they are): the products of 16-bit values
    are exact there, as in a tensor-core dot with float32 accumulation."""
    return tuple(t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


def takes_backend(fn):
    """For public functions with a `backend=` argument: check it and run the body under it."""
    params = inspect.signature(fn).parameters
    param = params.get("backend")
    default = "auto" if param is None or param.default is inspect.Parameter.empty else param.default
    # where a positional backend would sit (binding the whole signature at every call costs more
    # than a small decode step's kernel)
    pos = list(params).index("backend") if param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) else None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if "backend" in kwargs:
            kind = kwargs["backend"]
        elif pos is not None and len(args) > pos:
            kind = args[pos]
        else:
            kind = default
        return under(check(kind), fn, *args, **kwargs)
    return run


def under(kind, fn, *args, **kwargs):
    """fn(*args, **kwargs) under prefer(kind). "auto" changes nothing, so no context is entered for
    it: entering one costs a microsecond on every call of a small op."""
    if kind == "auto":
        return fn(*args, **kwargs)
    with prefer(kind):
        return fn(*args, **kwargs)


class Function(torch.autograd.Function):
    """autograd.Function whose backward runs under the preference its forward ran under
    (backward may run later, on another thread, outside the caller's context)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fwd, bwd = cls.__dict__.get("forward"), cls.__dict__.get("backward")
        if fwd is not None:
            fwd = fwd.__func__ if isinstance(fwd, staticmethod) else fwd

            @functools.wraps(fwd)
            def forward(ctx, *args):
                ctx.backend = current()
                return fwd(ctx, *args)
            cls.forward = staticmethod(forward)
        if bwd is not None:
            bwd = bwd.__func__ if isinstance(bwd, staticmethod) else bwd

            @functools.wraps(bwd)
            def backward(ctx, *grads):
                with prefer(getattr(ctx, "backend", "auto")):
                    return bwd(ctx, *grads)
            cls.backward = staticmethod(backward)
