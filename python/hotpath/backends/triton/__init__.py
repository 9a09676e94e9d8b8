"""Triton kernels of hotpath, one module per op family (kernel + launcher). Imported lazily:
nothing here runs unless a Triton backend is selected."""
