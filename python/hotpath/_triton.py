"""Access to the Triton kernels (hotpath.backends.triton), imported only when a Triton backend runs."""
import importlib


def kernels(module):
    return importlib.import_module(f"hotpath.backends.triton.{module}")
