"""torch.library custom ops of hotpath (namespace `hotpath`), one module per op family.

Each op body resolves its backend (python/hotpath/_backend.py) and calls the C++ kernel
(torch.ops.hotpath_cpu.*), the Triton launcher (hotpath.kernels.*) or the reference. Every op
has a fake implementation so torch.compile can trace it.
"""
