"""cudeconv's command line: ``bench`` (the benchmark suite), ``demo`` (train a small decoder),
``tune`` (autotune layers into the cache) and ``info`` (versions, and which backends work here). ``cudeconv`` alone prints this help and ``info``."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import numpy as np

from . import __version__, backends
from ._dtypes import NAMES as FLOAT_NAMES
from ._dtypes import float_dtype
from ._files import write_atomically
from ._precision import PRECISIONS
from .autotune import BUDGET_SECONDS
from .cases import QUICK, QUICK_EMULATOR

DTYPES = FLOAT_NAMES  # float16, bfloat16, float32, float64
DEMO_PICTURE = "cudeconv-demo.png"

BENCH_DESCRIPTION = """\
Check, then time, every pass (forward, grad_input, grad_weight, grad_bias, backward, SGD step) of
real transposed-convolution layers (cudeconv bench --list) on one backend, beside baselines
(--baselines): PyTorch (on a GPU cuDNN with TF32 off and on, heuristic or tuned; on the CPU at the
same thread count), the NumPy backend, and on a GPU a CuPy GEMM + col2im and cudeconv's direct
kernels. A result outside its error bound from a float64 reference is reported as wrong and not
timed (low-precision arithmetic entry by entry, within 4 units of its format times Σ|a·b|).

Each pass is timed in rounds that alternate cudeconv and the baselines, so load from other
processes hits them alike, then each alone: a time over twice its solo time is flagged (!) and its
speed-ups withheld. The table gives medians with their spread (IQR), and speed-ups as the median of
same-round ratios, flagged where the spread is too large to rank them (?). The table's rows and
the JSON are written after every case, so a run stopped part-way keeps what it measured."""

BENCH_EXAMPLES = """\
examples:
  cudeconv bench                              the whole suite on the best backend here (cuda, else numpy)
  cudeconv bench --quick                      every case shrunk: a smoke test in well under a minute
  cudeconv bench --cases 'dcgan_*' unet_up    some cases (names or globs)
  cudeconv bench --backend emulator --quick   the CUDA kernels on the CPU emulator (correctness, not speed)
  cudeconv bench --precision tf32             float32 on TF32 tensor cores, against the TF32 baselines
  cudeconv bench --baselines torch_cudnn,numpy
                                              choose the baselines (all, none, or names)
  cudeconv bench --repeat 30 --min-time 1     more samples, for steadier numbers on a busy machine
  cudeconv bench --json out.json --plot out.png
                                              results as JSON, and a chart of the speed-ups (matplotlib)"""


def _print_versions():
    from .bench import versions

    found = versions()
    print(f"cudeconv {__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    print(f"dtypes   {', '.join(DTYPES)} (bfloat16 from ml_dtypes {found['ml_dtypes']})")
    try:
        import cupy

        print(f"cupy     {cupy.__version__}")
    except Exception as exc:  # not installed, or broken
        print(f"cupy     not usable ({type(exc).__name__}: {exc})")
    if found["cuda_runtime"]:
        driver = found["cuda_driver"] or "none found (no NVIDIA driver)"
        print(f"CUDA     runtime {found['cuda_runtime']}, driver {driver}")
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
    _print_caches()
    return 0


def _print_caches():
    from ._loader import cupy_cache_dir, directory_bytes
    from .emulator import cache_usage

    cupy_dir = cupy_cache_dir()
    size, files = directory_bytes(cupy_dir)
    print("kernel caches:")
    print(f"  cuda      {cupy_dir}: {size / 2**20:.1f} MiB in {files} files "
          f"(CuPy's; $CUPY_CACHE_DIR moves it; `cudeconv warmup` fills it)")
    try:
        usage = cache_usage()
        print(f"  emulator  {usage.path}: {usage.bytes / 2**20:.1f} MiB in {usage.builds} builds, at most "
              f"{usage.limit / 2**20:.0f} MiB ($CUDECONV_EMULATOR_CACHE, $CUDECONV_EMULATOR_CACHE_MAX)")
    except ValueError as exc:  # a malformed $CUDECONV_EMULATOR_CACHE_MAX: said, and the other caches still shown
        print(f"  emulator  {exc}")
    from .autotune import cache_dir

    tuned_bytes, tuned_files = directory_bytes(cache_dir())
    print(f"  autotune  {cache_dir()}: {tuned_bytes / 2**10:.1f} KiB in {tuned_files} files "
          f"($CUDECONV_AUTOTUNE_CACHE; `cudeconv tune` fills it)")


def _warmup(args, parser) -> int:
    """Compile ahead every module a step of the chosen dtypes and precisions can need."""
    backend_name = args.backend
    reason = (backends.cuda_unavailable_reason() if backend_name == "cuda"
              else backends.emulator_unavailable_reason())
    if reason is not None:
        parser.exit(2, f"cudeconv warmup: backend {backend_name!r} cannot run here: {reason}\n")
    impl = backends.get(backend_name)
    dtypes = args.dtype or ["float32"]
    precisions = args.precision or ["fp32"]

    def progress(source, math_name, gemm_pass, tile):
        kernel = (f" {gemm_pass}" if gemm_pass else "") + (f" {tile[0]}x{tile[1]}" if tile else "")
        print(f"  {source} [{math_name or 'every math'}{kernel}]", flush=True)

    if args.jobs < 0:
        parser.error(f"--jobs must be 0 (one per CPU) or a positive number, got {args.jobs}")
    jobs = args.jobs or os.cpu_count() or 1
    start = time.perf_counter()
    print(f"compiling for {backend_name} ({', '.join(dtypes)}; precision {', '.join(precisions)}; "
          f"{jobs} process{'es' if jobs > 1 else ''}):", flush=True)
    compiled = impl.warmup([float_dtype(name) for name in dtypes], precisions, on_progress=progress, jobs=jobs)
    print(f"{len(compiled)} modules ready in {time.perf_counter() - start:.1f} s")
    _print_caches()
    return 0


LAYER_FIELDS = ("batch", "in_channels", "out_channels", "in_size", "kernel_size", "stride", "padding",
                "output_padding", "groups", "dilation")


def _layer_case(spec: str):
    """The Case of ``--layer``'s ``name=value,...`` (sizes per dim as ``8x8``, or one number for every dim)."""
    from .cases import Case

    values = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name not in LAYER_FIELDS or not value:
            raise ValueError(f"--layer: {item!r} is not NAME=VALUE with NAME one of {', '.join(LAYER_FIELDS)}")
        try:
            values[name] = tuple(int(v) for v in value.split("x"))
        except ValueError:
            raise ValueError(f"--layer: {name}={value!r} is not a number or sizes like 8x8") from None
    missing = [name for name in ("in_channels", "out_channels", "in_size", "kernel_size") if name not in values]
    if missing:
        raise ValueError(f"--layer needs {', '.join(missing)}, got {spec!r}")
    groups = values.get("groups", (1,))[0]
    if groups < 1 or values["in_channels"][0] % groups or values["out_channels"][0] % groups:
        raise ValueError(f"--layer: groups={groups} must be a positive divisor of in_channels and out_channels")
    ndim = len(values["in_size"])
    per_dim = {name: value * ndim if len(value) == 1 else value for name, value in values.items()
               if name in ("kernel_size", "stride", "padding", "output_padding", "dilation")}
    case = Case("layer", f"--layer {spec}", values.get("batch", (1,))[0], values["in_channels"][0],
                values["out_channels"][0], values["in_size"], per_dim["kernel_size"], per_dim.get("stride", (1,) * ndim),
                per_dim.get("padding", (0,) * ndim), per_dim.get("output_padding"), groups,
                per_dim.get("dilation"))
    case.geometry()  # ValueError now for an impossible layer
    return case


def _label(choice) -> str:
    parts = f" ×{choice['parts']}" if choice["kind"] == "gemm" else ""
    return f"{choice['kind']}{parts}"


def _tune(args, parser) -> int:
    """Autotune the passes of the chosen cases (or --layer) for this device, into the cache."""
    from . import autotune, bench
    from .cases import QUICK_EMULATOR

    if args.layer and args.cases:
        parser.error("give --cases or --layer, not both")
    try:
        cases = [_layer_case(args.layer)] if args.layer else bench.select_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    backend = _usable_backend(parser, args.backend)
    if args.quick:
        cases = [case.quick(QUICK_EMULATOR if backend == "emulator" else QUICK) for case in cases]
    impl, tuner, dtype = backends.get(backend), autotune.default_tuner(), float_dtype(args.dtype)
    if args.budget is not None:
        tuner.budget = args.budget
    print(f"autotuning on {backend} ({args.dtype}, precision {args.precision}) into {autotune.cache_dir()}:")
    for case in cases:
        x, weight, bias, grad_output = (None if a is None else impl.asarray(a) for a in case.arrays(dtype))
        operands = {"forward": (x, weight, bias), "grad_input": (grad_output, weight), "grad_weight": (grad_output, x)}
        for pass_, arrays in operands.items():
            report = tuner.tune(impl, pass_, arrays, case.geometry(), args.precision)
            timed = "cached" if report["candidates"] is None else "; ".join(
                f"{_label(c)} {c['seconds'] * 1e3:.3f} ms" if "seconds" in c else f"{_label(c)} not run ({c['skipped']})"
                for c in report["candidates"])
            print(f"  {case.name:14s} {pass_:12s} {_label(report['choice']):10s} {timed}", flush=True)
    _print_caches()
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
    _write_json_atomically(path, data)
    print(f"wrote {path}")


def _check_output_paths(parser, *paths):
    """Fail before a long run, not after it, when an output file's folder does not exist."""
    for path in paths:
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"cannot write {path}: no folder {os.path.dirname(os.path.abspath(path))}")


def _matplotlib_missing():
    """None when matplotlib imports, else the reason (it is in the optional ``cli`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); pip install 'cudeconv[cli]' or pip install matplotlib"
    return None


def _check_plot_option(parser, option, path):
    """Fail at argument time, before any work, when a picture is asked for without matplotlib."""
    reason = _matplotlib_missing() if path else None
    if reason:
        parser.error(f"{option} {path} needs matplotlib: {reason}")


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
    # before PyTorch and the emulator load their OpenMP runtimes, which read it once
    bench.quiet_idle_pools()
    try:
        cases = bench.select_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    _check_output_paths(parser, args.json, args.plot)
    _check_plot_option(parser, "--plot", args.plot)
    backend = _usable_backend(parser, args.backend)
    if args.autotune and backend == "numpy":
        parser.error("--autotune needs a kernel backend (cuda or emulator): the numpy backend has no kernels to tune")
    try:
        bench.select_baselines(args.baselines, backend, args.dtype, args.precision)
    except ValueError as exc:
        parser.error(str(exc).replace("baselines:", "--baselines:", 1))
    print(bench.first_line(backend, args.quick), flush=True)
    table = bench.TableWriter(sys.stdout)

    def case_done(results):  # what was measured survives a run stopped part-way
        table.cases_done(results)
        if args.json:
            _write_json_atomically(args.json, results)

    results = bench.run(cases, backend, args.dtype, repeat=args.repeat, quick=args.quick,
                        min_seconds=args.min_time, precision=args.precision, baselines=args.baselines,
                        threads=args.threads, on_case=case_done, autotune=args.autotune)
    table.finish(results)
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        why_not = bench.plot(results, args.plot)
        print(f"wrote {args.plot}" if why_not is None else f"no picture written to {args.plot}: {why_not}")
    wrong = [c["name"] for c in results["cases"] if c["status"] != "ok"]
    if wrong:
        print(f"NOT OK: {', '.join(wrong)}", file=sys.stderr)
    return 1 if wrong else 0


def _write_json_atomically(path, data):
    """Strict JSON, through a temporary file renamed over ``path``: a reader, or a run killed
    while writing, never sees half a file."""
    text = json.dumps(_strict_json(data), indent=1, allow_nan=False)
    write_atomically(path, lambda file: file.write(text.encode()))


def _demo(args, parser) -> int:
    from . import demo

    _check_output_paths(parser, args.out, args.json)
    _check_plot_option(parser, "--out", args.out)
    picture = args.out or (DEMO_PICTURE if _matplotlib_missing() is None else None)
    if args.distributed:
        from . import distributed

        reason = distributed.mpi_unavailable_reason()
        if reason is not None:
            parser.error(f"--distributed needs MPI: {reason}")
        distributed.use_local_device()  # before the backend check below touches a GPU
    backend = _usable_backend(parser, args.backend)
    comm = distributed.communicator_for(backend) if args.distributed else None
    if comm is not None and args.batch % comm.size:
        parser.error(f"--batch {args.batch} must be a multiple of the {comm.size} processes")
    # a process that fails aborts the others, which would otherwise wait for it forever
    with contextlib.nullcontext() if comm is None else comm.abort_on_error():
        result = demo.train(backend=backend, steps=args.steps, batch=args.batch, size=args.size,
                            scale=args.scale, lr=args.lr, momentum=args.momentum, seed=args.seed,
                            comm=comm)
        if comm is not None and comm.rank != 0:
            return 0  # the processes ended with the same decoder: the first one reports
        print(demo.summary(result))
        if picture:
            demo.plot(result, picture)
            print(f"wrote {picture}")
        else:
            print(f"no picture: {_matplotlib_missing()}")
        if args.json:
            _write_json(args.json, demo.to_json(result))
    return 0


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
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
    commands = parser.add_subparsers(dest="command", metavar="{bench,demo,info,tune,warmup}")
    commands.add_parser("info", help="versions, which backends work here (and why not), GPU peaks, kernel caches")
    warmup_parser = commands.add_parser(
        "warmup", help="compile the kernels ahead for this GPU (for images and clusters)",
        description="Compile, into CuPy's kernel cache, every module a forward, backward and SGD step of the "
                    "given dtypes and precisions can need, so that a first call compiles nothing. A first call "
                    "compiles only what it needs anyway (about two seconds of CPU for float32); warmup does it "
                    "ahead, e.g. while building a container image on a machine with the same GPU.")
    warmup_parser.add_argument("--dtype", nargs="+", choices=DTYPES, metavar="DTYPE",
                               help=f"dtypes to compile for: {', '.join(DTYPES)} (default: float32)")
    warmup_parser.add_argument("--precision", nargs="+", choices=PRECISIONS, metavar="PRECISION",
                               help=f"float32 GEMM precisions: {', '.join(PRECISIONS)} (default: fp32)")
    warmup_parser.add_argument("--backend", choices=("cuda", "emulator"), default="cuda",
                               help="cuda (default), or emulator to build the CPU emulator's modules")
    warmup_parser.add_argument("--jobs", type=int, default=1, metavar="N",
                               help="compile in N processes at once (0: one per CPU; default 1)")

    tune_parser = commands.add_parser(
        "tune", help="autotune the benchmark's layers, or one --layer, for this GPU into the autotuning cache",
        description="Time the kernels algorithm='auto' may run for the forward, grad_input and grad_weight of "
                    "each layer and keep the fastest in the autotuning cache ($CUDECONV_AUTOTUNE_CACHE), which "
                    "calls with autotuning on (cudeconv.set_autotune(True), $CUDECONV_AUTOTUNE=1) then use. "
                    "A layer already in the cache is reported as cached.")
    tune_parser.add_argument("--backend", choices=("cuda", "emulator"), default="cuda",
                             help="cuda (default), or emulator (the same tuner on the CPU)")
    tune_parser.add_argument("--cases", nargs="+", metavar="NAME",
                             help="benchmark case names or globs (default: all; cudeconv bench --list)")
    tune_parser.add_argument("--layer", metavar="SPEC",
                             help="one layer instead: NAME=VALUE,... of " + ", ".join(LAYER_FIELDS)
                                  + " (sizes per dim as 8x8), e.g. batch=64,in_channels=512,out_channels=256,"
                                    "in_size=8x8,kernel_size=4,stride=2,padding=1")
    tune_parser.add_argument("--dtype", choices=DTYPES, default="float32", help="array dtype (default: %(default)s)")
    tune_parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                             help="float32 arithmetic of the kernels (default: %(default)s)")
    tune_parser.add_argument("--quick", action="store_true", help="shrink every case as cudeconv bench --quick does")
    tune_parser.add_argument("--budget", type=_non_negative_float, metavar="SECONDS",
                             help="wall time one pass may spend timing candidates before it stops trying more "
                                  f"(default: {BUDGET_SECONDS:g})")

    bench_parser = commands.add_parser(
        "bench", help="check and time every pass of the benchmark suite against the baselines present",
        description=BENCH_DESCRIPTION, epilog=BENCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_parser.add_argument("--backend", choices=backends.NAMES,
                              help="backend to benchmark (default: cuda where usable, else numpy)")
    bench_parser.add_argument("--cases", nargs="+", metavar="NAME",
                              help="case names or globs, comma or space separated (default: all; see --list)")
    bench_parser.add_argument("--dtype", choices=DTYPES, default="float32",
                              help="array dtype (default: %(default)s)")
    bench_parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                              help="float32 arithmetic of the kernels: fp32 (exact FFMA), tf32 (TF32 tensor cores, "
                                   "what cuDNN does under PyTorch's default) or tf32x3 (near-FP32 on tensor cores); "
                                   "a tf32 run compares with the TF32 baselines only (default: fp32)")
    bench_parser.add_argument("--quick", action="store_true",
                              help=f"shrink every case ({QUICK.describe()}; on the emulator "
                                   f"{QUICK_EMULATOR.describe()}): a smoke test, not the real layers")
    bench_parser.add_argument("--repeat", type=_positive_int, metavar="N",
                              help="at least N timed samples per pass, interleaved with the baselines "
                                   "(default: " + ", ".join(f"{n} on {name}" for name, n in
                                                             bench.DEFAULT_MIN_SAMPLES.items()) + ")")
    bench_parser.add_argument("--min-time", type=_non_negative_float, metavar="SECONDS",
                              help=f"and at least SECONDS of samples per pass, all implementations "
                                   f"together (default: {bench.DEFAULT_MIN_SECONDS:g})")
    bench_parser.add_argument("--threads", type=_positive_int, metavar="N",
                              help="threads of every library on the CPU, cudeconv's and the baselines' alike "
                                   "(default: the CPUs this process may use); on a busy machine 1 gives "
                                   "steadier times")
    bench_parser.add_argument("--json", metavar="FILE", help="write the results as JSON after every case")
    bench_parser.add_argument("--plot", metavar="FILE.png",
                              help="write a chart of the speed-ups over each baseline (needs matplotlib; "
                                   "none when no baseline was timed)")
    bench_parser.add_argument("--baselines", metavar="NAMES",
                              help="baselines to compare with: all, none, or names, comma separated: "
                                   + "; ".join(f"{name} ({'GPU' if b.on_gpu else 'CPU'}: {b.description})"
                                               for name, b in bench.BASELINES.items())
                              + " (default: those on the benchmarked backend's device; with --precision "
                                "tf32 the TF32 ones only)")
    bench_parser.add_argument("--autotune", action="store_true",
                              help="also time the backend's autotuned kernels (cudeconv tune's choices, tuned at "
                                   "their first call), as the baseline <backend>_autotuned: tuned and heuristic "
                                   "times side by side")
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
    demo_parser.add_argument("--out", metavar="FILE.png",
                             help=f"picture of inputs, outputs, targets and the loss curve (needs "
                                  f"matplotlib; default: {DEMO_PICTURE} where matplotlib is installed)")
    demo_parser.add_argument("--json", metavar="FILE", help="write the losses and settings as JSON")
    demo_parser.add_argument("--distributed", action="store_true",
                             help="train data-parallel on the processes of `mpiexec -n N cudeconv demo "
                                  "--distributed`: MPI on numpy/emulator, NCCL on cuda (one GPU per "
                                  "process); --batch must be a multiple of N; needs cudeconv[mpi]")
    return parser, {"bench": bench_parser, "demo": demo_parser, "warmup": warmup_parser, "tune": tune_parser}


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
    if args.command == "warmup":
        return _warmup(args, subparsers["warmup"])
    if args.command == "tune":
        return _tune(args, subparsers["tune"])
    if args.command == "demo":
        if args.size % args.scale:
            subparsers["demo"].error(f"--size {args.size} must be a multiple of --scale {args.scale}")
        return _demo(args, subparsers["demo"])
    parser.error(f"unknown command {args.command!r}")
    return 2
