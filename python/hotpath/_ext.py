"""Loading the C++ extension hotpath._C: prebuilt if setup.py compiled it, else just in time.

C++ kernels register themselves with the dispatcher as the CPU (and CUDA) kernels of the ops
declared in python/hotpath/_ops (TORCH_LIBRARY_IMPL(hotpath, CPU, m) in each source file), so
loading the shared library is all that is needed.
"""
import contextlib
import glob
import hashlib
import os
import threading
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_state = {"loaded": None, "how": None, "error": None}


def _source_dir():
    for cand in (os.path.join(_HERE, "_csrc"), os.path.join(_HERE, "..", "..", "csrc")):
        if os.path.isdir(os.path.join(cand, "cpu")):
            return os.path.abspath(cand)
    return None


def cuda_build_possible():
    """CUDA sources are compiled only with a CUDA build of torch and a CUDA toolkit."""
    from torch.utils.cpp_extension import CUDA_HOME
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(src, with_cuda=False):
    found = glob.glob(os.path.join(src, "*.cpp")) + glob.glob(os.path.join(src, "cpu", "*.cpp"))
    if with_cuda:
        found += glob.glob(os.path.join(src, "cuda", "*.cu"))
    return sorted(found)


def _prebuilt():
    hits = glob.glob(os.path.join(_HERE, "_C*.so")) + glob.glob(os.path.join(_HERE, "_C*.pyd"))
    if not hits:
        return None
    newest = max(hits, key=os.path.getmtime)
    src = _source_dir()
    # An in-tree (develop) build older than its sources is stale: rebuild just in time instead.
    if src is not None and os.path.basename(src) == "csrc":
        if any(os.path.getmtime(s) > os.path.getmtime(newest) for s in _sources(src) + glob.glob(os.path.join(src, "cpu", "*.h"))):
            return None
    return newest


def _jit_build():
    from torch.utils.cpp_extension import load
    from ._buildflags import cxx_flags, link_flags

    src = _source_dir()
    if src is None:
        raise RuntimeError("C++ sources not found (neither hotpath/_csrc nor the repository's csrc/)")
    key = hashlib.sha1(f"{torch.__version__}|{os.environ.get('HOTPATH_ARCH', 'native')}|{src}".encode()).hexdigest()[:12]
    default = os.path.join(os.path.expanduser("~"), ".cache", "hotpath", key)
    build_dir = os.environ.get("HOTPATH_BUILD_DIR", default)
    os.makedirs(build_dir, exist_ok=True)
    with_cuda = cuda_build_possible()
    with _build_dir_lock(build_dir):
        load(name="hotpath_C", sources=_sources(src, with_cuda), extra_cflags=cxx_flags(), extra_ldflags=link_flags(),
             extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-diag-suppress", "3306"], with_cuda=with_cuda,
             build_directory=build_dir, is_python_module=False,
             verbose=os.environ.get("HOTPATH_VERBOSE_BUILD") == "1")


@contextlib.contextmanager
def _build_dir_lock(build_dir):
    """Hold an OS lock on build_dir while torch builds there, and drop torch's stale lock file.

    torch marks a build in progress with an empty `lock` file and waits, without end or message,
    for it to disappear. A build killed part way (Ctrl-C on the first import) leaves the file
    behind and every later import hangs. The OS lock is released when its holder dies, so a
    process holding it knows no other hotpath build is running there: a `lock` file it finds is
    stale.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file alone
        yield
        return
    with open(os.path.join(build_dir, "hotpath-build.flock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):
                warnings.warn(f"hotpath: removing the lock file of an interrupted build in {build_dir}",
                              RuntimeWarning, stacklevel=4)
                os.remove(stale)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_extension():
    """Load hotpath._C once; returns True when the C++ kernels are available."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        try:
            if os.environ.get("HOTPATH_DISABLE_CPP") == "1":
                raise RuntimeError("disabled by HOTPATH_DISABLE_CPP=1")
            path = _prebuilt()
            if path is not None:
                torch.ops.load_library(path)
                _state["how"] = "prebuilt"
            else:
                _jit_build()
                _state["how"] = "just-in-time"
            _state["loaded"] = True
        except Exception as exc:  # the reference still works: say so once
            _state.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
            warnings.warn(f"hotpath: C++ extension unavailable ({_state['error'][:300]}); "
                          "CPU ops fall back to the pure-torch reference", RuntimeWarning, stacklevel=3)
    return _state["loaded"]


def extension_status():
    load_extension()
    return dict(_state)
