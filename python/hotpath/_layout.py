"""In a source checkout, kernels/ and benchmarks/ sit at the repository root; installed, they are
hotpath.kernels and hotpath.benchmarks. Make both names importable in either layout."""
import importlib.util
import os
import sys

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def alias_checkout_packages():
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("kernels", "benchmarks"):
        full = f"hotpath.{name}"
        if full in sys.modules or os.path.isdir(os.path.join(here, name)):
            continue
        root = os.path.abspath(os.path.join(_ROOT, name))
        init = os.path.join(root, "__init__.py")
        if not os.path.isfile(init):
            continue
        spec = importlib.util.spec_from_file_location(full, init, submodule_search_locations=[root])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
