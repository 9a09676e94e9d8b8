"""Quantized embedding search: int8 / binary codes, streaming top-k, float rescoring."""
import pytest
import torch

from conftest import HAS_CPP, backend_param

from hotpath.quant import lowbit as L
from hotpath.quant.embeddings import pack_int8_keys, pack_sign_bits
from hotpath.reference import quant_lowbit as ref


def _data(n, d, Q, seed=0):
    g = torch.Generator().manual_seed(seed)
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    centers = torch.randn(16, d, generator=g, device="cpu")
    keys = centers[torch.randint(0, 16, (n,), generator=g, device="cpu")] + 0.5 * torch.randn(n, d, generator=g,
                                                                                               device="cpu")
    queries = centers[torch.randint(0, 16, (Q,), generator=g, device="cpu")] + 0.5 * torch.randn(Q, d, generator=g,
                                                                                                  device="cpu")
    dev = torch.get_default_device()
    return torch.nn.functional.normalize(keys, dim=1).to(dev), torch.nn.functional.normalize(queries, dim=1).to(dev)


def test_int8_codes():
    x = torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    c = L.quantize_embeddings(x, "int8")
    assert c.codes.tolist() == [[64, -127, 32, 0], [0, 0, 0, 0]]   # rint(0.5 * 127) = 64 (63.5 -> even)
    assert c.scales.tolist() == [pytest.approx(1 / 127), 0.0]
    assert c.packed.numel() == 16 * 4
    # VNNI layout: key j, dim t at [j/16][t/4][j%16][t%4], stored + 128
    assert c.packed[1].item() == 128 - 127 and c.packed[0].item() == 128 + 64 and c.packed[4].item() == 128


def test_binary_codes():
    x = torch.zeros(2, 70)
    x[0, [0, 3, 64, 69]] = 1.0
    x[1, 1] = -1.0
    bits = L.quantize_embeddings(x, "binary").codes
    assert bits.shape == (2, 16) and bits.dtype == torch.uint8
    assert bits[0, 0].item() == 0b1001 and bits[0, 8].item() == 0b100001 and bits[1].eq(0).all()


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("n,d,Q,k", [(1, 8, 1, 1), (59, 24, 3, 5), (97, 100, 17, 10), (1025, 384, 7, 10)])
def test_int8_search_matches_reference(backend, n, d, Q, k):
    if backend == "triton" and n > 100:
        pytest.skip("interpreter: tiny shapes only")
    keys, queries = _data(n, d, Q)
    codes = L.quantize_embeddings(keys, "int8")
    v, i = L.embedding_search(queries, codes, k, backend=backend)
    qq, qstep = ref.quantize_act_int8(queries)
    vr, ir = ref.search_int8(qq.to(torch.int8), qstep, codes.codes, codes.scales, k)
    assert i.shape == (Q, k) and i.dtype == torch.int64 and v.dtype == torch.float32
    assert torch.equal(i, ir)                 # exact int32 scores, ties to the smaller index
    torch.testing.assert_close(v, vr, atol=0, rtol=1e-6)


@pytest.mark.parametrize("backend", backend_param())
@pytest.mark.parametrize("n,d,Q,k", [(1, 8, 1, 1), (59, 24, 3, 5), (97, 130, 17, 10), (1025, 384, 7, 10)])
def test_binary_search_matches_reference(backend, n, d, Q, k):
    if backend == "triton" and n > 100:
        pytest.skip("interpreter: tiny shapes only")
    keys, queries = _data(n, d, Q)
    codes = L.quantize_embeddings(keys, "binary")
    v, i = L.embedding_search(queries, codes, k, backend=backend)
    vr, ir = ref.search_binary(pack_sign_bits(queries), codes.codes, d, k)
    assert torch.equal(v, vr) and torch.equal(i, ir)          # many ties: the index rule decides
    # values are d - 2 * Hamming, i.e. the +-1 dot product
    s = (torch.where(queries > 0, 1.0, -1.0) @ torch.where(keys > 0, 1.0, -1.0).T)
    assert torch.equal(torch.gather(s, 1, i), v)


@pytest.mark.parametrize("backend", backend_param())
def test_ties_keep_smaller_index(backend):
    # 70 keys: three key splits of the Triton top-k under the interpreter, merged by index order
    keys = torch.ones(70, 16)
    keys[3] = -1.0
    codes = L.quantize_embeddings(keys, "int8")
    for c in (codes, L.quantize_embeddings(keys, "binary")):
        _, i = L.embedding_search(torch.ones(2, 16), c, 5, backend=backend)
        assert i.tolist() == [[0, 1, 2, 4, 5]] * 2
        _, i = L.embedding_search(torch.ones(2, 16), c, 69, backend=backend)
        assert i[:, -1].tolist() == [69, 69] and (i != 3).all()


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_rescoring_recall(precision):
    keys, queries = _data(5000, 128, 50, seed=3)
    exact = torch.topk(queries @ keys.T, 10).indices
    codes = L.quantize_embeddings(keys, precision)
    def recall(idx):
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, exact)) / exact.numel()
    _, i0 = L.embedding_search(queries, codes, 10)
    v1, i1 = L.embedding_search(queries, codes, 10, keys, rescore_multiplier=10 if precision == "binary" else 4)
    # binary codes keep 1 bit per dim: on this clustered data they need the rescoring to get anywhere
    assert recall(i1) >= (0.95 if precision == "int8" else 0.5)
    assert recall(i1) >= recall(i0) + (0 if precision == "int8" else 0.2)
    torch.testing.assert_close(v1, torch.gather(queries @ keys.T, 1, i1), atol=1e-5, rtol=1e-5)
    assert bool((v1[:, :-1] >= v1[:, 1:]).all())


def test_single_query_and_devices():
    keys, queries = _data(50, 32, 2)
    codes = L.quantize_embeddings(keys, "int8")
    v, i = L.embedding_search(queries[0], codes, 3)
    v2, i2 = L.embedding_search(queries[:1], codes, 3)
    assert v.shape == (3,) and torch.equal(i, i2[0])
    assert len(codes) == 50 and codes.nbytes() > 0


def test_bad_input():
    keys, queries = _data(20, 16, 2)
    codes = L.quantize_embeddings(keys, "int8")
    with pytest.raises(ValueError, match="precision"):
        L.quantize_embeddings(keys, "int4")
    with pytest.raises(ValueError, match="x must be finite"):
        L.quantize_embeddings(torch.full((2, 4), float("nan")), "int8")
    with pytest.raises(ValueError, match="k must be"):
        L.embedding_search(queries, codes, 21)
    with pytest.raises(ValueError, match="k must be"):
        L.embedding_search(queries, codes, 0)
    with pytest.raises(ValueError, match="queries must have dimension 16"):
        L.embedding_search(torch.randn(2, 8), codes, 3)
    with pytest.raises(TypeError, match="codes"):
        L.embedding_search(queries, keys, 3)
    with pytest.raises(ValueError, match="rescore_with"):
        L.embedding_search(queries, codes, 3, rescore_with=torch.randn(19, 16))
    with pytest.raises(ValueError, match="rescore_multiplier"):
        L.embedding_search(queries, codes, 3, rescore_with=keys, rescore_multiplier=0)


def test_nan_query_gives_nan_values():
    keys, queries = _data(30, 16, 2)
    queries[1, 3] = float("nan")
    v, _ = L.embedding_search(queries, L.quantize_embeddings(keys, "int8"), 3)
    assert bool(torch.isnan(v[1]).all()) and bool(torch.isfinite(v[0]).all())


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_opcheck():
    from hotpath._ops import quant_lowbit as ops
    keys, queries = _data(40, 24, 3)
    c = L.quantize_embeddings(keys, "int8")
    qq, qs = ref.quantize_act_int8(queries)
    torch.library.opcheck(ops.embedding_search_int8.overload, (qq.to(torch.int8), qs, c.codes, c.packed, c.scales, 4))
    b = L.quantize_embeddings(keys, "binary")
    torch.library.opcheck(ops.embedding_search_binary.overload, (pack_sign_bits(queries), b.codes, 24, 4))
    assert torch.equal(pack_int8_keys(c.codes), c.packed)


# ---------------------------------------------------------------- zero-dimensional embeddings

@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_zero_dimension_rejected(precision):
    with pytest.raises(ValueError, match=r"x must have at least one dimension"):
        L.quantize_embeddings(torch.zeros(5, 0), precision)
    codes = L.QuantizedEmbeddings(precision, 0, torch.zeros(5, 0, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes must encode.*d >= 1"):
        L.embedding_search(torch.zeros(2, 0), codes, 1)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("call", [
    "ops.embedding_search_binary(torch.zeros(1, 0, dtype=torch.uint8), torch.zeros(3, 0, dtype=torch.uint8), 0, 1)",
    "ops.embedding_search_int8(torch.zeros(1, 0, dtype=torch.int8), torch.ones(1), torch.zeros(3, 0, dtype=torch.int8),"
    " torch.zeros(0, dtype=torch.uint8), torch.ones(3), 1)",
])
def test_zero_dimension_kernel_raises_instead_of_crashing(call):
    # d = 0 used to kill the process with SIGFPE (a division by the number of 64-bit words):
    # run it in a child process so a crash fails this test instead of the whole session
    import os
    import subprocess
    import sys
    code = ("import torch, hotpath\nfrom hotpath._ops import quant_lowbit as ops\n"
            f"try:\n    {call}\nexcept RuntimeError as e:\n    print('raised', 'd must be >= 1' in str(e))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "raised True" in r.stdout
