"""cudeconv's command line: ``bench`` (the benchmark suite), ``demo`` (train a small decoder) and
``info`` (versions, and which backends work here). ``cudeconv`` alone prints this help and ``info``."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

import numpy as np

from . import __version__, backends

DTYPES = ("float16", "float32", "float64")


def _print_versions():
    from .bench import versions

    found = versions()
    print(f"cudeconv {__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    try:
        import cupy

        print(f"cupy     {cupy.__version__}")
    except Exception as exc:  # not installed, or broken
        print(f"cupy     not usable ({type(exc).__name__}: {exc})")
    if found["cuda_runtime"] or found["cuda_driver"]:
        print(f"CUDA     runtime {found['cuda_runtime'] or '?'}, driver {found['cuda_driver'] or '?'}")
    print(f"torch    {found['torch'] or 'not installed (only a benchmark baseline)'}")


def _info(_args) -> int:
    _print_versions()
    print("backends:")
    reasons = {
        "numpy": None,
        "cuda": backends.cuda_unavailable_reason(),
        "emulator": backends.emulator_unavailable_reason(),
    }
    for name, reason in reasons.items():
        print(f"  {name:9s}{'works' if reason is None else 'unavailable: ' + reason}")
    print(f"default backend for layers and bench: {backends.default_name()}")
    if reasons["cuda"] is None:
        from .bench import gpu_info

        gpu = gpu_info()
        print(f"GPU 0    {gpu.name}, compute capability {gpu.compute_capability}, {gpu.memory_gib:.1f} GiB, "
              f"{gpu.sms} SMs at {gpu.clock_mhz:.0f} MHz")
        print(f"peaks    FP32 {gpu.fp32_tflops:.1f} TFLOP/s (SMs × clock × FP32 lanes × 2), "
              f"memory {gpu.bandwidth_gbps:.0f} GB/s (memory clock × 2 × bus width)")
    from .emulator import compiler_description

    print(f"emulator compiler: {compiler_description()}")
    return 0


def _strict_json(value):
    """``value`` with NaN and ±inf (a diverged loss, a NaN result) as null: strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def _write_json(path, data):
    with open(path, "w") as out:
        json.dump(_strict_json(data), out, indent=1, allow_nan=False)
    print(f"wrote {path}")


def _check_output_paths(parser, *paths):
    """Fail before a long run, not after it, when an output file's folder does not exist."""
    for path in paths:
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"cannot write {path}: no folder {os.path.dirname(os.path.abspath(path))}")


def _usable_backend(parser, name) -> str:
    """``name`` (default: cuda where usable, else numpy), or a usage error saying why it can't run."""
    name = name or backends.default_name()
    try:
        backends.get(name)
    except backends.BackendUnavailableError as exc:
        parser.error(str(exc))
    return name


def _bench(args, parser) -> int:
    from . import bench

    if args.list:
        for case in bench.SUITE:
            print(f"{case.name:14s} {case.ndim}-d  {case.source}")
        return 0
    try:
        cases = bench.select_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    _check_output_paths(parser, args.json, args.plot)
    backend = _usable_backend(parser, args.backend)
    print(bench.first_line(backend), flush=True)
    results = bench.run(cases, backend, args.dtype, repeat=args.repeat, quick=args.quick)
    print(bench.format_table(results))
    if args.json:
        _write_json(args.json, results)
    if args.plot:
        bench.plot(results, args.plot)
        print(f"wrote {args.plot}")
    wrong = [c["name"] for c in results["cases"] if c["status"] != "ok"]
    if wrong:
        print(f"NOT OK: {', '.join(wrong)}", file=sys.stderr)
    return 1 if wrong else 0


def _demo(args, parser) -> int:
    from . import demo

    _check_output_paths(parser, args.out, args.json)
    backend = _usable_backend(parser, args.backend)
    result = demo.train(backend=backend, steps=args.steps, batch=args.batch, size=args.size,
                        scale=args.scale, lr=args.lr, momentum=args.momentum, seed=args.seed)
    print(demo.summary(result))
    demo.plot(result, args.out)
    print(f"wrote {args.out}")
    if args.json:
        _write_json(args.json, demo.to_json(result))
    return 0


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser():
    from . import bench, demo

    parser = argparse.ArgumentParser(prog="cudeconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cudeconv {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{bench,demo,info}")
    commands.add_parser("info", help="versions, which backends work here (and why not), GPU peaks")

    bench_parser = commands.add_parser(
        "bench", help="check and time every pass of the benchmark suite against the baselines present",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_parser.add_argument("--backend", choices=backends.NAMES,
                              help="backend to benchmark (default: cuda where usable, else numpy)")
    bench_parser.add_argument("--cases", nargs="+", metavar="NAME",
                              help="case names or globs, comma or space separated (default: all; see --list)")
    bench_parser.add_argument("--dtype", choices=DTYPES, default="float32",
                              help="array dtype (default: %(default)s)")
    bench_parser.add_argument("--quick", action="store_true",
                              help="shrink every case (batch ≤ 2, ≤ 32 channels, ≤ 4096 input "
                                   "positions): the suite takes about a minute on two CPU cores")
    bench_parser.add_argument("--repeat", type=_positive_int,
                              help=f"timed runs per pass, after warm-up; the median is reported "
                                   f"(default: {bench.DEFAULT_REPEAT[False]} on the CPU, "
                                   f"{bench.DEFAULT_REPEAT[True]} on the GPU)")
    bench_parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench_parser.add_argument("--plot", metavar="FILE.png", help="write a chart of time per pass")
    bench_parser.add_argument("--list", action="store_true", help="list the cases and their sources")

    demo_parser = commands.add_parser(
        "demo", help="train a small super-resolution decoder with the library's layers and SGD",
        description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_parser.add_argument("--backend", choices=backends.NAMES,
                             help="backend to train on (default: cuda where usable, else numpy)")
    demo_parser.add_argument("--steps", type=_positive_int, default=demo.DEFAULTS["steps"],
                             help="SGD steps, each on a fresh batch of images (default: %(default)s)")
    demo_parser.add_argument("--batch", type=_positive_int, default=demo.DEFAULTS["batch"],
                             help="images per step (default: %(default)s)")
    demo_parser.add_argument("--size", type=_positive_int, default=demo.DEFAULTS["size"],
                             help="side of the target images, a multiple of --scale (default: %(default)s)")
    demo_parser.add_argument("--scale", type=int, choices=(2, 4), default=demo.DEFAULTS["scale"],
                             help="upsampling factor (default: %(default)s)")
    demo_parser.add_argument("--lr", type=_positive_float, default=demo.DEFAULTS["lr"],
                             help="SGD learning rate (default: %(default)s)")
    demo_parser.add_argument("--momentum", type=float, default=demo.DEFAULTS["momentum"],
                             help="SGD momentum (default: %(default)s)")
    demo_parser.add_argument("--seed", type=int, default=demo.DEFAULTS["seed"],
                             help="seeds the weights and the images: same seed, same losses "
                                  "(default: %(default)s)")
    demo_parser.add_argument("--out", default="cudeconv-demo.png", metavar="FILE.png",
                             help="picture of inputs, outputs, targets and the loss curve "
                                  "(default: %(default)s)")
    demo_parser.add_argument("--json", metavar="FILE", help="write the losses and settings as JSON")
    return parser, {"bench": bench_parser, "demo": demo_parser}


def main(argv=None) -> int:
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        print()
        return _info(args)
    if args.command == "info":
        return _info(args)
    if args.command == "bench":
        return _bench(args, subparsers["bench"])
    if args.command == "demo":
        if args.size % args.scale:
            subparsers["demo"].error(f"--size {args.size} must be a multiple of --scale {args.scale}")
        return _demo(args, subparsers["demo"])
    parser.error(f"unknown command {args.command!r}")
    return 2
