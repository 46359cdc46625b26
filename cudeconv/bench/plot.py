"""The bench's speed-ups as a PNG (``cudeconv bench --plot``)."""
from __future__ import annotations

import math
import textwrap
from typing import Dict, List, Optional, Tuple

from .problem import PASSES
from .table import INTERFERED_MARK, UNRANKED_MARK, headline

# The title's lines are wrapped until the widest takes at most this share of the figure's width.
TITLE_WIDTH_SHARE = 0.96


def _comparable(results: dict) -> Tuple[List[dict], List[str], List[str], Dict]:
    """(cases, baseline names, passes) with a speed-up to draw, and {(case, name, pass): (ratio,
    spread)} of those speed-ups; withheld ones (interfered) are left out."""
    drawn = {}
    for case in results["cases"]:
        for name, by_pass in case["speedup"].items():
            for p, ratio in by_pass.items():
                spread = case["speedup_spread"][name][p]
                if not spread["interfered"]:
                    drawn[case["name"], name, p] = (ratio, spread)
    cases = [c for c in results["cases"] if any(key[0] == c["name"] for key in drawn)]
    names = list(dict.fromkeys(key[1] for key in drawn))
    passes = [p for p in PASSES if any(key[2] == p for key in drawn)]
    return cases, names, passes, drawn


def nothing_to_draw(results: dict) -> Optional[str]:
    """Why there is no speed-up to draw (None when there is one)."""
    if _comparable(results)[2]:
        return None
    withheld = sum(s["interfered"] for c in results["cases"] for by_pass in c["speedup_spread"].values()
                   for s in by_pass.values())
    if withheld:
        return f"every speed-up was withheld ({withheld}, marked {INTERFERED_MARK} in the table)"
    reasons = sorted({t["skipped"] for c in results["cases"] for t in c["baselines"].values() if "skipped" in t})
    if reasons:
        return "no baseline was timed, nothing to compare: " + "; ".join(reasons)
    if not results["baselines"]:
        return "no baseline was selected (--baselines), nothing to compare"
    return "no case was timed, nothing to compare"


def _fit_title(fig, text: str, fontsize: float):
    """The figure's title, its lines wrapped until the widest fits the figure's width."""
    renderer = fig.canvas.get_renderer()
    chars = max(len(line) for line in text.split("\n"))
    while True:
        wrapped = "\n".join(textwrap.fill(line, chars, break_long_words=True) for line in text.split("\n"))
        title = fig.suptitle(wrapped, fontsize=fontsize)
        width = title.get_window_extent(renderer).width
        if width <= TITLE_WIDTH_SHARE * fig.bbox.width or chars <= 10:
            return title
        chars = min(chars - 1, int(chars * TITLE_WIDTH_SHARE * fig.bbox.width / width))


def figure(results: dict):
    """The speed-up chart as a matplotlib Figure (drawn), or None when there is nothing to draw:
    one panel per pass; per case, a bar per baseline at (baseline's time / cudeconv's time) with
    its value written beside it and its IQR as a whisker, on a log axis with the 1× line marked.
    Unranked ratios are drawn hatched and pale; withheld ones (interfered) are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cases, names, passes, drawn = _comparable(results)
    if not passes:
        return None
    ours = results["backend"]
    title = f"cudeconv bench: {ours} vs baselines\n" + "\n".join(headline(results)).replace(" — ", "\n")
    ncols = min(3, len(passes))
    nrows = math.ceil(len(passes) / ncols)
    panel_height = 0.8 + 0.2 * len(cases) * len(names)
    fig = Figure(figsize=(5.4 * ncols, panel_height * nrows + 2.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    bar_height = 0.8 / len(names)
    for ax, pass_name in zip(axes, passes):
        for i, name in enumerate(names):
            for j, case in enumerate(cases):
                if (case["name"], name, pass_name) not in drawn:
                    continue
                ratio, spread = drawn[case["name"], name, pass_name]
                y = j + (i - (len(names) - 1) / 2) * bar_height
                ax.barh(y, ratio, bar_height * 0.9, color=f"C{i}", alpha=1 if spread["ranked"] else 0.45,
                        hatch=None if spread["ranked"] else "//",
                        xerr=[[ratio - spread["q1"]], [spread["q3"] - ratio]],
                        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"})
                ax.annotate(f"{ratio:.2g}×" + ("" if spread["ranked"] else UNRANKED_MARK),
                            (max(ratio, spread["q3"]), y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ax.axvline(1, color="black", lw=1.2)
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        low, high = min(low, 0.5), max(high, 2) * 2  # 1× in view, room for the labels
        ax.set_xlim(low, high)
        # ticks at 1, 2, 5 × 10^k over a short range; at powers of ten only over a long one
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high / low < 10**2.5 else (1,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels([c["name"] for c in cases], fontsize=8)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.set_title(pass_name, fontsize=10)
        ax.set_xlabel(f"baseline time / {ours} time (right of 1×: {ours} faster)", fontsize=7)
        if ax is axes[0]:
            ax.legend(handles=[Patch(color=f"C{i}", label=f"vs {name}") for i, name in enumerate(names)],
                      fontsize=7, loc="best")
    for ax in axes[len(passes):]:
        ax.set_visible(False)
    notes = (f"pale and hatched, {UNRANKED_MARK}: the middle half of the per-round ratios spans 1 "
             f"(unranked); whiskers: interquartile range")
    withheld = sum(s["interfered"] for c in results["cases"] for by_pass in c["speedup_spread"].values()
                   for s in by_pass.values())
    if withheld:
        notes += f"; {withheld} speed-ups withheld ({INTERFERED_MARK} in the table: interfered)"
    not_timed = [f"{c['name']} ({c['status']})" for c in results["cases"] if c["status"] != "ok"]
    if not_timed:
        notes += "; not timed: " + ", ".join(not_timed)
    _fit_title(fig, title + "\n" + notes, fontsize=9)
    fig.canvas.draw()
    return fig


def plot(results: dict, path) -> Optional[str]:
    """Write the speed-up chart (:func:`figure`) to ``path`` as a PNG; with nothing to compare,
    write nothing and return why (None when written)."""
    fig = figure(results)
    if fig is None:
        return nothing_to_draw(results)
    fig.savefig(path, dpi=100)
    return None
