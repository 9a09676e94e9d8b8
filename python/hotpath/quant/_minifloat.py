"""Exact encoders / decoders of the small floating-point formats (pure torch).

One generic routine rounds to any sign-exponent-mantissa format: for |x| it takes the binade
e = floor(log2 |x|) (from frexp, exact), clamped below at the smallest normal exponent so the
subnormal range shares the quantum 2^(emin - M); the quantum q = 2^(e - M) is a power of two, so
|x| / q is exact and torch.round (half-to-even) gives round-to-nearest-even. Stochastic rounding
replaces round by floor(|x| / q + u), u ~ U[0, 1) from a seeded generator: unbiased between the
two neighbours. Values above the format's max saturate to +-max (all formats here are used in
saturating mode). Codes are uint8: sign in the top bit of the format's width.

Formats:
  E4M3 (OCP "fn"): bias 7, max 448 (0x7E), NaN = S.1111.111, no infinities; +-inf saturates to +-448.
  E5M2 (OCP):      bias 15, max 57344, inf = S.11111.00, NaN = S.11111.11 (NaN -> 0x7F/0xFF);
                   +-inf stays inf, finite overflow saturates to +-57344.
  E2M1 (FP4):      bias 1, values {0, .5, 1, 1.5, 2, 3, 4, 6}; no NaN / inf (codes 4 bits).
  E8M0 (MX scale): unsigned power of two 2^(c - 127), c in 0..254; 0xFF = NaN.
"""
import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Minifloat:
    name: str
    ebits: int
    mbits: int
    bias: int
    max: float
    has_inf: bool
    nan_code: int  # magnitude code of NaN (without sign); -1 when the format has no NaN

    @property
    def width(self):
        return 1 + self.ebits + self.mbits

    @property
    def emin(self):  # exponent of the smallest normal number
        return 1 - self.bias


E4M3 = Minifloat("e4m3", 4, 3, 7, 448.0, False, 0x7F)
E5M2 = Minifloat("e5m2", 5, 2, 15, 57344.0, True, 0x7F)
E2M1 = Minifloat("e2m1", 2, 1, 1, 6.0, False, -1)
FORMATS = {"e4m3": E4M3, "e5m2": E5M2, "e2m1": E2M1}
ROUNDINGS = ("nearest", "stochastic")


def _generator(seed, device):
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def round_to_format(x: Tensor, fmt: Minifloat, rounding="nearest", seed=0, generator=None) -> Tensor:
    """Round x to the nearest value of fmt (or stochastically), saturating at +-max.

    Computed in float32 (float64 inputs in float64): every step is exact but the final round.
    NaN stays NaN; +-inf saturates unless the format has infinities (E5M2 keeps them).
    """
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dt)
    a = x.abs()
    _, e = torch.frexp(a)                    # a = m * 2^e, m in [0.5, 1): binade exponent e - 1
    e = (e - 1).clamp_min(fmt.emin)
    q = torch.ldexp(torch.ones_like(a), (e - fmt.mbits).to(torch.int32))
    v = a / q                                # exact: q is a power of two inside the float range
    if rounding == "nearest":
        r = torch.round(v)                   # half to even
    elif rounding == "stochastic":
        g = generator if generator is not None else _generator(seed, x.device)
        # drawn where the generator lives (a CPU generator may round CUDA data), then moved
        u = torch.rand(v.shape, generator=g, device=g.device, dtype=dt).to(x.device)
        r = torch.floor(v + u)
    else:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    out = (r * q).clamp_max(fmt.max)
    out = torch.where(torch.isinf(a), torch.full_like(a, float("inf") if fmt.has_inf else fmt.max), out)
    out = torch.where(torch.isnan(a), a, out)
    return torch.copysign(out, x)


def _magnitude_code(a: Tensor, fmt: Minifloat) -> Tensor:
    """|value| (already representable, finite) -> magnitude bits."""
    _, e = torch.frexp(a)
    e = e - 1
    sub = a < 2.0 ** fmt.emin
    e_n = e.clamp_min(fmt.emin)
    mant_n = torch.ldexp(a, (fmt.mbits - e_n).to(torch.int32)) - (1 << fmt.mbits)
    code_n = ((e_n + fmt.bias) << fmt.mbits) + mant_n.to(torch.int64)
    code_s = torch.ldexp(a, torch.full_like(e, fmt.mbits - fmt.emin, dtype=torch.int32)).to(torch.int64)
    return torch.where(sub, code_s, code_n)


def encode(x: Tensor, fmt, rounding="nearest", seed=0, generator=None) -> Tensor:
    """float tensor -> uint8 codes of fmt ("e4m3" | "e5m2" | "e2m1" or a Minifloat)."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    v = round_to_format(x, fmt, rounding, seed, generator)
    a = v.abs()
    finite = torch.isfinite(a)
    mag = _magnitude_code(torch.where(finite, a, torch.zeros_like(a)), fmt)
    if fmt.has_inf:
        mag = torch.where(torch.isinf(a), torch.full_like(mag, ((1 << fmt.ebits) - 1) << fmt.mbits), mag)
    if fmt.nan_code >= 0:
        mag = torch.where(torch.isnan(a), torch.full_like(mag, fmt.nan_code), mag)
    elif torch.isnan(a).any():
        raise ValueError(f"{fmt.name} has no NaN encoding; the input holds NaN")
    sign = torch.signbit(v).to(torch.int64) << (fmt.width - 1)
    return (sign | mag).to(torch.uint8)


def decode_table(fmt) -> Tensor:
    """float32 value of every code 0 .. 2^width - 1 (the lookup table the kernels use)."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    vals = []
    for c in range(1 << fmt.width):
        s = -1.0 if c >> (fmt.width - 1) else 1.0
        mag = c & ((1 << (fmt.width - 1)) - 1)
        ex, m = mag >> fmt.mbits, mag & ((1 << fmt.mbits) - 1)
        if fmt.nan_code >= 0 and mag == fmt.nan_code:
            vals.append(float("nan"))
        elif fmt.has_inf and ex == (1 << fmt.ebits) - 1 and m == 0:
            vals.append(s * float("inf"))
        elif fmt.has_inf and ex == (1 << fmt.ebits) - 1:
            vals.append(float("nan"))
        elif ex == 0:
            vals.append(s * m * 2.0 ** (fmt.emin - fmt.mbits))
        else:
            vals.append(s * (1 + m / (1 << fmt.mbits)) * 2.0 ** (ex - fmt.bias))
    return torch.tensor(vals, dtype=torch.float32)


_TABLES = {}


def decode(codes: Tensor, fmt) -> Tensor:
    """uint8 codes -> float32 values."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    key = (fmt.name, codes.device)
    if key not in _TABLES:
        _TABLES[key] = decode_table(fmt).to(codes.device)
    return _TABLES[key][codes.long() & ((1 << fmt.width) - 1)]


# ---- E8M0: the power-of-two block scale of the MX formats ----

def e8m0_encode_floor_log2(amax: Tensor, emax_elem: int) -> Tensor:
    """OCP MX scale: X = 2^(floor(log2 amax) - emax_elem), clamped to 2^-127 .. 2^127, as E8M0 codes.
    An all-zero block (amax = 0) gets the smallest scale 2^-127 (code 0): its elements are 0 anyway."""
    _, e = torch.frexp(amax.float())
    e = torch.where(amax > 0, e - 1 - emax_elem, torch.full_like(e, -127))
    return (e.clamp(-127, 127) + 127).to(torch.uint8)


def e8m0_decode(codes: Tensor) -> Tensor:
    c = codes.to(torch.int32)
    out = torch.ldexp(torch.ones(c.shape, dtype=torch.float32, device=c.device), c - 127)
    return torch.where(c == 255, torch.full_like(out, float("nan")), out)
