"""The ops of hotpath (namespace `hotpath`), one module per op family.

Each op is declared once (hotpath.backends.op: schema, fake implementation, and the reference as
its default kernel); C++, CUDA and Triton kernels register for their devices from their own
places. See hotpath/backends/__init__.py for how a call finds its kernel.
"""
