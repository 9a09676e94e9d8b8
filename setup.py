"""Build hotpath: the Python package plus the C++ extension hotpath._C.

The extension is compiled ahead of time when torch is importable here (use
`pip install --no-build-isolation .`); otherwise hotpath compiles it just in time on first
use (python/hotpath/_ext.py) from the sources shipped inside the package.
"""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package so the just-in-time build works from an install."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "hotpath", "_csrc")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), dst)


def extension_modules():
    if os.environ.get("HOTPATH_NO_BUILD", "0") == "1":
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    import sys
    sys.path.insert(0, os.path.join(HERE, "python", "hotpath"))
    from _buildflags import cxx_flags, link_flags  # one place for the flags, shared with the JIT build
    sys.path.pop(0)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if torch.version.cuda is not None and CUDA_HOME is not None and cuda_sources:
        ext = CUDAExtension("hotpath._C", sources + cuda_sources, extra_link_args=link_flags(),
                            extra_compile_args={"cxx": cxx_flags(),
                                                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-diag-suppress", "3306"]})
    else:
        ext = CppExtension("hotpath._C", sources, extra_compile_args=cxx_flags(), extra_link_args=link_flags())
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


exts, cmdclass = extension_modules()
cmdclass["build_py"] = BuildPyWithSources

def python_packages():
    """hotpath and every subpackage under python/hotpath."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(HERE, "python", "hotpath")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            found.append(os.path.relpath(dirpath, os.path.join(HERE, "python")).replace(os.sep, "."))
    return sorted(found)


setup(
    packages=python_packages(),
    package_dir={"": "python"},
    ext_modules=exts,
    cmdclass=cmdclass,
)
