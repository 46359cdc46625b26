#!/usr/bin/env python3
"""Nsight Compute's sector and wavefront counts of the GEMM launches, against the emulator's.

The launches are those of scripts/profile_gemm.py's small layer (forward and backward in f32,
tf32 and f16: the GEMMs and their split reduces). On a GPU, ``record`` runs ``target`` (those
launches on the cuda backend) under ``ncu``, restricted to the GEMM kernels, and writes ncu's CSV;
anywhere with the emulator, ``compare`` matches each launch of that CSV (by kernel name and
occurrence) with the emulator's profile of the same launch and prints, per kind of access, the
requests and sectors (or shared-memory wavefronts) per request of both and their ratio:

    python scripts/ncu_traffic.py record ncu.csv [--archive cubins.tar.gz]   # on the GPU machine
    python scripts/ncu_traffic.py compare ncu.csv                            # or cubins.tar.gz

``record --archive`` also adds the CSV to that tar.gz as ``ncu.csv`` (scripts/gpu_check.sh: its
$OUT holds at most 8 files; sass_report.py --cubins skips members that are not cubins), and
``compare`` reads it from there. Metrics this ncu does not know (``ncu --query-metrics``) are left
out, and said so, rather than failing the run.

What is compared (emulator kind: ncu's requests, ncu's sectors or wavefronts):
- global_load: l1tex__t_requests/sectors_pipe_lsu_mem_global_op_ld
- global_store: l1tex__t_requests/sectors_pipe_lsu_mem_global_op_st
- cp_async: smsp__inst_executed_op_ldgsts (warp instructions = the emulator's requests), the
  sectors of l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_access + _cache_bypass
- shared_load: smsp__inst_executed_op_shared_ld + _op_ldsm (the emulator counts ldmatrix as a
  shared load), l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld + _op_ldsm
- shared_store: smsp__inst_executed_op_shared_st, l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st
Recorded beside them for scripts/predict_perf.py's assumptions: all shared wavefronts, L2 read
sectors from L1 (its "every requested sector comes from L2"), issue-active (its ISSUE_EFFICIENCY).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# (requests metrics, sectors or wavefronts metrics) per emulator kind; each list is summed.
COMPARED = {
    "global_load": (["l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum"],
                    ["l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum"]),
    "global_store": (["l1tex__t_requests_pipe_lsu_mem_global_op_st.sum"],
                     ["l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum"]),
    "cp_async": (["smsp__inst_executed_op_ldgsts.sum"],
                 ["l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_access.sum",
                  "l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts_cache_bypass.sum"]),
    "shared_load": (["smsp__inst_executed_op_shared_ld.sum", "smsp__inst_executed_op_ldsm.sum"],
                    ["l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
                     "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum"]),
    "shared_store": (["smsp__inst_executed_op_shared_st.sum"],
                     ["l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum"]),
}
RECORDED_ALSO = ("l1tex__data_pipe_lsu_wavefronts_mem_shared.sum", "lts__t_sectors_srcunit_tex_op_read.sum",
                 "smsp__issue_active.avg.pct_of_peak_sustained_active")
METRICS = tuple(dict.fromkeys(m for pair in COMPARED.values() for side in pair for m in side)) + RECORDED_ALSO
EMULATOR_UNIT = {"global_load": "sectors", "global_store": "sectors", "cp_async": "sectors",
                 "shared_load": "wavefronts", "shared_store": "wavefronts"}
KERNEL_FILTER = "regex:_gemm_"  # the GEMMs and deconv_gemm_split_reduce_*, none of CuPy's kernels
ARCHIVE_MEMBER = "ncu.csv"


def parse_ncu_csv(text):
    """[(kernel name, {metric: value})] in launch (ID) order from ncu's CSV: the details page (one
    row per metric: "ID", "Kernel Name", "Metric Name", "Metric Value") or the raw page (one row per
    launch, metrics as columns, a row of units first). Lines before the header (ncu's ==PROF==
    messages) are skipped; values lose their thousands separators."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError("not an Nsight Compute CSV: no header line starting with \"ID\"")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    launches = {}
    for row in rows:
        if not row.get("ID", "").strip().isdigit():
            continue  # the raw page's units row
        launch = launches.setdefault(int(row["ID"]), (row["Kernel Name"], {}))
        if "Metric Name" in row:
            launch[1][row["Metric Name"]] = _number(row["Metric Value"])
        else:
            launch[1].update({name: _number(value) for name, value in row.items() if "__" in name})
    return [launches[key] for key in sorted(launches)]


def _number(text):
    text = (text or "").replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def _sum(metrics, names):
    """The sum of ``names`` in ``metrics`` (those present), or None when none is."""
    values = [metrics[name] for name in names if metrics.get(name) is not None]
    return sum(values) if values else None


def compare(ncu_launches, emulator_launches):
    """Rows (dicts) matching the launches by kernel name and occurrence: launch, kernel, kind,
    emulator requests and sectors (or wavefronts) per request, ncu's, and ncu / emulator. A kind
    with no requests on either side is left out; a launch only one side has is one row of kind
    "unmatched"."""
    def numbered(launches):
        seen = {}
        for name, counts in launches:
            seen[name] = seen.get(name, -1) + 1
            yield (name, seen[name]), counts

    emulated = dict(numbered(emulator_launches))
    measured = dict(numbered(ncu_launches))
    rows = []
    for key in list(dict.fromkeys([*measured, *emulated])):
        name, occurrence = key
        label = f"{name}#{occurrence}"
        if key not in emulated or key not in measured:
            rows.append(dict(launch=label, kind="unmatched", side="ncu" if key in measured else "emulator"))
            continue
        profile, metrics = emulated[key], measured[key]
        for kind, (request_names, unit_names) in COMPARED.items():
            emu_requests = profile.get(kind, {}).get("requests", 0)
            emu_units = profile.get(kind, {}).get(EMULATOR_UNIT[kind], 0)
            ncu_requests, ncu_units = _sum(metrics, request_names), _sum(metrics, unit_names)
            if not emu_requests and not ncu_requests:
                continue
            emu_ratio = emu_units / emu_requests if emu_requests else None
            ncu_ratio = ncu_units / ncu_requests if ncu_requests and ncu_units is not None else None
            rows.append(dict(launch=label, kind=kind, unit=EMULATOR_UNIT[kind], emulator_requests=emu_requests,
                             emulator_per_request=emu_ratio, ncu_requests=ncu_requests, ncu_per_request=ncu_ratio,
                             ratio=ncu_ratio / emu_ratio if ncu_ratio is not None and emu_ratio else None))
    return rows


def format_rows(rows):
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    lines = ["| launch | kind | emulator requests | per request | ncu requests | per request | ncu / emulator |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["kind"] == "unmatched":
            lines.append(f"| {row['launch']} | only in the {row['side']}'s launches | | | | | |")
            continue
        lines.append(f"| {row['launch']} | {row['kind']} ({row['unit']}) | {row['emulator_requests']} | "
                     f"{fmt(row['emulator_per_request'], '.2f')} | {fmt(row['ncu_requests'], '.0f')} | "
                     f"{fmt(row['ncu_per_request'], '.2f')} | {fmt(row['ratio'], '.2f')} |")
    return "\n".join(lines)


def read_csv_text(path):
    """The CSV's text from a CSV file or from the ARCHIVE_MEMBER of a tar.gz."""
    path = Path(path)
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            try:
                return archive.extractfile(ARCHIVE_MEMBER).read().decode()
            except KeyError:
                raise ValueError(f"{path} holds no {ARCHIVE_MEMBER} (did the ncu step run?)") from None
    return path.read_text()


def add_to_archive(archive, csv_path):
    """Rewrite the tar.gz ``archive`` with ``csv_path`` added as ARCHIVE_MEMBER (replacing one)."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory() as scratch:
        rewritten = Path(scratch) / archive.name
        with tarfile.open(archive) as old, tarfile.open(rewritten, "w:gz", compresslevel=9) as new:
            for member in old.getmembers():
                if member.name != ARCHIVE_MEMBER:
                    new.addfile(member, old.extractfile(member) if member.isfile() else None)
            new.add(csv_path, arcname=ARCHIVE_MEMBER)
        shutil.move(str(rewritten), archive)


_METRIC_NAME = re.compile(r"^\s*([a-z0-9]+__[A-Za-z0-9_]+)")


def known_metrics(ncu):
    """The base names ``ncu --query-metrics`` lists for this GPU, or None when it cannot say."""
    result = subprocess.run([ncu, "--query-metrics"], capture_output=True, text=True, timeout=60)
    names = {m.group(1) for m in map(_METRIC_NAME.match, result.stdout.splitlines()) if m}
    return names if result.returncode == 0 and names else None


def record(csv_path, archive=None):
    """Run ``target`` under ncu with the METRICS it knows; the CSV to ``csv_path`` (and the archive)."""
    ncu = shutil.which("ncu")
    if ncu is None:
        print("ncu_traffic: ncu is not on PATH", file=sys.stderr)
        return 2
    known = known_metrics(ncu)
    metrics = [m for m in METRICS if known is None or m.split(".")[0] in known]
    left_out = sorted(set(METRICS) - set(metrics))
    command = [ncu, "--csv", "--log-file", str(csv_path), "--metrics", ",".join(metrics), "--kernel-name",
               KERNEL_FILTER, "--target-processes", "all", sys.executable, str(Path(__file__).resolve()), "target"]
    print(" ".join(command), flush=True)
    status = subprocess.run(command).returncode
    launches = parse_ncu_csv(Path(csv_path).read_text()) if status == 0 and Path(csv_path).exists() else []
    note = (f"ncu: {len(launches)} GEMM launches, {len(metrics)} metrics"
            + (f" (unknown here: {', '.join(left_out)})" if left_out else "")
            + ("" if status == 0 else f"; rc {status}"))
    print(note)
    if os.environ.get("GPU_CHECK_NOTE"):
        Path(os.environ["GPU_CHECK_NOTE"]).write_text(note)
    if archive and Path(csv_path).exists():
        add_to_archive(archive, csv_path)
    return status if status else (0 if launches else 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("target", help="run the launches on the cuda backend (what ncu profiles)")
    recording = commands.add_parser("record", help="run `target` under ncu, writing its CSV")
    recording.add_argument("csv")
    recording.add_argument("--archive", help="also add the CSV to this tar.gz as ncu.csv")
    comparing = commands.add_parser("compare", help="compare a CSV (or an archive holding one) with the emulator")
    comparing.add_argument("source")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import profile_gemm  # a script beside this one; imports cudeconv

    if args.command == "target":
        profile_gemm.run_layer("cuda")
        import cupy

        cupy.cuda.get_current_stream().synchronize()
        return 0
    if args.command == "record":
        return record(args.csv, args.archive)
    print(format_rows(compare(parse_ncu_csv(read_csv_text(args.source)), profile_gemm.profiled_launches())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
