"""`python -m hotpath compilecheck`: every Triton kernel compiled for a described GPU, no GPU needed.

The interpreter checks what the kernels compute, not whether they compile for a GPU, nor what
they cost there. This command compiles them for real with Triton's own GPU compiler and ptxas
(both ship in the triton wheel), for the GPU a `Target` describes (target.py): the H200 of the
speed issues, an A100, consumer Ada and Blackwell cards.

How: a compile-only Triton driver stands in for the CUDA one and `target.stand_in(...)` makes the
launchers read the target's shared memory, SM count and compute capability, so that they pick the
configurations they would pick on that GPU. The public API then runs at the benchmarks' problem
sizes on CPU tensors with backend="triton" (float32 under 3xTF32, TF32 and IEEE, bf16 where the speed
issues time bf16). Every launch compiles its kernel (an autotuner compiles each configuration it
would time) and records its resources; nothing runs on a device, so the outputs are never
computed and the numbers the API returns are meaningless.

Per compiled kernel: registers per thread, spills (ptxas -v), shared memory against the target's
limit, and SASS opcode counts that show whether the tensor cores (HMMA / HGMMA / IMMA / IGMMA /
QGMMA) and the exp2 unit (MUFU.EX2) are used. Exit status 1 when a kernel fails to compile, needs
more shared memory than the target has, or when a launch has no configuration free of register
spills (a fixed launch has one configuration; an autotuned one times its candidates on the GPU and
drops spilling ones by their time, so those are only reported).

Each target runs in its own process (Triton caches the target per kernel).

`--warm` (what `gpucheck` runs beside the GPU-mode tests) compiles the same launches for the GPU
of the machine it runs on into Triton's ordinary cache, reading back nothing: a compiled kernel's
cache key is its source, specialization, options and target, none of which depend on the driver
that asked for it, so the benchmark that follows finds its kernels and autotuning candidates
compiled instead of compiling them one after another in its one process. `--shard I/N` takes
every N-th case, so that N processes share the work.
"""
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

FAMILIES = ("pairwise", "ot", "contrastive", "quant")
_SASS_OPS = ("HGMMA", "HMMA", "IGMMA", "IMMA", "QGMMA", "MUFU.EX2", "FFMA", "DFMA")


# ---------------------------------------------------------------- the compile-only driver
class _Props:
    def __init__(self, t):
        self.t = t

    def get_device_properties(self, dev):
        return {"max_shared_mem": self.t.smem, "multiprocessor_count": self.t.sms, "max_num_regs": 65536,
                "warpSize": 32}


class CompileOnlyDriver:
    """What Triton's JIT asks of its driver, for a described GPU: the target to compile for and a
    benchmarker that compiles instead of timing (every autotuned configuration compiles)."""

    def __init__(self, t):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", t.arch, 32)
        self.utils = _Props(t)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=0):
        return divmod(self.target.arch, 10)

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def get_device_interface(self):
        import torch
        return torch.cuda

    def get_benchmarker(self):
        def bench(fn, quantiles=None, **kw):
            fn()
            return [1.0, 1.0, 1.0] if quantiles else 1.0
        return bench

    def get_empty_cache_for_benchmark(self):
        import torch
        return torch.empty(1)

    def clear_cache(self, cache):
        pass


# ---------------------------------------------------------------- resources of a compiled kernel
def _tool(name):
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resources(cubin):
    """{regs, stack, static_shared, local, sass: {opcode: count}} of a cubin (None where the tools
    that read it are missing)."""
    out = {"regs": None, "stack": None, "static_shared": None, "local": None, "sass": {}}
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return out
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = _RES.search(res)
        if m:
            out.update(regs=int(m[1]), stack=int(m[2]), static_shared=int(m[3]), local=int(m[4]))
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True).stdout
    for op in _SASS_OPS:
        n = len(re.findall(r"\b" + re.escape(op) + r"[\s.]", sass))
        if n:
            out["sass"][op] = n
    return out


_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def spills(ptxas_log):
    """(stack frame, spill stores, spill loads) bytes from ptxas -v output; None if absent."""
    m = _SPILL.search(ptxas_log or "")
    return tuple(int(v) for v in m.groups()) if m else None


@dataclasses.dataclass
class Record:
    case: str
    kernel: str
    params: dict
    num_warps: int
    num_stages: int
    shared: int
    regs: int = None
    local: int = None
    stack: int = None
    spill_stores: int = None
    spill_loads: int = None
    launch: int = 0          # records of one autotuned launch share it; a fixed launch has its own
    sass: dict = dataclasses.field(default_factory=dict)
    compile_s: float = 0.0


@contextlib.contextmanager
def compile_only(t, records, case_name, read=True):
    """Inside: launches compile their kernel for target t and record it (read=False: without its
    registers, spills and SASS); nothing runs."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    orig, orig_tune = JITFunction.run, Autotuner.run
    seen = {}
    launch = [0, None]   # launches so far, the autotuned one in progress

    def tune(self, *args, **kw):
        launch[0] += 1
        outer, launch[1] = launch[1], launch[1] or launch[0]
        try:
            return orig_tune(self, *args, **kw)
        finally:
            launch[1] = outer

    def run(self, *args, grid, warmup, **kw):
        t0 = time.time()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):   # TRITON_DUMP_PTXAS_LOG: ptxas -v, printed per compile
            kernel = orig(self, *args, grid=grid, warmup=True, **kw)
        key = getattr(kernel, "hash", None) or id(kernel)
        if key not in seen:
            md = kernel.metadata
            params = {k: (v if isinstance(v, (int, bool, float, str)) else str(v)) for k, v in kw.items() if k.isupper()}
            if launch[1] is None:
                launch[0] += 1
            rec = Record(case_name[0], self.__name__, params, md.num_warps, md.num_stages, md.shared,
                         compile_s=round(time.time() - t0, 2), launch=launch[1] or launch[0])
            if read:
                r = resources(kernel.asm["cubin"])
                rec.regs, rec.local, rec.stack, rec.sass = r["regs"], r["local"], r["stack"], r["sass"]
                sp = spills(log.getvalue())
                if sp:
                    rec.stack, rec.spill_stores, rec.spill_loads = sp
            seen[key] = rec
            records.append(rec)
        return kernel

    JITFunction.run, Autotuner.run = run, tune
    try:
        yield
    finally:
        JITFunction.run, Autotuner.run = orig, orig_tune


# ---------------------------------------------------------------- the cases (benchmark sizes)
def _cases(family, small):
    """[(name, fn)]: public API calls at the speed issues' sizes (small=True: a few thousand
    points, for tests; the configurations then differ where they depend on size)."""
    import torch
    import hotpath as hp
    from hotpath.benchmarks import _gpu

    def n_(big, lo=256):
        return min(big, lo) if small else big

    def rnd(*shape, dtype=torch.float32, grad=False):
        return torch.rand(*shape, dtype=dtype).requires_grad_(grad)

    cases = []
    if family == "pairwise":
        def lse_d3(values):
            n = n_(100_000)
            x, y = rnd(n, 3, grad=True), rnd(n, 3, grad=True)
            v = rnd(n, 3) if values else None
            lse = hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean", values=v)
            (lse[0] if isinstance(lse, tuple) else lse).sum().backward()

        def lse_d64(metric, dtype):
            n = n_(65_536)
            x, y = rnd(n, 64, dtype=dtype, grad=True), rnd(n, 64, dtype=dtype, grad=True)
            hp.pairwise_lse(x, y, scale=0.1, metric=metric).sum().backward()

        def lse_f64():
            x, y = rnd(1000, 3, dtype=torch.float64, grad=True), rnd(900, 3, dtype=torch.float64, grad=True)
            hp.pairwise_lse(x, y, scale=0.5, metric="sqeuclidean").sum().backward()

        cases += [("pairwise_lse d=3 fwd+bwd", lambda: lse_d3(False)),
                  ("pairwise_lse d=3 k=3 values fwd+bwd", lambda: lse_d3(True)),
                  ("pairwise_lse dot d=64 fwd+bwd", lambda: lse_d64("dot", torch.float32)),
                  ("pairwise_lse sqeuclidean d=64 fwd+bwd", lambda: lse_d64("sqeuclidean", torch.float32)),
                  ("pairwise_lse dot d=64 bf16 fwd+bwd", lambda: lse_d64("dot", torch.bfloat16)),
                  ("pairwise_lse float64 d=3 fwd+bwd", lse_f64)]
    elif family == "ot":
        def samples(n, d):
            x, y = rnd(n, d, grad=True), rnd(n, d) * 0.8 + 0.2
            hp.ot.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True)(x, y).backward()

        def many():
            x, y = rnd(n_(1024, 8), 64, 2), rnd(n_(1024, 8), 64, 2) * 0.8 + 0.2
            hp.ot.sinkhorn(x, y, blur=0.1, max_iter=100).loss.sum()

        def dense():
            n = n_(2000)
            a = torch.full((n,), 1.0 / n)
            hp.ot.sinkhorn2(a, a, torch.rand(n, n), 0.05, numItermax=30, stopThr=0.0)

        def sliced():
            n = n_(1_000_000, 4096)
            x, y = rnd(n, 3, grad=True), rnd(n, 3)
            theta = hp.ot.random_projections(3, 256, generator=torch.Generator().manual_seed(0))
            hp.ot.sliced_wasserstein(x, y, projections=theta).backward()

        def w1d():
            u, v = rnd(1000, 8, grad=True), rnd(900, 8)
            hp.ot.wasserstein_1d(u, v).sum().backward()
            # last: the histogram launcher checks the totals its kernel reports, which compile-only
            # launches never write
            P, Q = rnd(64, n_(8192)), rnd(64, n_(8192))
            hp.ot.histogram_wasserstein(P / P.sum(-1, keepdim=True), Q / Q.sum(-1, keepdim=True))

        def assignment():
            hp.ot.linear_sum_assignment(torch.rand(16, 128, 128))

        cases += [("SamplesLoss d=3 fwd+bwd", lambda: samples(n_(10_000), 3)),
                  ("SamplesLoss d=64 fwd+bwd", lambda: samples(n_(10_000), 64)),
                  ("sinkhorn many small problems", many),
                  ("sinkhorn2 dense", dense),
                  ("sliced_wasserstein D=3 L=256 fwd+bwd", sliced),
                  ("histogram / 1-D wasserstein", w1d),
                  ("linear_sum_assignment batched", assignment)]
    elif family == "contrastive":
        C = hp.contrastive

        def clip(kind, dtype):
            B = n_(32_768)
            x, y = rnd(B, 512, dtype=dtype, grad=True), rnd(B, 512, dtype=dtype, grad=True)
            loss = C.ClipLoss() if kind == "clip" else C.SigLipLoss()
            bias = None if kind == "clip" else torch.tensor(-10.0)
            loss(x, y, torch.tensor(10.0), bias).backward()

        def metric(kind):
            B = n_(32_768)
            x, lab = rnd(B, 256, grad=True), torch.randint(0, 100, (B,))
            (C.supcon_loss if kind == "supcon" else C.triplet_loss)(x, lab).backward()

        def topk(dtype):
            q, k = rnd(n_(10_000), 384, dtype=dtype), rnd(n_(1_000_000, 4096), 384, dtype=dtype)
            C.topk_similarity(q, k, 10)

        for dt, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            cases += [(f"ClipLoss d=512 {tag} fwd+bwd", lambda dt=dt: clip("clip", dt)),
                      (f"SigLipLoss d=512 {tag} fwd+bwd", lambda dt=dt: clip("siglip", dt)),
                      (f"topk_similarity d=384 k=10 {tag}", lambda dt=dt: topk(dt))]
        def chunk_epilogues():
            # the "library" strategy's Triton epilogues, on one 64 MB chunk of B = 32,768 scores
            # (the strategy runs on CUDA tensors only, so the API calls above never reach them)
            from hotpath.backends.triton import contrastive_chunks as K
            for dt in (torch.float32, torch.float64):
                m = n_(32_768)
                s, r, c = torch.empty(n_(512, 64), m, dtype=dt), torch.zeros(n_(512, 64), dtype=dt), torch.zeros(m, dtype=dt)
                for diag0 in (None, 0):
                    K.chunk_lse_(s, 10.0, diag0, r, (c, c.clone()))
                    K.softmax_weights_(s, 10.0, diag0, r, r, c, c)
                for softplus, sigmoid in ((True, False), (False, True), (True, True)):
                    K.siglip_rows_(s, 10.0, -10.0, softplus, sigmoid)

        cases += [("supcon_loss d=256 fwd+bwd", lambda: metric("supcon")),
                  ("triplet_loss batch_hard d=256 fwd+bwd", lambda: metric("triplet")),
                  ("library sweeps' chunk epilogues", chunk_epilogues)]
    elif family == "quant":
        q = hp.quant
        K, N = (256, 512) if small else (_gpu.QUANT_K, _gpu.QUANT_N)
        M = 64 if small else _gpu.QUANT_M
        w = torch.randn(N, K) * 0.02
        fmts = [("Int8WeightOnly", q.Int8WeightOnly()), ("Int8Dynamic", q.Int8Dynamic()),
                ("Int4WeightOnly g128", q.Int4WeightOnly(group_size=128)),
                ("Int4Dynamic g128", q.Int4Dynamic(group_size=128)), ("FP8WeightOnly", q.FP8WeightOnly()),
                ("FP8Dynamic", q.FP8Dynamic()), ("MXFP4", q.MXFP4()), ("NVFP4", q.NVFP4()),
                ("NVFP4 no Hadamard", q.NVFP4(hadamard=False)), ("Ternary", q.Ternary())]

        quantized = {}

        def linear(cfg):
            # once per case, not per precision, and with round-to-nearest scales: the kernels do
            # not depend on the scales, and the int4 formats' clipping search takes half a minute
            # at this size on a CPU
            if "scale_method" in {f.name for f in dataclasses.fields(cfg)}:
                cfg = dataclasses.replace(cfg, scale_method="rtn")
            qb = quantized.get(repr(cfg))
            if qb is None:
                qb = quantized[repr(cfg)] = cfg.quantize_weight(w)
            # the "library" prefill of FP8Dynamic / Int8Dynamic / Ternary is torch's GEMM (it would run
            # on the CPU here); the int8 formats' own kernels of it are compiled on a small M below
            torch_gemm = type(cfg) in (q.FP8Dynamic, q.Int8Dynamic, q.Ternary)
            labels = _gpu.library_prefill(cfg) if not torch_gemm else None
            for m in (1, 8, M):
                for dt in (torch.bfloat16, torch.float32):
                    # both prefill strategies where both are our kernels (labels)
                    both = m == M and dt == torch.bfloat16
                    for mode in (("fused", "library") if both and labels else ("fused",) if both else ("auto",)):
                        with _gpu.env("HOTPATH_QUANT_PREFILL", mode):
                            cfg.linear(torch.randn(m, K, dtype=dt), qb, None)
            if type(cfg) in (q.Int8Dynamic, q.Ternary):
                with _gpu.env("HOTPATH_QUANT_PREFILL", "library"):
                    cfg.linear(torch.randn(32, K, dtype=torch.bfloat16), qb, None)

        def search():
            keys = torch.randn(n_(1_000_000, 4096), 384)
            for prec in ("int8", "binary"):
                q.embedding_search(torch.randn(n_(1000), 384), q.quantize_embeddings(keys, prec), 10, rescore_with=keys)

        cases += [(f"{name} linear", lambda cfg=cfg: linear(cfg)) for name, cfg in fmts]
        cases += [("int8 / binary embedding search", search)]
    return cases


@contextlib.contextmanager
def no_cpu_gemms():
    """F.linear returns an uninitialized output of its shape: the quantized layers' "library"
    prefill multiplies (4096 x 4096) by (4096 x 16384) there, on the CPU tensors standing in for
    GPU ones, half a minute a call on one core, for an output nobody reads (the kernels around it
    compile but do not run)."""
    import torch
    real = torch.nn.functional.linear

    def linear(x, w, bias=None):
        return torch.empty(*x.shape[:-1], w.shape[0], dtype=x.dtype)
    torch.nn.functional.linear = linear
    try:
        yield
    finally:
        torch.nn.functional.linear = real


# float32 dots in 3xTF32 (torch's default precision), TF32, and IEEE FMAs (the opt-out)
PRECISIONS = (("highest", ""), ("high", ""), ("highest", "ieee"))


def run_target(name, families=FAMILIES, small=False, log=print, only=None, warm=False, shard=None):
    """Compile every case of `families` for TARGETS[name] ("local": this machine's GPU);
    (records, failures, notes). warm: into Triton's cache, reading nothing back, in the two float32
    precisions the benchmark times; shard (i, n): every n-th case from the i-th."""
    os.environ["TRITON_INTERPRET"] = "0"
    import torch
    import triton
    from hotpath import backends
    from hotpath.backends.triton import target as T
    from hotpath.benchmarks import _gpu

    t = T.local_target() if name == "local" else T.TARGETS[name]
    triton.runtime.driver.set_active(CompileOnlyDriver(t))
    records, failures = [], []
    case = [""]
    todo = [(fam, cname, fn) for fam in families for cname, fn in _cases(fam, small) if not only or only in cname]
    if shard is not None:
        todo = todo[shard[0]::shard[1]]
    with T.stand_in(t), backends.prefer("triton"), compile_only(t, records, case, read=not warm), no_cpu_gemms():
        for fam, cname, fn in todo:
            case[0] = f"{fam}: {cname}"
            for prec, fp32_dot in PRECISIONS[:2] if warm else PRECISIONS:
                before = len(records)
                t0 = time.time()
                torch.set_float32_matmul_precision(prec)
                if fp32_dot:
                    prec += f", HOTPATH_FP32_DOT={fp32_dot}"
                try:
                    with _gpu.env("HOTPATH_FP32_DOT", fp32_dot or None):
                        fn()
                    err = None
                except Exception as exc:  # noqa: BLE001 - a compile error, or garbage outputs downstream
                    err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                    if _is_compile_error(exc):
                        failures.append(f"{case[0]} ({prec}): compile error: {err}")
                        log(traceback.format_exc(limit=-3))
                finally:
                    torch.set_float32_matmul_precision("highest")
                log(f"[{t.name}] {case[0]} (fp32 matmul precision {prec}): {len(records) - before} new kernels, "
                    f"{time.time() - t0:.1f} s" + (f"; stopped: {err}" if err else ""))
    if warm:
        return records, failures, []
    notes = []
    for (case_name, kernel, spec), recs in groups(records).items():
        spilled = [r for r in recs if spills_of(r)]
        if spilled and len(spilled) == len(recs) and max(map(spills_of, spilled)) > SPILL_TOLERANCE_B:
            # no configuration the launcher would run is free of spills (a fixed launch has one)
            failures.append(f"{case_name}: {kernel} {dict(spec)}: every configuration spills: "
                            + "; ".join(_describe(r) for r in spilled))
        elif spilled:
            notes.append(f"{case_name}: {kernel} {dict(spec)}: the autotuner also compiles spilling "
                         + "; ".join(_describe(r) for r in spilled))
        for r in recs:
            if r.shared > t.smem:
                failures.append(f"{case_name}: {kernel} {r.params} needs {r.shared} B shared memory > {t.smem} B")
    return records, failures, notes


# spills up to this many bytes a thread are noted, not failed: a stray 4-8 B slot (the NVFP4
# decode kernel has one at 80 registers: no register pressure) costs one L1-resident access
SPILL_TOLERANCE_B = 16


def spills_of(r):
    return r.spill_stores if r.spill_stores is not None else (r.local or 0)


def _describe(r):
    tiles = {k: v for k, v in r.params.items() if (k.startswith("BLOCK") or k in _CANDIDATE_PARAMS) and k != "GROUP_M"}
    return f"{tiles} w{r.num_warps} s{r.num_stages}: {spills_of(r)} B ({r.regs} regs)"


# constexprs that only tell one autotuning candidate from another: tiles, and the alternative
# loop forms the autotuner times against each other (the W8A8 weight read, the flattened sweeps)
_CANDIDATE_PARAMS = ("BM", "BN", "BK", "GROUP_M", "VNNI_RUNS", "FLAT")


def groups(records):
    """{(case, kernel, specialization): [records]}: the configurations one launch chose among
    (one for a fixed launch; the specialization: every constexpr but the tile sizes)."""
    out = {}
    for r in records:
        spec = tuple((k, v) for k, v in r.params.items()
                     if not (k.startswith("BLOCK") or k in _CANDIDATE_PARAMS))
        out.setdefault((r.case, r.kernel, spec + (("launch", r.launch),)), []).append(r)
    return out


def _is_compile_error(exc):
    mod = type(exc).__module__ or ""
    return mod.startswith("triton") or "CompilationError" in type(exc).__name__ or "PTXAS" in str(exc).upper()


def summary(records, t):
    """Markdown rows: one per launch (the configurations it compiled, how many spill-free, the
    registers, the largest shared memory, the units its SASS uses)."""
    rows = [f"| case | kernel | specialization | configs (spill-free) | registers | max spill B | "
            f"max shared KB (limit {t.smem // 1024}) | units |", "|---|---|---|---|---|---|---|---|"]
    shown = ("PREC", "DT", "NACC", "GRAD", "COLS", "EXCL", "HAS_V", "WANT_ACC2", "SMALL_D", "SMALL_K", "INT8",
             "FP8_DOT", "NV", "KTOP", "INVERSE", "F64")
    for (case, kernel, spec), recs in groups(records).items():
        sp = ", ".join(f"{k}={v}" for k, v in spec if k in shown)
        regs = sorted({r.regs for r in recs if r.regs is not None})
        units = set()
        for r in recs:
            units |= {u for u in ("HGMMA", "HMMA", "IGMMA", "IMMA", "QGMMA", "MUFU.EX2") if u in r.sass}
            if not ({"HGMMA", "HMMA", "IGMMA", "IMMA", "QGMMA"} & set(r.sass)) and (r.sass.get("FFMA", 0) > 64
                                                                                  or "DFMA" in r.sass):
                units.add("FMA dots")
        free = sum(1 for r in recs if not spills_of(r))
        rng = f"{regs[0]}-{regs[-1]}" if len(regs) > 1 else (str(regs[0]) if regs else "?")
        rows.append(f"| {case} | {kernel} | {sp} | {len(recs)} ({free}) | {rng} | {max(map(spills_of, recs))} | "
                    f"{max(r.shared for r in recs) / 1024:.0f} | {', '.join(sorted(units))} |")
    return "\n".join(rows)


def table(records, t):
    """Markdown rows: one per compiled kernel configuration."""
    rows = ["| case | kernel | params | warps | stages | regs | spill stores B | shared B (limit %d) | SASS |" % t.smem,
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        params = ", ".join(f"{k}={v}" for k, v in r.params.items())
        sass = ", ".join(f"{k} {v}" for k, v in r.sass.items())
        rows.append(f"| {r.case} | {r.kernel} | {params} | {r.num_warps} | {r.num_stages} | {r.regs} | "
                    f"{r.spill_stores} | {r.shared} | {sass} |")
    return "\n".join(rows)


def warm(families=FAMILIES, shard=None, only=None, small=False):
    """Compile into Triton's cache, in this process, for this machine's GPU (the H200 description
    where torch sees none); 0 unless a kernel failed to compile."""
    import torch
    name = "local" if torch.cuda.is_available() else "h200"
    t0 = time.time()
    records, failures, _ = run_target(name, families, small, log=lambda s: print(s, flush=True), only=only,
                                      warm=True, shard=shard)
    part = "" if shard is None else f" (shard {shard[0]}/{shard[1]})"
    print(f"compilecheck --warm{part}: {len(records)} kernel configurations compiled or found in the cache "
          f"in {time.time() - t0:.0f} s" + (f"; {len(failures)} failed" if failures else ""), flush=True)
    for f_ in failures:
        print("  - " + f_, flush=True)
    return 1 if failures else 0


def main(targets=("h200",), families=FAMILIES, small=False, out=None, only=None):
    """Each target in a child process; prints the tables; 0 when everything compiled within bounds."""
    from hotpath.backends.triton import target as T
    bad = [x for x in targets if x not in T.TARGETS]
    if bad:
        print(f"compilecheck: unknown target(s) {bad}; known: {sorted(T.TARGETS)}", file=sys.stderr)
        return 2
    import triton
    status = 0
    for name in targets:
        out_dir = out or tempfile.mkdtemp(prefix="hotpath-compilecheck-")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{name}.json")
        cmd = [sys.executable, "-m", "hotpath._compilecheck", name, path, ",".join(families), "small" if small else "full",
               only or ""]
        # a fresh Triton cache: every kernel goes through ptxas, whose -v log gives the spills
        env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DUMP_PTXAS_LOG="1",
                   TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="hotpath-compilecheck-cache-"))
        rc = subprocess.run(cmd, env=env).returncode
        if not os.path.exists(path):
            print(f"compilecheck {name}: the child process died (exit {rc}) before writing {path}")
            status = 1
            continue
        with open(path) as f:
            res = json.load(f)
        t = T.TARGETS[name]
        recs = [Record(**r) for r in res["records"]]
        print(f"\n## {t.name}: {len(recs)} compiled kernel configurations (triton {triton.__version__})\n")
        print(summary(recs, t))
        with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
            f.write(f"# {t.name}, triton {triton.__version__}: every compiled configuration\n\n{table(recs, t)}\n")
        if res["notes"]:
            print(f"\n{len(res['notes'])} launch(es) on {t.name} whose autotuning candidates include spilling "
                  "configurations (a spill-free one exists; compile time only):")
            for n_ in res["notes"]:
                print("  - " + n_)
        if res["failures"]:
            status = 1
            print(f"\n{len(res['failures'])} problem(s) on {t.name}:")
            for f_ in res["failures"]:
                print("  - " + f_)
        else:
            print(f"\n{t.name}: every kernel compiled; every launch has a spill-free configuration; "
                  f"shared memory within {t.smem} B")
        print(f"(every configuration: {os.path.join(out_dir, name + '.md')}; record: {path})")
    return status


def _child(name, path, families, small, only):
    records, failures, notes = run_target(name, families, small, log=lambda s: print(s, flush=True), only=only)
    with open(path, "w") as f:
        json.dump({"records": [dataclasses.asdict(r) for r in records], "failures": failures, "notes": notes}, f,
                  indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4] == "small", sys.argv[5] or None))
