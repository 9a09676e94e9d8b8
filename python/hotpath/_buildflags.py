"""Compiler flags for hotpath._C, shared by setup.py and the just-in-time build.

The extension is built for the host CPU (-march=native): the build happens on the machine that
runs it (pip install or first use), so AVX-512 is used where present and never assumed where
not. HOTPATH_ARCH overrides the -march value (e.g. "x86-64-v3" for a portable AVX2 build).
OpenMP is required so at::parallel_for runs on torch's thread pool (torch.set_num_threads).
"""
import os
import platform


def cxx_flags():
    arch = os.environ.get("HOTPATH_ARCH", "native")
    flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-Wno-unused-function"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append(f"-march={arch}" if platform.machine() in ("x86_64", "AMD64") else f"-mcpu={arch}")
    return flags


def link_flags():
    return ["-fopenmp"]
