"""Quantized embedding search: int8 or binary codes, streaming top-k, optional float rescoring.

quantize_embeddings(x, "int8"): per-row symmetric int8, code = rint(x * 127 / amax_row), with the
row's step amax / 127 kept as a float32 scale; scores are int8 dot products (exact in int32)
times the key's step (the query's step, constant per query, multiplies the returned values only).
quantize_embeddings(x, "binary"): one bit per dimension, set where x > 0 (sentence-transformers'
convention), packed little-endian into 64-bit words; the score of a key is the dot product of
the +-1 vectors, d - 2 * Hamming distance.
embedding_search(queries, codes, k, rescore_with=None): top-k keys for each query by the code
score; with rescore_with (the float keys), the top k * rescore_multiplier candidates are
rescored with float32 dot products and the best k returned (values are then float scores).
Ties rank the smaller index first.
"""
import torch
from torch import Tensor

from .. import _validate as V
from .. import backends
from .._ops import quant_lowbit as ops
from . import packing as P

PRECISIONS = ("int8", "binary")


def pack_int8_keys(codes: Tensor) -> Tensor:
    """(n, d) int8 -> flat uint8 [ceil(n/16)][ceil(d/4)][16][4] holding code + 128 (the kernel's VNNI layout)."""
    n, d = codes.shape
    n16, d4 = (n + 15) // 16, (d + 3) // 4
    u = torch.full((n16 * 16, d4 * 4), 128, dtype=torch.uint8, device=codes.device)
    u[:n, :d] = (codes.to(torch.int16) + 128).to(torch.uint8)
    return u.reshape(n16, 16, d4, 4).permute(0, 2, 1, 3).contiguous().reshape(-1)


def pack_sign_bits(x: Tensor) -> Tensor:
    """(n, d) float -> (n, ceil(d/64) * 8) uint8, bit t of byte b = [x[:, 8b + t] > 0]."""
    n, d = x.shape
    B = (d + 63) // 64 * 8
    bits = torch.zeros(n, B * 8, dtype=torch.uint8, device=x.device)
    bits[:, :d] = (x > 0).to(torch.uint8)
    weights = (1 << torch.arange(8, device=x.device)).to(torch.uint8)
    return (bits.reshape(n, B, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8).contiguous()


class QuantizedEmbeddings:
    """Codes of n embeddings of dimension d: int8 (codes (n, d), scales (n,), the kernel's packed
    copy) or binary (bits (n, ceil(d/64) * 8) uint8)."""

    def __init__(self, precision, dim, codes, scales=None, packed=None):
        self.precision, self.dim, self.codes, self.scales, self.packed = precision, dim, codes, scales, packed

    def __len__(self):
        return self.codes.shape[0]

    @property
    def device(self):
        return self.codes.device

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.packed) if t is not None)

    def __repr__(self):
        return f"QuantizedEmbeddings({self.precision}, n={len(self)}, dim={self.dim})"


def _quantize_rows_int8(x):
    q, step = P.quantize_act_int8(x)
    return q.to(torch.int8).contiguous(), step.contiguous()


def quantize_embeddings(x: Tensor, precision: str = "int8") -> QuantizedEmbeddings:
    """Quantize (n, d) float embeddings to "int8" or "binary" codes (see the module docstring)."""
    V.tensor("x", x, ndims=(2,))
    V.one_of("precision", precision, PRECISIONS)
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one dimension per embedding (d >= 1), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (a NaN / inf embedding has no code)")
    if precision == "int8":
        codes, scales = _quantize_rows_int8(x)
        return QuantizedEmbeddings("int8", x.shape[1], codes, scales, pack_int8_keys(codes))
    return QuantizedEmbeddings("binary", x.shape[1], pack_sign_bits(x))


@backends.takes_backend
def embedding_search(queries: Tensor, codes: QuantizedEmbeddings, k: int, rescore_with=None, *,
                     rescore_multiplier: int = 4, backend="auto"):
    """Top-k keys per query over quantized codes -> (values (Q, k) float32, indices (Q, k) int64).

    queries: (Q, d) or (d,) float. codes: from quantize_embeddings. rescore_with: optional (n, d)
    float keys; then the top k * rescore_multiplier candidates by code score are rescored with
    float32 dot products. Values: int8 -> approximate dot products; binary -> d - 2 * Hamming;
    rescored -> float dot products.
    """
    V.tensor("queries", queries, ndims=(1, 2))
    if not isinstance(codes, QuantizedEmbeddings):
        raise TypeError(f"codes must come from quantize_embeddings, got {type(codes).__name__}")
    if codes.dim < 1:
        raise ValueError(f"codes must encode embeddings of dimension d >= 1, got d = {codes.dim}")
    single = queries.dim() == 1
    q = queries.unsqueeze(0) if single else queries
    if q.shape[1] != codes.dim:
        raise ValueError(f"queries must have dimension {codes.dim}, got shape {tuple(queries.shape)}")
    if q.device != codes.device:
        raise ValueError(f"queries on {q.device} but codes on {codes.device}")
    n = len(codes)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of keys), got {k!r}")
    if isinstance(rescore_multiplier, bool) or not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
        raise ValueError(f"rescore_multiplier must be an int >= 1, got {rescore_multiplier!r}")
    if rescore_with is not None:
        V.tensor("rescore_with", rescore_with, ndims=(2,))
        if tuple(rescore_with.shape) != (n, codes.dim):
            raise ValueError(f"rescore_with must have shape ({n}, {codes.dim}), got {tuple(rescore_with.shape)}")
    kc = min(n, k * rescore_multiplier) if rescore_with is not None else k
    qf = q.float().contiguous()
    if codes.precision == "int8":
        qq, qstep = _quantize_rows_int8(qf)
        vals, idx = ops.embedding_search_int8(qq, qstep, codes.codes, codes.packed, codes.scales, kc)
    else:
        vals, idx = ops.embedding_search_binary(pack_sign_bits(qf), codes.codes, codes.dim, kc)
    if rescore_with is not None:
        cand = rescore_with[idx.reshape(-1)].reshape(idx.shape[0], kc, codes.dim).float()
        s = torch.bmm(cand, qf.unsqueeze(-1)).squeeze(-1)
        vals, pos = P.topk_desc(s, k)
        idx = torch.gather(idx, 1, pos)
    if single:
        vals, idx = vals[0], idx[0]
    return vals, idx
