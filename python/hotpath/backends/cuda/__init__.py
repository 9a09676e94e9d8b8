"""CUDA-device kernels that pick between CUDA C++ and Triton by shape (bitsandbytes-style
backends/cuda). CUDA C++ kernels that serve every shape of an op register from C++ directly."""
