"""Launch planning shared by the quantized GEMM / GEMV and Hadamard kernels: the shared-memory
budget of a launch configuration, the device's limit, the configuration lists (autotuned on a GPU,
one fixed configuration in the interpreter) and the tensor-core precision policy.

Shared memory of one program (bytes), what Triton allocates for a K loop feeding tl.dot:

    loop  = num_stages * (BM * BK * a_bytes + BN * BK * b_load_bytes)      pipelined operand loads
          + BN * BK * b_op_bytes                                            the weight tile dequantized
                                                                            in registers, written once
                                                                            in the dot-operand layout
    total = max(loop, BM * BN * out_bytes)                                  the epilogue's layout change
                                                                            reuses the loop's buffers

b_op_bytes = 0 when the loaded tile feeds the dot as it is (no dequantization). A kernel without a
K loop has num_stages = 1. The formula is deliberately an upper bound (Triton may keep one stage
fewer); the untiled Hadamard kernel that failed on an H200 (278,528 B) is
16 * 256 * 4 + 256 * 256 * 4 = 278,528 B by it, exactly.
"""
import os

import torch
import triton
import triton.language as tl

from .pairwise import dot_precision, tune_key
from .target import interpreting, on_gpu, sm_count, smem_limit  # noqa: F401 - smem_limit: hadamard, tests
from ..._ops.linear_out import out_dtype, row_flag  # noqa: F401 - out_dtype: for the launchers (Q.out_dtype)


def smem_bytes(BM, BN, BK, a_bytes, b_load_bytes, num_stages, b_op_bytes=0, out_bytes=4):
    """Shared memory one program of a (BM, BN, BK) dot loop needs (see the module docstring)."""
    loop = num_stages * (BM * BK * a_bytes + BN * BK * b_load_bytes) + BN * BK * b_op_bytes
    return max(loop, BM * BN * out_bytes)


def fits(need, limit):
    return need <= limit


def pick(configs, need, limit):
    """The first configuration whose shared memory `need(cfg)` fits `limit` (configs in order of
    preference, the last the smallest)."""
    for cfg in configs:
        if need(cfg) <= limit:
            return cfg
    raise RuntimeError(f"no launch configuration fits {limit} B of shared memory "
                       f"(smallest needs {need(configs[-1])} B)")


# ------------------------------------------------------------------ precision policy
def compute_dtype(x):
    """(tl dtype name of the dot operands, input_precision) for activations x.

    bf16 / fp16 activations feed the tensor cores as they are (fp32 accumulation). float32
    follows torch's switch as every Triton kernel does (pairwise.dot_precision): TF32 tensor cores
    under set_float32_matmul_precision("high" / "medium") or allow_tf32, IEEE fp32 otherwise and in
    the interpreter."""
    if x.dtype == torch.bfloat16:
        return "bf16", "ieee"
    if x.dtype == torch.float16:
        return "fp16", "ieee"
    return "fp32", dot_precision(torch.float32, x.device) if on_gpu(x) else "ieee"


# ------------------------------------------------------------------ configurations
# (BM, BN, BK, num_warps, num_stages[, ((constexpr, value), ...)]): prefill GEMM candidates,
# best-first, the optional sixth entry being kernel-specific constexprs (meta); every format prunes
# them by its shared-memory formula and the device limit before autotuning.
GEMM_CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 128, 64, 8, 2),
    (64, 64, 64, 4, 3),
    (32, 64, 64, 4, 2),
]
# float32 activations under IEEE precision run the dots as FMAs, which keep each thread's operand
# rows over the whole K step in registers: compiled for sm_90 (`python -m hotpath compilecheck`)
# every configuration above spills there (7-17 KB a thread), so those launches take these (the
# last one, with Int4's fixed K step of 64, is the one that does not spill for it)
FMA_GEMM_CONFIGS = [(32, 64, 32, 4, 2), (64, 32, 32, 8, 2), (32, 32, 32, 8, 2)]
# float32 activations under 3xTF32 hold both operands' high and low parts: compiled for sm_90, 64
# accumulator elements a thread spill 36-680 B (128 x 64 over 4 warps, 128 x 128 over 8), 32 do not
X3_GEMM_CONFIGS = [(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 3), (32, 64, 64, 4, 2)]
# int8 x int8 dots (W8A8): 8-bit operands take twice the K step of the 16-bit configurations for
# the same bytes a row (128-byte rows: the widest shared-memory swizzle, four k32 tensor-core
# steps per tile), and the large tiles fit Hopper's 227 KB (pruned on smaller devices). Compiled
# for sm_90: 128 x 128 x 128 over 4 warps spills 128 B (255 registers: the weight's 4-byte VNNI
# gathers hold many addresses), so it is not listed; 128 x 256 spills 16 B with a bias only. The
# _RUNS entries set the W8A8 kernel's VNNI_RUNS, so this list is that kernel's: W4A8 and Ternary
# widen their packed codes in registers and spill with these tiles (76-1,816 B), and keep GEMM_CONFIGS.
_RUNS = (("VNNI_RUNS", True),)
I8_GEMM_CONFIGS = [
    (128, 256, 128, 8, 3),
    (128, 128, 128, 8, 4),
    (128, 64, 128, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 4, 3),
    (32, 64, 64, 4, 2),
    (128, 256, 128, 8, 3, _RUNS),
    (128, 128, 128, 8, 3, _RUNS),
    (64, 128, 128, 4, 3, _RUNS),
]
FMA_DECODE_BK = 32
# the one configuration the interpreter runs (small tiles: odd test shapes stay cheap)
INTERP_GEMM = (16, 32, 64, 4, 1)
DECODE_MAX_M = 8


def gemm_configs(need, device, path="tc"):
    """Autotune list: GEMM_CONFIGS (FMA_GEMM_CONFIGS for FMA dots, path "fma"; X3_GEMM_CONFIGS for
    3xTF32 ones, "x3"; I8_GEMM_CONFIGS for int8 x int8 ones, "i8") that fit the device's shared
    memory (need(cfg) -> bytes)."""
    if interpreting():
        return [INTERP_GEMM]
    lim = smem_limit(device)
    base = {"tc": GEMM_CONFIGS, "fma": FMA_GEMM_CONFIGS, "x3": X3_GEMM_CONFIGS, "i8": I8_GEMM_CONFIGS}[path]
    ok = [c for c in base if need(c) <= lim]
    return ok or [pick([INTERP_GEMM], need, lim)]


def decode_config(N, K, need, device, BK=128):
    """GEMV (M <= 8) launch: BM = 16 rows (tl.dot's minimum; the padding costs no memory traffic),
    channel blocks narrow enough and split-K deep enough that about four programs per SM stream
    the packed weight once. Returns (BM, BN, BK, num_warps, num_stages, split_k)."""
    if interpreting():
        return (16, 32, 64, 4, 1, 2 if K >= 256 else 1)
    sms = sm_count(device)
    BK = min(BK, max(32, triton.next_power_of_2(K)))
    BN = 64 if N >= 64 * 4 * sms else 32
    n_blocks = triton.cdiv(N, BN)
    split = 1
    while n_blocks * split < 4 * sms and K // (split * 2) >= 4 * BK:
        split *= 2
    lim = smem_limit(device)
    for stages in (4, 3, 2, 1):
        cfg = (16, BN, BK, 4, stages)
        if need(cfg) <= lim:
            return cfg + (split,)
    return pick([(16, 32, 64, 4, 1)], need, lim) + (split,)


def autotuned(kernel, key):
    """Wrap a @triton.jit kernel in triton.autotune whose configs come from the launch's META
    (the wrapper is built per (format, device) by the launcher, so the list is already pruned)."""
    cache = {}

    def get(configs):
        k = tuple(configs)
        if k not in cache:
            cfgs = [triton.Config({"BM": c[0], "BN": c[1], "BK": c[2], **meta(c)}, num_warps=c[3], num_stages=c[4])
                    for c in configs]
            cache[k] = triton.autotune(cfgs, key=tune_key(kernel, key))(kernel)
        return cache[k]
    return get


def meta(cfg):
    """The kernel-specific constexprs of a GEMM configuration (its optional sixth entry)."""
    return dict(cfg[5]) if len(cfg) > 5 and isinstance(cfg[5], tuple) else {}


def m_bucket(M):
    """Autotuning key for M: the next power of two (M itself would retune on every batch size)."""
    return triton.next_power_of_2(max(int(M), 1))


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile), GROUP_M row tiles walking the columns together so
    the weight tiles they share stay in L2."""
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    width = GROUP_M * n_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    return pid_m, pid_n


@triton.jit
def store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS: tl.constexpr, HAS_RF: tl.constexpr):
    """The epilogue every quantized-linear kernel ends with: y (BM, BN) float32, + bias[n], + the
    row flag RF[m] (0, or NaN for a non-finite row of x: _ops/linear_out.py), stored into split
    program_id(1) of Y in Y's dtype (one rounding to bf16 / fp16 there)."""
    mmask = rm < M
    nmask = rn < N
    if HAS_BIAS:
        y += tl.load(B + rn, mask=nmask, other=0.0)[None, :]
    if HAS_RF:
        y += tl.load(RF + rm, mask=mmask, other=0.0)[:, None]
    tl.store(Y + tl.program_id(1) * M * N + rm[:, None] * N + rn[None, :], y, mask=mmask[:, None] & nmask[None, :])


# Prefill strategy. "fused": the GEMM kernels here. "library": torch's library GEMM on operands
# these kernels prepare. For the weight-only formats, the weight is decoded into an (N, K) scratch in
# the activations' dtype by one memory-bound launch, then F.linear (cuBLAS) runs. For FP8Dynamic,
# torch._scaled_mm runs on the per-token E4M3 activations with row-wise scales (bf16 out, as
# torchao's float8 layers do); for Int8Dynamic and Ternary, torch._int_mm on the int8 activation
# codes and the weight codes unpacked to (N, K), then the fused kernels' epilogue (int_mm_prefill).
# At M = 4096, K = 4096, N = 16384 the GEMM is compute-bound, so the library's tiles are what the
# fused kernels would have to match. The decode scratch costs about 45 us of HBM traffic next to a
# 740 us bf16 GEMM. The fused kernels read 4x fewer weight bytes, which is what counts while M is
# small. LIBRARY_MIN_M is an estimate until a GPU run measures both: `bench quant --device cuda`
# prints the two side by side. HOTPATH_QUANT_PREFILL=fused / library forces one (for M > DECODE_MAX_M).
LIBRARY_MIN_M = 1024
PREFILL_MODES = ("auto", "fused", "library")


def prefill_strategy(M, x):
    mode = os.environ.get("HOTPATH_QUANT_PREFILL", "auto") or "auto"
    if mode not in PREFILL_MODES:
        raise ValueError(f"HOTPATH_QUANT_PREFILL must be one of {PREFILL_MODES}, got {mode!r}")
    if M <= DECODE_MAX_M:
        return "fused"
    if mode != "auto":
        return mode
    sixteen = x.dtype in (torch.bfloat16, torch.float16)
    return "library" if sixteen and M >= LIBRARY_MIN_M and not interpreting() else "fused"


# The int8 formats' "library" prefill (Int8Dynamic, Ternary): torch._int_mm (cuBLAS int8 GEMM,
# exact int32 sums) on the activation codes and the weight codes as an (N, K) int8 scratch, then the
# fused kernels' epilogue in one pass over the int32 product, so the result is theirs (and the CPU
# kernels') bit for bit.
_INT_MM_FAILED = set()   # devices where torch._int_mm refused the call once (fused kernel there)


def int_mm_ok(q, N):
    """torch._int_mm's CUDA limits: more than 16 rows, K and N multiples of 8."""
    M, K = q.shape
    return M > 16 and K % 8 == 0 and N % 8 == 0 and str(q.device) not in _INT_MM_FAILED


@triton.jit
def _int_mm_epilogue_kernel(ACC, R, C, B, RF, Y, M, N, HAS_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
                            HAS_RF: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """y = acc * (r[m] * c[n]) (acc * r[m] without C) + bias, the fused kernels' float32 order."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BN)
    rm = (pid // n_tiles) * BM + tl.arange(0, BM)
    rn = (pid % n_tiles) * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    acc = tl.load(ACC + rm[:, None] * N + rn[None, :], mask=mmask[:, None] & nmask[None, :], other=0)
    r = tl.load(R + rm, mask=mmask, other=1.0)
    if HAS_COL:
        y = acc.to(tl.float32) * (r[:, None] * tl.load(C + rn, mask=nmask, other=0.0)[None, :])
    else:
        y = acc.to(tl.float32) * r[:, None]
    store_tile(Y, B, RF, y, rm, rn, M, N, HAS_BIAS, HAS_RF)


def int_mm_prefill(q, w, row_scale, col_scale, bias, y_dtype):
    """q (M, K) int8 codes, w (N, K) int8 contiguous, row_scale (M,), col_scale (N,) or None, bias
    float32 or None -> y (M, N) in y_dtype; None when this torch refuses the call."""
    M, N = q.shape[0], w.shape[0]
    try:
        acc = torch._int_mm(q, w.t())   # (K, N) column-major, as cuBLAS's int8 GEMM wants
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError):
        _INT_MM_FAILED.add(str(q.device))
        return None
    direct = not interpreting()   # the interpreter stores float32 (run_linear's rule)
    y = torch.empty(M, N, dtype=y_dtype if direct else torch.float32, device=q.device)
    BM, BN = 64, 128
    _int_mm_epilogue_kernel[(triton.cdiv(M, BM) * triton.cdiv(N, BN), 1)](
        acc, row_scale, col_scale if col_scale is not None else row_scale, bias if bias is not None else row_scale,
        row_scale, y, M, N, HAS_COL=col_scale is not None, HAS_BIAS=bias is not None, HAS_RF=False, BM=BM, BN=BN)
    return y.to(y_dtype)


def dequantize(kernel, args, N, K, dtype, BN=64, BK=128, **consts):
    """(N, K) weight in `dtype` from a format's dequantization kernel
    kernel(*args, OUT, N, K, **consts, BN=, BK=), one program per (BN, BK) block."""
    out = torch.empty(N, K, dtype=dtype, device=args[0].device)
    if N and K:
        kernel[(triton.cdiv(N, BN), triton.cdiv(K, BK))](*args, out, N, K, **consts, BN=BN, BK=BK)
    return out


def run_linear(kernel, tuner, fmt_args, fmt_consts, bias, x, N, K, need, step=16, fixed_bk=None, split_ok=True,
               extra=(), y_dtype=torch.float32, flag_rows_of=None, dequant=None, int8_dots=False):
    """Launch a quantized-linear kernel with the calling convention

        kernel(*fmt_args, B, RF, Y, M, N, K, K_SPLIT, MB, *extra, HAS_BIAS=, HAS_RF=, **fmt_consts,
               BM=, BN=, BK=, GROUP_M=)

    ending in store_tile. Y is (SPLIT, M, N): split s of the K range [s * K_SPLIT, (s + 1) *
    K_SPLIT) writes Y[s]; with one split Y is the output itself, in y_dtype (_ops/linear_out.py),
    else float32 partials summed here (deterministic, no atomics) before the bias and the cast.
    flag_rows_of: the activations whose non-finite rows make NaN rows (RF = linear_out.row_flag);
    None where the format's per-token scale is NaN there already.
    dequant: dtype -> the (N, K) weight (weight-only formats), for the "library" prefill strategy.
    Decode (M <= DECODE_MAX_M) and the interpreter get one planned configuration; prefill GEMMs
    are autotuned over the configurations that fit the device's shared memory (need(cfg)).
    fixed_bk: the K step the format's layout imposes (it replaces BK of every configuration).
    int8_dots: the W8A8 kernel's int8 x int8 dots (its prefill GEMMs take I8_GEMM_CONFIGS)."""
    M = x.shape[0]
    dev = x.device
    fp32 = fmt_consts.get("DT") is tl.float32
    fma = fp32 and fmt_consts.get("PREC") == "ieee"
    path = "fma" if fma else ("x3" if fp32 and fmt_consts.get("PREC") == "tf32x3" else "i8" if int8_dots else "tc")
    rf = row_flag(flag_rows_of) if flag_rows_of is not None else None
    if dequant is not None and prefill_strategy(M, x) == "library":
        # a NaN row of x is a NaN row of the GEMM: the flag goes on x (M x K), not on y
        xs = x if rf is None else x + rf[:, None].to(x.dtype)
        y = torch.nn.functional.linear(xs, dequant(x.dtype), None if bias is None else bias.to(x.dtype))
        return y.to(y_dtype)

    def fix(c):
        return c if fixed_bk is None else (c[0], c[1], fixed_bk) + tuple(c[3:])

    def need_fixed(c):
        return need(fix(c))

    def launch(kern, grid, split, k_split, **meta):
        # the interpreter stores float32 (its bf16 / fp16 stores are not the GPU's rounding)
        direct = split == 1 and not interpreting()
        y = torch.empty(split, M, N, dtype=y_dtype if direct else torch.float32, device=dev)
        kern[grid](*fmt_args, bias if bias is not None else x, rf if rf is not None else x, y, M, N, K, k_split,
                   m_bucket(M), *extra, HAS_BIAS=bias is not None and split == 1, HAS_RF=rf is not None,
                   **fmt_consts, GROUP_M=8, **meta)
        if split == 1:
            return y[0] if direct else y[0].to(y_dtype)
        out = y.sum(0)
        return (out if bias is None else out + bias).to(y_dtype)

    if M <= DECODE_MAX_M or interpreting():
        if M <= DECODE_MAX_M:
            BM, BN, BK, warps, stages, split = fix(decode_config(N, K, need_fixed, dev,
                                                                 BK=FMA_DECODE_BK if fma else 128))
            consts = {}
        else:
            cfg = pick([fix(INTERP_GEMM)], need, smem_limit(dev))
            (BM, BN, BK, warps, stages), split, consts = cfg[:5], 1, meta(cfg)
        if not split_ok:
            split = 1
        k_split = triton.cdiv(triton.cdiv(K, split), max(BK, step)) * max(BK, step)
        split = triton.cdiv(K, k_split)
        grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN), split)
        return launch(kernel, grid, split, k_split, BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages,
                      **consts)
    cfgs = [fix(c) for c in gemm_configs(need_fixed, dev, path)]
    tuned = tuner(tuple(dict.fromkeys(cfgs)))

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]), 1)
    return launch(tuned, grid, 1, K)


# ------------------------------------------------------------------ activations
_TL = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
KEY = ["MB", "N", "K", "PREC"]   # autotune key of the quantized GEMM / GEMV kernels (those they take)


def _x_and_policy(x):
    """Activations as the kernels read them (float32 / bf16 / fp16 contiguous) and (DT, PREC, bytes)."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or interpreting():
        x = x.float()   # the interpreter's bf16 / fp16 tl.dot is wrong: it computes in float32
    dt, prec = compute_dtype(x)
    return x.contiguous(), _TL[dt], prec, _BYTES[dt]
