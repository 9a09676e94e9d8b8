"""One harness for every benchmark family: warm-up, median of several runs, peak memory growth,
ratios against the reference and installed peers, targets printed beside the measured ratio,
a markdown table on stdout, JSON and a PNG plot under --out.

A family is a module bench_<family>.py in this folder with `run(h, quick)`; inside it:

    h.case("sqeuclidean n=m=10000 d=3", work=n * m, unit="pairs")
    h.measure("hotpath", fn)            # the first measured impl is the one ratios refer to
    h.measure("torch chunked", fn2)
    h.target("torch chunked", 20)       # hotpath must be >= 20x faster than it
    h.target_memory("open_clip", 0.05)  # hotpath peak growth <= 5% of it
"""
import ctypes
import gc
import importlib
import json
import os
import pkgutil
import platform
import statistics
import textwrap
import time
import traceback

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _modules():
    return sorted(m.name for m in pkgutil.iter_modules([_HERE]) if m.name.startswith("bench_"))


def families():
    """Family names; bench_<family>_<part>.py modules belong to <family> when bench_<family>.py exists."""
    names = [m[len("bench_"):] for m in _modules()]
    return [n for n in names if not any(n.startswith(o + "_") for o in names if o != n)]


def family_modules(family):
    return [m for m in _modules() if m == f"bench_{family}" or m.startswith(f"bench_{family}_")]


_LIBC = None


def _malloc_mode(mode):
    """glibc malloc for timing ("time") or for peak-memory runs ("memory").

    "time": blocks up to 32 MB come from the heap and are reused after free -- the steady state
    that glibc's dynamic mmap threshold reaches in a long-running process, so code that allocates
    large temporaries every iteration is timed as users see it, without a page fault per touch.
    "memory": large blocks straight from mmap and back on free, the free heap trimmed first, so
    the RSS peak of a run is its real allocations.
    """
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        if mode == "time":
            _LIBC.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
            _LIBC.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        else:
            _LIBC.mallopt(-3, 1 << 16)
            _LIBC.mallopt(-1, 1 << 16)
            _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Memory:
    """Peak memory growth of a block: CUDA allocator stats on GPU, VmHWM (reset) on CPU."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.ok = _reset_peak()
            self.base = _rss_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.peak = _rss_mb("VmHWM") - self.base if self.ok else float("nan")
        return False


class Harness:
    def __init__(self, quick=False, device="cpu", repeat=None, budget_s=None):
        self.quick = quick
        self.device = str(device)
        # families branch on this: their GPU cases (sizes, peers, targets) are not the CPU ones
        self.cuda = torch.device(self.device).type == "cuda"
        self.repeat = repeat or (3 if quick else 5)
        self.budget_s = budget_s or (20.0 if quick else 60.0)
        self.rows = []
        self.targets = []
        self.notes = []
        self._case = None
        # where results.json / results.md are rewritten at each case: a process killed by a time
        # limit (gpucheck --budget) leaves every case it finished on disk
        self.out = None

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def case(self, name, work=None, unit=None, family=None):
        if self.out is not None:
            self.save(self.out, plot=False)
        self._case = {"case": name, "work": work, "unit": unit, "family": family or self.family, "impls": {}}
        self.rows.append(self._case)
        if self.cuda:  # blocks cached by the previous case's peers (tens of GB) must not crowd this one
            gc.collect()
            torch.cuda.empty_cache()
        print(f"  case: {name}", flush=True)

    def measure(self, impl, fn, *, repeat=None, value=None):
        """Time fn() (median), record peak memory growth; fn's result may be checked by value()."""
        c = self._case
        try:
            t0 = time.perf_counter()
            out = fn()
            self._sync()
            first = time.perf_counter() - t0
            del out
            inner = 1
            if self.cuda:
                # the first call compiles / autotunes Triton kernels: time a second warm-up; a
                # sub-millisecond call is timed in batches, or launch + sync latency would dominate
                t0 = time.perf_counter()
                out = fn()
                self._sync()
                first = time.perf_counter() - t0
                del out
                inner = max(1, min(200, int(2e-3 / max(first, 1e-9))))
            n = repeat or self.repeat
            if first * n > self.budget_s:
                n = max(1, int(self.budget_s / max(first, 1e-9)))
            times = []
            _malloc_mode("time")
            for _ in range(n):
                t0 = time.perf_counter()
                for _ in range(inner):
                    out = fn()
                self._sync()
                times.append((time.perf_counter() - t0) / inner)
                if value is not None and len(times) == 1:
                    c.setdefault("values", {})[impl] = float(value(out))
                del out
            _malloc_mode("memory")  # one more run for the peak, with every large block counted
            with Memory(self.device) as mem:
                out = fn()
                self._sync()
                del out
            med = statistics.median(times)
            c["impls"][impl] = {"seconds": med, "peak_mb": mem.peak, "runs": len(times)}
            rate = f", {c['work'] / med:.3g} {c['unit']}/s" if c["work"] else ""
            print(f"    {impl:28s} {med * 1e3:10.2f} ms  peak +{mem.peak:8.1f} MB{rate}", flush=True)
        except Exception as exc:  # a failing peer must not stop the run
            c["impls"][impl] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"    {impl:28s} FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            if os.environ.get("HOTPATH_BENCH_TRACE"):
                traceback.print_exc()

    def skip(self, impl, why):
        self._case["impls"][impl] = {"skipped": why}
        print(f"    {impl:28s} skipped: {why}", flush=True)

    def _ratio(self, baseline, key):
        impls = self._case["impls"]
        ours = next(iter(impls.values()), {})
        other = impls.get(baseline, {})
        if key not in ours or key not in other or not ours[key]:
            return None
        return other[key] / ours[key] if key == "seconds" else ours[key] / max(other[key], 1e-9)

    def target(self, baseline, at_least, what="speed-up"):
        """Ours must be at_least times faster than baseline (ratio = t_baseline / t_ours)."""
        r = self._ratio(baseline, "seconds")
        self._record(baseline, what, r, at_least, ok=(r is not None and r >= at_least), fmt=f">= {at_least:g}x")

    def target_memory(self, baseline, at_most):
        """Ours peak growth at most at_most times the baseline's (ratio = ours / baseline)."""
        r = self._ratio(baseline, "peak_mb")
        self._record(baseline, "memory ratio", r, at_most, ok=(r is not None and r <= at_most), fmt=f"<= {at_most:g}x")

    def target_value(self, label, measured, *, at_least=None, at_most=None):
        ok = (at_least is None or measured >= at_least) and (at_most is None or measured <= at_most)
        fmt = f">= {at_least:g}" if at_least is not None else f"<= {at_most:g}"
        self._record(label, "value", measured, None, ok=ok, fmt=fmt)

    def _record(self, baseline, what, r, bound, ok, fmt):
        ours = next(iter(self._case["impls"]), "?")
        t = {"case": self._case["case"], "family": self._case["family"], "ours": ours, "vs": baseline,
             "what": what, "measured": r, "target": fmt, "bound": bound, "met": bool(ok) if r is not None else None}
        self.targets.append(t)
        shown = "n/a" if r is None else f"{r:.3g}"
        status = "n/a" if r is None else ("MET" if ok else "MISSED")
        print(f"    target {what} vs {baseline}: {shown} (target {fmt}) {status}", flush=True)

    def note(self, text):
        self.notes.append(text)
        print(f"    note: {text}", flush=True)

    def hardware(self):
        """Where the numbers come from: ratios depend on the instruction set (AMX, VNNI, AVX-512)."""
        from .._info import cpu_isa, cpu_model
        dev = torch.cuda.get_device_name(self.device) if self.cuda else None
        out = {"processor": cpu_model(), "cpu_isa": " ".join(cpu_isa()), "cpu_count": os.cpu_count(),
               "threads": torch.get_num_threads(), "gpu": dev, "device": self.device}
        if self.cuda:  # the GPU cases run Triton kernels: its version is part of the record
            try:
                import triton
                tv = getattr(triton, "__version__", "?")
            except ImportError:
                tv = None
            from ._gpu import tf32_state
            out.update(cuda=torch.version.cuda, triton=tv, tf32=tf32_state())
        return out

    def markdown(self):
        hw = self.hardware()
        head = (f"Measured on {hw['processor']} ({hw['cpu_count']} CPUs, {hw['threads']} threads; "
                f"ISA: {hw['cpu_isa']})"
                + (f", GPU {hw['gpu']} (CUDA {hw['cuda']}, Triton {hw['triton']})" if hw["gpu"] else "")
                + f", torch {torch.__version__}, {'--quick' if self.quick else 'full'} sizes.")
        lines = [head, "", "| family | case | impl | median ms | peak MB | rate |", "|---|---|---|---:|---:|---:|"]
        for c in self.rows:
            for impl, r in c["impls"].items():
                if "seconds" in r:
                    rate = f"{c['work'] / r['seconds']:.3g} {c['unit']}/s" if c["work"] else ""
                    lines.append(f"| {c['family']} | {c['case']} | {impl} | {r['seconds'] * 1e3:.2f} | {r['peak_mb']:.1f} | {rate} |")
                else:
                    lines.append(f"| {c['family']} | {c['case']} | {impl} | {r.get('error') or r.get('skipped')} | | |")
        lines += ["", head, "", "| family | case | ours vs | what | measured | target | status |",
                  "|---|---|---|---|---:|---|---|"]
        for t in self.targets:
            m = "n/a" if t["measured"] is None else f"{t['measured']:.3g}"
            s = "n/a" if t["met"] is None else ("MET" if t["met"] else "MISSED")
            lines.append(f"| {t['family']} | {t['case']} | {t['vs']} | {t['what']} | {m} | {t['target']} | {s} |")
        return "\n".join(lines)

    def save(self, out, plot=True):
        os.makedirs(out, exist_ok=True)
        meta = {"platform": platform.platform(), **self.hardware(), "torch": torch.__version__,
                "quick": self.quick, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"meta": meta, "cases": self.rows, "targets": self.targets, "notes": self.notes}, f, indent=1)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(self.markdown() + "\n")
        if not plot:
            return
        try:
            self._plot(os.path.join(out, "speedups.png"))
        except Exception as exc:
            print(f"(no plot: {type(exc).__name__}: {exc})")

    def _plot(self, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        # every speed-up row, including "speed-up (time <= 1.25x)" (ClipLoss / SigLIP)
        ts = [t for t in self.targets if t["what"].startswith("speed-up") and t["measured"]]
        if not ts:
            return
        # wrap at spaces only: a label must never end inside a number such as g128 or N=16384
        labels = [textwrap.fill(f"{t['family']}: {t['case']} vs {t['vs']}", width=52, break_long_words=False,
                                break_on_hyphens=False) for t in ts]
        lines_per = [lab.count("\n") + 1 for lab in labels]
        fig, ax = plt.subplots(figsize=(12, 0.22 * sum(lines_per) + 0.15 * len(ts) + 1.5))
        ys = list(range(len(ts)))[::-1]  # first row on top, in table order
        vals = [t["measured"] for t in ts]
        ax.barh(ys, vals, height=0.7, color=["tab:green" if t["met"] else "tab:red" for t in ts])
        for y, t, v in zip(ys, ts, vals):
            if t.get("bound"):
                ax.plot([t["bound"]] * 2, [y - 0.42, y + 0.42], color="k", lw=1.6, solid_capstyle="butt")
            ax.text(v * 1.04, y, f"{v:.3g}x", va="center", fontsize=7)
        ax.plot([], [], color="k", lw=1.6, label="target (bar must reach it)")
        ax.set_yticks(ys, labels, fontsize=7)
        ax.set_ylim(-0.6, len(ts) - 0.4)
        ax.set_xscale("log")
        ax.set_xlim(right=max(vals + [t.get("bound") or 1 for t in ts]) * 2.5)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.legend(loc="lower right", fontsize=8)
        hw = self.hardware()
        ax.set_title(f"{hw['processor']}, {hw['threads']} threads, {'--quick' if self.quick else 'full'} sizes",
                     fontsize=9)
        ax.set_xlabel("speed-up of hotpath (x, log scale); green = target met, red = missed")
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")  # long labels never cut at the left edge
        plt.close(fig)


def merge(sources, out, quick=False, device="cpu"):
    """One results.json / .md / speedups.png in out from the results.json of several runs (one
    benchmark process per family under gpucheck --budget); a missing source adds a note."""
    h = Harness(quick=quick, device=device)
    for src in sources:
        try:
            with open(src) as f:
                part = json.load(f)
        except (OSError, ValueError) as exc:
            h.notes.append(f"no results from {src}: {type(exc).__name__}")
            continue
        h.rows += part.get("cases", [])
        h.targets += part.get("targets", [])
        h.notes += part.get("notes", [])
    h.save(out)
    return h


def main(names, quick=False, out="bench-results", device=None):
    avail = families()
    names = names or avail
    for n in names:
        if n not in avail:
            print(f"unknown benchmark family {n!r}; known: {', '.join(avail)}")
            return 2
    device = device or "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(f"--device {device}: torch {torch.__version__} sees no CUDA device "
              f"(CUDA build: {torch.version.cuda or 'none'}); nothing was run")
        return 2
    import hotpath
    print(hotpath.info())
    h = Harness(quick=quick, device=device)
    h.out = out
    if h.cuda:
        from ._gpu import tf32_state
        print(f"GPU: {torch.cuda.get_device_name(device)}, TF32 for float32 matmuls: {tf32_state()} "
              "(cases marked 'fp32, no TF32 ...' / 'TF32' set it themselves)")
    crashed = []
    for n in names:
        print(f"\n## {n}", flush=True)
        h.family = n
        for modname in family_modules(n):
            mod = importlib.import_module(f"hotpath.benchmarks.{modname}")
            # a module declares the device types its cases are written for; CPU only by default,
            # so a CPU-only module is skipped on a GPU rather than timing CPU tensors under a GPU label
            devices = getattr(mod, "DEVICES", ("cpu",))
            if torch.device(device).type not in devices:
                h.notes.append(f"{modname}: no {device} cases (DEVICES = {tuple(devices)}), skipped")
                print(f"  {modname}: no {device} cases, skipped", flush=True)
                continue
            try:
                mod.run(h, quick)
            except Exception as exc:  # the other families still run and the results are still saved
                crashed.append(modname)
                h.notes.append(f"{modname} stopped: {type(exc).__name__}: {exc}")
                print(f"  {modname} stopped: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
    print("\n" + h.markdown())
    h.save(out)
    print(f"\nwrote {out}/results.json, results.md, speedups.png")
    if crashed:
        print(f"stopped early: {', '.join(crashed)}")
        return 1
    return 0
