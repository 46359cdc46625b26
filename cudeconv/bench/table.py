"""The bench's results as a text table (what ``cudeconv bench`` prints): :func:`format_table` at
once, or :class:`TableWriter` case by case while the bench runs."""
from __future__ import annotations

import math
from typing import List

from ..timing import INTERFERENCE_FACTOR, NOISY_RELATIVE_IQR
from .problem import PASSES

NOISY_MARK, UNRANKED_MARK, INTERFERED_MARK = "~", "?", "!"


def _fmt(value, width, digits=3):
    if value is None:
        return " " * (width - 1) + "—"
    return f"{value:{width}.{digits}g}"


def _fmt_spread(timing, width=6):
    """IQR as a percentage of the median, marked when noisy."""
    if timing is None:
        return " " * (width - 1) + "—"
    relative = (timing["q3_ms"] - timing["q1_ms"]) / timing["median_ms"] if timing["median_ms"] > 0 else math.inf
    mark = NOISY_MARK if not relative <= NOISY_RELATIVE_IQR else " "
    return f"{min(relative * 100, 999):{width - 2}.0f}%{mark}"


def _fmt_time(timing, width):
    """The median in ms, marked when it was over INTERFERENCE_FACTOR × its time alone."""
    if timing is None:
        return _fmt(None, width)
    return f"{timing['median_ms']:{width - 1}.3g}{INTERFERED_MARK if timing['interfered'] else ' '}"


def _fmt_ratio(ratio, spread, width):
    if ratio is None:
        return " " * (width - 1) + "—"
    if spread["interfered"]:  # withheld: the time says more about the neighbours than the code
        return " " * (width - 1) + INTERFERED_MARK
    mark = " " if spread["ranked"] else UNRANKED_MARK
    return f"{ratio:{width - 1}.3g}{mark}"


def headline(results: dict) -> List[str]:
    """What was run and how it was timed: the lines above the table (and the plot's title)."""
    policy = results["timing"]
    size = (f"QUICK RUN (--quick): every case shrunk ({results['quick_limits']}) — smoke-test sizes, "
            "not the real layers" if results["quick"] else "full-size cases (the real layers)")
    lines = [
        f"{results['backend']} on {results['device']}, {results['dtype']}, precision {results['precision']}; {size}",
        f"times: median of ≥ {policy['min_samples']} samples per pass and ≥ {policy['min_seconds']:g} s "
        f"of samples, cudeconv and baselines interleaved ({results['timer']}); each also timed alone; "
        f"{results['threads']} thread(s) for every library on the CPU",
    ]
    load, threads = results["load"], results["threads"]
    if load and threads > 1 and load["load_average"] >= load["cpus"] and results["peaks"] is None:
        lines.append(f"BUSY MACHINE: load average {load['load_average']:.1f} on {load['cpus']} CPUs: libraries "
                     f"running {threads} threads wait for each other's turns; --threads 1 gives steadier times")
    return lines


def _geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt_paths(paths: dict, arithmetics: dict) -> str:
    """'forward gemm tf32, grad_input direct fp32, ...', with any workspace."""
    parts = []
    for p, path in paths.items():
        text = f"{p} {path['kind']} {arithmetics.get(p, '')}".rstrip()
        if path["workspace_bytes"]:
            text += f" ({path['workspace_bytes'] / 2**20:.3g} MiB workspace)"
        parts.append(text)
    return ", ".join(parts)


def _columns(results: dict):
    """The baselines with a column: those that could run here; each one's widths."""
    names = results["compared"]
    return names, {name: (max(12, len(name) + 3), max(8, len(name) + 2)) for name in names}


def format_header(results: dict) -> List[str]:
    """The headline and the column titles."""
    ours = results["backend"]
    names, widths = _columns(results)
    header = (f"{'case':14s} {'pass':12s} {'rel error':>9s} {ours + ' ms':>12s} {'±IQR':>6s} "
              f"{'TFLOP/s':>8s} {'GB/s':>8s}")
    if results["peaks"] is not None:
        header += f" {'%peak':>6s} {'math':>9s} {'%BW':>6s}"
    for name in names:
        header += f" │ {name + ' ms':>{widths[name][0]}s} {'±IQR':>6s} {'×' + name:>{widths[name][1]}s}"
    return headline(results) + ["", header, "─" * len(header)]


def format_case(results: dict, case: dict) -> List[str]:
    """One case's rows: a pass per row, then its kernels and how its inputs met the cache."""
    names, widths = _columns(results)
    label = case["name"]
    if case["status"] != "ok":
        detail = case.get("error") or ", ".join(
            f"{p} error {e:.2g} > {case['tolerances'][p]:.2g} ({case['bounds'][p]['form']} bound)"
            for p, e in case["wrong_passes"].items())
        return [f"{label:14s} {case['status'].upper()}: {detail}"]
    lines = []
    for p in PASSES:
        if p not in case["ms"]:
            continue
        row = (f"{label:14s} {p:12s} {_fmt(case['rel_errors'].get(p), 9, 2)} {_fmt_time(case['timing'][p], 12)} "
               f"{_fmt_spread(case['timing'][p])} {_fmt(case['tflops'].get(p), 8)} {_fmt(case['gbps'].get(p), 8)}")
        if results["peaks"] is not None:
            fractions = case["peak_fraction"]
            pct = lambda kind: None if p not in fractions[kind] else 100 * fractions[kind][p]  # noqa: E731
            math_used = case["arithmetic"].get(p, "—") if p in case["tflops"] else "—"
            row += f" {_fmt(pct('compute'), 6, 2)} {math_used:>9s} {_fmt(pct('bandwidth'), 6, 2)}"
        for name in names:
            theirs = case["baselines"].get(name, {})
            timing = theirs.get("timing", {}).get(p)
            ratio = case["speedup"].get(name, {}).get(p)
            spread = case["speedup_spread"].get(name, {}).get(p)
            row += (f" │ {_fmt_time(timing, widths[name][0])} "
                    f"{_fmt_spread(timing)} {_fmt_ratio(ratio, spread, widths[name][1])}")
        lines.append(row)
    if case.get("paths"):
        lines.append(f"{'':14s} kernels: " + _fmt_paths(case["paths"], case["arithmetic"]))
    if results["peaks"] is not None:
        lines.append(f"{'':14s} inputs: {case['inputs']['state']}: {case['inputs']['why']}")
    return lines


def format_footer(results: dict) -> List[str]:
    """What the marks mean, the geometric means of the speed-ups, the baselines skipped."""
    ours = results["backend"]
    names, _ = _columns(results)
    lines = [
        "",
        f"rel error: max |{ours} - float64 reference| / max |reference|. ±IQR: interquartile range "
        f"as a % of the median; {NOISY_MARK}: over {NOISY_RELATIVE_IQR:.0%}, a noisy time.",
        f"×B: B's time / {ours}'s time, the median over rounds of samples taken side by side (above 1: "
        f"{ours} is faster); {UNRANKED_MARK}: the middle half of those ratios spans 1 — too close or "
        f"too noisy to rank.",
        f"{INTERFERED_MARK}: a time over {INTERFERENCE_FACTOR:g}× the same pass timed alone (JSON: solo_ms): the "
        f"contenders got in each other's way, so no speed-up is given for that pass.",
        "—: not measured. Only the passes the benchmarked backend has are timed; a gradient without "
        "its own entry point is inside backward. sgd_step and grad_bias do no convolution: no TFLOP/s.",
    ]
    if results["peaks"] is not None:
        lines.append("%peak: TFLOP/s over the peak of the arithmetic the pass ran (math; a+b: half on each), "
                     "%BW: GB/s over the memory bandwidth, both at the GPU's maximum clock.")
    if not results["complete"]:
        done = {c["name"] for c in results["cases"]}
        lines.append("INCOMPLETE: not measured (yet): "
                     + ", ".join(n for n in results["cases_planned"] if n not in done))
    for name in names:
        ratios = [(r, c["speedup_spread"][name][p]) for c in results["cases"]
                  for p, r in c["speedup"].get(name, {}).items()]
        kept = [(r, s["ranked"]) for r, s in ratios if not s["interfered"]]
        withheld = len(ratios) - len(kept)
        if kept:
            unranked = sum(1 for _, ranked in kept if not ranked)
            lines.append(f"geometric mean ×{name}: {_geometric_mean([r for r, _ in kept]):.3g} over "
                         f"{len(kept)} passes ({unranked} of them unranked {UNRANKED_MARK})"
                         + (f"; {withheld} withheld {INTERFERED_MARK}" if withheld else ""))
        elif withheld:
            lines.append(f"geometric mean ×{name}: none, all {withheld} withheld {INTERFERED_MARK}")
    if not results["compared"]:
        lines.append("no baseline compared" + (f" (--baselines: {', '.join(results['baselines'])})"
                                               if results["baselines"] else " (none selected)"))
    skipped = {}
    for case in results["cases"]:
        for name, timing in case["baselines"].items():
            if "skipped" in timing:
                skipped.setdefault((name, timing["skipped"]), []).append(case["name"])
    every = len(results["cases"])
    for (name, reason), which in skipped.items():
        where = "all cases" if len(which) == every else ", ".join(which)
        lines.append(f"{name}: skipped ({where}): {reason}")
    return lines


def format_table(results: dict) -> str:
    """The whole table: header, every case's rows, footer."""
    lines = format_header(results)
    for case in results["cases"]:
        lines += format_case(results, case)
    return "\n".join(lines + format_footer(results))


class TableWriter:
    """Prints the table as the bench runs: the header with the first case, each case's rows once
    measured (flushed, so a run stopped part-way leaves them), the footer at the end."""

    def __init__(self, out):
        self.out = out
        self.printed = 0

    def _print(self, lines):
        print("\n".join(lines), file=self.out, flush=True)

    def cases_done(self, results: dict) -> None:
        """Print the cases measured since the last call (the header first, once)."""
        lines = format_header(results) if self.printed == 0 else []
        for case in results["cases"][self.printed:]:
            lines += format_case(results, case)
        self.printed = len(results["cases"])
        if lines:
            self._print(lines)

    def finish(self, results: dict) -> None:
        self.cases_done(results)
        self._print(format_footer(results))
