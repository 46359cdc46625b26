"""The bench's speed-ups as a PNG (``cudeconv bench --plot``)."""
from __future__ import annotations

import math

from .problem import PASSES
from .table import UNRANKED_MARK, headline

def plot(results: dict, path) -> None:
    """A PNG of speed-ups: one panel per pass; per case, a bar per baseline at (baseline's time /
    cudeconv's time) with its value written beside it and its IQR as a whisker, on a log axis with
    the 1× line marked. Unranked ratios are drawn hatched and pale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ours = results["backend"]
    cases = [c for c in results["cases"] if c["speedup"]]
    names = list(dict.fromkeys(n for c in cases for n in c["speedup"]))
    passes = [p for p in PASSES if any(p in c["speedup"][n] for c in cases for n in c["speedup"])]
    title = f"cudeconv bench: {ours} vs baselines\n" + "\n".join(headline(results)).replace(" — ", "\n")
    not_timed = [f"{c['name']} ({c['status']})" for c in results["cases"] if c["status"] != "ok"]
    if not passes:
        fig = Figure(figsize=(9, 3.5), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.axis("off")
        reasons = sorted({t["skipped"] for c in results["cases"] for t in c["baselines"].values() if "skipped" in t})
        ax.text(0.5, 0.5, "no baseline was timed, nothing to compare:\n" + "\n".join(reasons),
                ha="center", va="center", wrap=True, fontsize=9)
        fig.suptitle(title, fontsize=9)
        fig.savefig(path, dpi=100)
        return
    ncols = min(3, len(passes))
    nrows = math.ceil(len(passes) / ncols)
    panel_height = 0.8 + 0.2 * len(cases) * len(names)
    fig = Figure(figsize=(5.4 * ncols, panel_height * nrows + 1.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    bar_height = 0.8 / len(names)
    for ax, pass_name in zip(axes, passes):
        for i, name in enumerate(names):
            rows = [(j, c["speedup"][name][pass_name], c["speedup_spread"][name][pass_name])
                    for j, c in enumerate(cases) if pass_name in c["speedup"].get(name, {})]
            for j, ratio, spread in rows:
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
        ax.set_xlabel(f"{ours} speed-up: baseline time / {ours} time (right of the 1× line: {ours} faster)",
                      fontsize=7)
        if ax is axes[0]:
            ax.legend(handles=[Patch(color=f"C{i}", label=f"vs {name}") for i, name in enumerate(names)],
                      fontsize=7, loc="best")
    for ax in axes[len(passes):]:
        ax.set_visible(False)
    notes = (f"pale and hatched, {UNRANKED_MARK}: the middle half of the per-round ratios spans 1 "
             f"(unranked); whiskers: interquartile range")
    if not_timed:
        notes += "; not timed: " + ", ".join(not_timed)
    fig.suptitle(title + "\n" + notes, fontsize=9)
    fig.savefig(path, dpi=100)
