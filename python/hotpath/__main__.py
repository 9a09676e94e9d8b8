"""python -m hotpath info | bench [family ...] [--quick] [--device cpu|cuda] [--out DIR] | gpucheck [--out DIR] [--budget S] [--family F]
                 | compilecheck [--target NAME ...] [--family F ...] [--small] [--out DIR] [--warm [--shard I/N]]"""
import argparse
import sys


def _shard(parser, text):
    """"I/N" -> (I, N) with 0 <= I < N; None for None."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        parser.error(f"--shard must be I/N with integers, got {text!r}")
    if not 0 <= i < n:
        parser.error(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hotpath")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what is built: C++ extension, CUDA, Triton, CPU ISA, threads")
    b = sub.add_parser("bench", help="run benchmarks against the reference and installed peers")
    b.add_argument("families", nargs="*", help="families to run (default: all); see --list")
    b.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    b.add_argument("--out", default="bench-results", help="folder for JSON results and PNG plots")
    b.add_argument("--list", action="store_true", help="list the benchmark families and exit")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the tensors live; cuda runs the GPU cases (sizes, peers, targets of the GPU issues)")
    g = sub.add_parser("gpucheck", help="the whole library on a GPU: the test suite in GPU mode, then "
                                        "bench --device cuda --quick; logs and tables under --out")
    g.add_argument("--out", default="gpucheck-results", help="folder for pytest.log, bench.log, bench/results.*")
    g.add_argument("--full", action="store_true", help="full benchmark sizes instead of --quick")
    g.add_argument("--keep-going", action="store_true",
                   help="run every test (by default the tests stop after 10 failures)")
    g.add_argument("--no-tests", action="store_true", help="benchmarks only")
    g.add_argument("--no-bench", action="store_true", help="tests only")
    g.add_argument("--tests", default=None, help="the tests folder (default: the repository's tests/)")
    g.add_argument("--all-tests", action="store_true",
                   help="also the parametrizations pinned to the CPU backends (CI runs those on CPU)")
    g.add_argument("--family", action="append", default=None, help="benchmark families to run (default: all)")
    g.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: tests stopped at 45%% of it, the benchmark gets the rest")
    c = sub.add_parser("compilecheck", help="compile every Triton kernel for a described GPU (no GPU needed): "
                                            "registers, spills, shared memory, tensor-core use")
    c.add_argument("--target", action="append", default=None,
                   help="h200 (default), a100, l4, rtx5090; repeat for several")
    c.add_argument("--family", action="append", default=None, help="pairwise, ot, contrastive, quant (default: all)")
    c.add_argument("--case", default=None, help="only the cases whose name contains this text")
    c.add_argument("--small", action="store_true", help="small problem sizes (fast; some size-dependent configs differ)")
    c.add_argument("--out", default=None, help="folder for <target>.json records (default: a temporary folder)")
    c.add_argument("--warm", action="store_true",
                   help="compile for this machine's GPU into Triton's cache (what gpucheck runs beside the tests)")
    c.add_argument("--shard", default=None, help="I/N: every N-th case from the I-th (with --warm)")
    args = parser.parse_args(argv)
    if args.cmd == "compilecheck":
        from hotpath import _compilecheck
        if args.warm:
            return _compilecheck.warm(families=tuple(args.family or _compilecheck.FAMILIES), only=args.case,
                                      shard=_shard(parser, args.shard), small=args.small)
        return _compilecheck.main(targets=tuple(args.target or ["h200"]),
                                  families=tuple(args.family or _compilecheck.FAMILIES), small=args.small, out=args.out, only=args.case)
    if args.cmd == "info":
        import hotpath
        print(hotpath.info())
        return 0
    if args.cmd == "gpucheck":
        from hotpath import _gpucheck
        return _gpucheck.main(out=args.out, quick=not args.full, maxfail=None if args.keep_going else _gpucheck.MAXFAIL,
                              tests=not args.no_tests, bench=not args.no_bench, tests_dir=args.tests,
                              budget=args.budget, families=tuple(args.family or ()), all_tests=args.all_tests)
    from hotpath.benchmarks import harness
    if args.list:
        print("\n".join(harness.families()))
        return 0
    return harness.main(args.families, quick=args.quick, out=args.out, device=args.device)


if __name__ == "__main__":
    sys.exit(main())
