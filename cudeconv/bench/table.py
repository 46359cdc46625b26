"""The bench's results as a text table (what ``cudeconv bench`` prints)."""
from __future__ import annotations

import math
from typing import List

from ..timing import NOISY_RELATIVE_IQR
from .problem import PASSES

NOISY_MARK, UNRANKED_MARK = "~", "?"


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


def _fmt_ratio(ratio, spread, width):
    if ratio is None:
        return " " * (width - 1) + "—"
    mark = " " if spread["ranked"] else UNRANKED_MARK
    return f"{ratio:{width - 1}.3g}{mark}"


def headline(results: dict) -> List[str]:
    """What was run and how it was timed: the lines above the table (and the plot's title)."""
    policy = results["timing"]
    size = (f"QUICK RUN (--quick): every case shrunk ({results['quick_limits']}) — smoke-test sizes, "
            "not the real layers" if results["quick"] else "full-size cases (the real layers)")
    return [
        f"{results['backend']} on {results['device']}, {results['dtype']}, precision {results['precision']}; {size}",
        f"times: median of ≥ {policy['min_samples']} samples per pass and ≥ {policy['min_seconds']:g} s "
        f"of samples, cudeconv and baselines interleaved ({results['timer']})",
    ]


def _geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt_paths(paths: dict) -> str:
    """'forward gemm (deconv_forward_gemm_tf32), ...', with any workspace."""
    parts = []
    for p, path in paths.items():
        text = f"{p} {path['kind']}"
        if path["workspace_bytes"]:
            text += f" ({path['workspace_bytes'] / 2**20:.3g} MiB workspace)"
        parts.append(text)
    return ", ".join(parts)


def format_table(results: dict) -> str:
    """The per-case, per-pass table: medians, spread, speedup over each baseline."""
    ours = results["backend"]
    names = list(dict.fromkeys(
        n for c in results["cases"] for n, t in c["baselines"].items() if "skipped" not in t))
    on_gpu = results["peaks"] is not None
    header = (f"{'case':14s} {'pass':12s} {'rel error':>9s} {ours + ' ms':>12s} {'±IQR':>6s} "
              f"{'TFLOP/s':>8s} {'GB/s':>8s}")
    if on_gpu:
        header += f" {'%FP32':>6s} {'%BW':>6s}"
    widths = {name: (max(12, len(name) + 3), max(8, len(name) + 2)) for name in names}
    for name in names:
        header += f" │ {name + ' ms':>{widths[name][0]}s} {'±IQR':>6s} {'×' + name:>{widths[name][1]}s}"
    lines = headline(results) + ["", header, "─" * len(header)]
    for case in results["cases"]:
        label = case["name"]
        if case["status"] != "ok":
            detail = case.get("error") or ", ".join(
                f"{p} error {e:.2g} > {case['tolerances'][p]:.2g}" for p, e in case["wrong_passes"].items())
            lines.append(f"{label:14s} {case['status'].upper()}: {detail}")
            continue
        for p in PASSES:
            if p not in case["ms"]:
                continue
            row = (f"{label:14s} {p:12s} {_fmt(case['rel_errors'].get(p), 9, 2)} {_fmt(case['ms'][p], 12)} "
                   f"{_fmt_spread(case['timing'][p])} {_fmt(case['tflops'].get(p), 8)} "
                   f"{_fmt(case['gbps'].get(p), 8)}")
            if on_gpu:
                frac = case["peak_fraction"]
                pct = lambda kind: None if p not in frac[kind] else 100 * frac[kind][p]  # noqa: E731
                row += f" {_fmt(pct('fp32'), 6, 2)} {_fmt(pct('bandwidth'), 6, 2)}"
            for name in names:
                theirs = case["baselines"].get(name, {})
                timing = theirs.get("timing", {}).get(p)
                ratio = case["speedup"].get(name, {}).get(p)
                spread = case["speedup_spread"].get(name, {}).get(p)
                row += (f" │ {_fmt(None if timing is None else timing['median_ms'], widths[name][0])} "
                        f"{_fmt_spread(timing)} {_fmt_ratio(ratio, spread, widths[name][1])}")
            lines.append(row)
        if case.get("paths"):
            lines.append(f"{'':14s} kernels: " + _fmt_paths(case["paths"]))
            label = ""
    lines += [
        "",
        f"rel error: max |{ours} - float64 reference| / max |reference|. ±IQR: interquartile range "
        f"as a % of the median; {NOISY_MARK}: over {NOISY_RELATIVE_IQR:.0%}, a noisy time.",
        f"×B: B's time / {ours}'s time, the median over rounds of samples taken side by side (above 1: "
        f"{ours} is faster); {UNRANKED_MARK}: the middle half of those ratios spans 1 — too close or "
        f"too noisy to rank.",
        "—: not measured. Only the passes the benchmarked backend has are timed; a gradient without "
        "its own entry point is inside backward. sgd_step and grad_bias do no convolution: no TFLOP/s.",
    ]
    for name in names:
        ratios = [(r, c["speedup_spread"][name][p]["ranked"])
                  for c in results["cases"] for p, r in c["speedup"].get(name, {}).items()]
        if ratios:
            unranked = sum(1 for _, ranked in ratios if not ranked)
            lines.append(f"geometric mean ×{name}: {_geometric_mean([r for r, _ in ratios]):.3g} over "
                         f"{len(ratios)} passes ({unranked} of them unranked {UNRANKED_MARK})")
    skipped = {}
    for case in results["cases"]:
        for name, timing in case["baselines"].items():
            if "skipped" in timing:
                skipped.setdefault((name, timing["skipped"]), []).append(case["name"])
    every = len(results["cases"])
    for (name, reason), which in skipped.items():
        where = "all cases" if len(which) == every else ", ".join(which)
        lines.append(f"{name}: skipped ({where}): {reason}")
    return "\n".join(lines)
