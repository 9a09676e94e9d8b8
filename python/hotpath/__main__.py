"""python -m hotpath info | bench [family ...] [--quick] [--out DIR]"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hotpath")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what is built: C++ extension, CUDA, Triton, CPU ISA, threads")
    b = sub.add_parser("bench", help="run benchmarks against the reference and installed peers")
    b.add_argument("families", nargs="*", help="families to run (default: all); see --list")
    b.add_argument("--quick", action="store_true", help="small sizes, a few minutes in all")
    b.add_argument("--out", default="bench-results", help="folder for JSON results and PNG plots")
    b.add_argument("--list", action="store_true", help="list the benchmark families and exit")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        import hotpath
        print(hotpath.info())
        return 0
    from hotpath.benchmarks import harness
    if args.list:
        print("\n".join(harness.families()))
        return 0
    return harness.main(args.families, quick=args.quick, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
