"""Issue 14 kernels: the quantized GEMM / GEMV launch plans (prefill tiles over M, decode split-K),
the shared-memory budget of every launch configuration, the tiled Hadamard transform, NVFP4 at
the issue's shapes scaled down, bf16 activations on the tensor-core path, and FP8Dynamic.

Triton launchers are called directly (CPU tensors through the interpreter, CUDA tensors compiled
where a GPU is present) and compared with the float64 reference; the integer-accumulating paths
(W8A8, W4A8) bit for bit with the reference, as the CPU kernels are."""
import io

import pytest
import torch
import torch.nn as nn

from conftest import GPU_MODE, HAS_TRITON
import hotpath as hp
from hotpath.quant import (MXFP4, NVFP4, FP8WeightOnly, Int4Dynamic, Int4WeightOnly, Int8Dynamic, Int8WeightOnly,
                           QuantLinear, Ternary, quantize_)
from hotpath.reference import quant_int as ref_int
from hotpath.reference import quant_lowbit as ref_low

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
DEV = "cuda" if GPU_MODE else "cpu"

MS = [1, 3, 17]


def _buffers(cfg, N, K, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=g))
    q = QuantLinear.from_linear(lin, cfg)
    bufs = {k: v.to(DEV) for k, v in q.qbuffers().items()}
    return bufs, (None if q.bias is None else q.bias.detach().to(DEV))


# ------------------------------------------------------------------ shared-memory budget
def test_smem_formula_reproduces_the_h200_failure():
    from hotpath.backends.triton import hadamard as H
    # the untiled kernel: (16, 256) fp32 rows + the whole (256, 256) fp32 matrix
    assert H.fwht_smem((16, 256, 256, 4, 1), 256, 4) == 278528


@pytest.mark.parametrize("limit", [227 * 1024, 99 * 1024, 100 * 1024])
def test_every_planned_config_fits(limit, monkeypatch):
    from hotpath.backends.triton import _qgemm as Q
    from hotpath.backends.triton import hadamard as H
    from hotpath.backends.triton import quant_int as QI
    from hotpath.backends.triton import quant_lowbit as QL
    for block in (16, 32, 64, 128, 256):
        for eb in (4, 8):
            cfg = H.fwht_config(block, eb, limit)
            assert H.fwht_smem(cfg, block, eb) <= limit
    needs = [lambda c: QI.w8a16_smem(c, 2), lambda c: QI.w8a16_smem(c, 4), lambda c: QI.w4a16_smem(c, 2),
             QI.w8a8_smem, QI.w4a8_smem, lambda c: QL.fp4_smem(c, 2), lambda c: QL.fp4_smem(c, 4),
             lambda c: QL.fp8_smem(c, 2), lambda c: QL.fp8_smem(c, 1), QL.ternary_smem]
    monkeypatch.setattr(Q, "interpreter", lambda: False)
    monkeypatch.setattr(Q, "smem_limit", lambda device=None: limit)
    for need in needs:
        cfgs = Q.gemm_configs(need, "cpu")
        assert cfgs and all(need(c) <= limit for c in cfgs)
        # H100 / H200 keep the largest tiles; a 99 KB consumer part drops some but not all
        if limit >= 227 * 1024:
            assert cfgs[0] == Q.GEMM_CONFIGS[0]


def test_smem_limit_defaults():
    from hotpath.backends.triton import _qgemm as Q
    assert Q.smem_limit(None) == 99 * 1024
    assert Q.smem_limit("cpu") == 99 * 1024
    with pytest.raises(RuntimeError, match="shared memory"):
        Q.pick([(128, 128, 64, 8, 3)], lambda c: 10 ** 9, 99 * 1024)


# ------------------------------------------------------------------ Hadamard
@needs_triton
@pytest.mark.parametrize("block", [16, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_tiled_matches_reference(block, dtype):
    from hotpath.backends.triton import hadamard as H
    for M in (1, 3, 17):
        x = torch.randn(M, 2 * block, dtype=dtype, device=DEV)
        s = (1 - 2 * torch.randint(0, 2, (2 * block,))).to(dtype=dtype, device=DEV)
        for inv in (False, True):
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(H.fwht(x, s, block, inv), ref_low.fwht(x, s, block, inv), atol=tol, rtol=tol)


# ------------------------------------------------------------------ every format, launcher vs reference
def _int_case(cfg, M, K, N, bias):
    bufs, b = _buffers(cfg, N, K, bias)
    x = torch.randn(M, K, device=DEV)
    from hotpath.backends.triton import quant_int as QI
    if isinstance(cfg, Int8WeightOnly):
        return QI.int8_weight_only_linear(x, bufs["qweight"], bufs["scale"], b), ref_int.int8_weight_only_linear(
            x, bufs["qweight"], bufs["scale"], b), False
    if isinstance(cfg, Int8Dynamic):
        return (QI.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b),
                ref_int.int8_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["colsum"], b), True)
    if isinstance(cfg, Int4WeightOnly):
        return (QI.int4_weight_only_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b),
                ref_int.int4_weight_only_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b), False)
    return (QI.int4_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b),
            ref_int.int4_dynamic_linear(x, bufs["qweight"], bufs["scale"], bufs["zero"], b), True)


INT_CASES = [(Int8WeightOnly(), 160), (Int8Dynamic(), 160), (Int4WeightOnly(group_size=32), 96),
             (Int4WeightOnly(group_size=64), 256), (Int4Dynamic(group_size=32), 96), (Int4Dynamic(group_size=64), 128)]


@needs_triton
@pytest.mark.parametrize("cfg,K", INT_CASES, ids=lambda v: getattr(v, "__class__", type(v)).__name__ if not isinstance(v, int) else str(v))
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("bias", [True, False])
def test_int_kernels(cfg, K, M, bias):
    N = 37
    y, r, exact = _int_case(cfg, M, K, N, bias)
    assert y.shape == (M, N) and y.dtype == torch.float32
    if exact and not GPU_MODE:
        assert torch.equal(y, r.float())   # exact int32 sums, the CPU kernel's float epilogue
    else:
        torch.testing.assert_close(y, r.float(), atol=2e-5 * K ** 0.5, rtol=1e-5)
