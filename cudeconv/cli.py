"""Command line: ``cudeconv info``."""
from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

from . import __version__, backends


def _info(_args) -> int:
    print(f"cudeconv {__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    try:
        import cupy

        print(f"cupy     {cupy.__version__}")
    except Exception as exc:  # not installed, or broken
        print(f"cupy     not usable ({type(exc).__name__}: {exc})")
    print("backends:")
    reasons = {
        "numpy": None,
        "cuda": backends.cuda_unavailable_reason(),
        "emulator": backends.emulator_unavailable_reason(),
    }
    for name, reason in reasons.items():
        print(f"  {name:9s}{'works' if reason is None else 'unavailable: ' + reason}")
    print(f"default backend for layers: {backends.default_name()}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cudeconv", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("info", help="versions and which backends work here")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        return _info(args)
    parser.error(f"unknown command {args.command!r}")
    return 2
