"""Charts for the report: matplotlib (Agg) rendered to inline SVG strings.

Text in the figures comes from data (arm names, sources, cluster labels); matplotlib
escapes SVG text itself, and ``tests/report/test_charts.py`` proves it, so the SVG
can be embedded as markup.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["Point", "forest", "grouped_bars", "lines"]

# One colour per source, the same in every chart (colour-blind safe Okabe–Ito).
SOURCE_COLOURS = {"human": "#000000", "sim_dynamic": "#E69F00", "sim_judgement": "#0072B2"}
_FALLBACK = ["#009E73", "#CC79A7", "#D55E00", "#56B4E9"]
_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


@dataclass(frozen=True)
class Point:
    """One estimate to plot: a row label, its source (colour) and its CI."""

    label: str
    source: str
    value: float
    ci_low: float
    ci_high: float


def colour(source: str, order: Sequence[str] = ()) -> str:
    """The source's colour (stable across charts)."""
    if source in SOURCE_COLOURS:
        return SOURCE_COLOURS[source]
    i = list(order).index(source) if source in order else len(source)
    return _FALLBACK[i % len(_FALLBACK)]


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    # Text stays text (smaller, selectable); fixed salt and no date keep output reproducible.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "simlab"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return _XML_HEAD.sub("", buf.getvalue(), count=1).strip()


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def forest(
    points: Sequence[Point],
    *,
    title: str,
    xlabel: str,
    refs: Mapping[str, float] | None = None,
) -> str:
    """Point estimates with 95% CIs, one row per label, sources dodged vertically.

    ``refs`` draws labelled vertical reference lines (e.g. chance, the human ceiling).
    """
    labels = list(dict.fromkeys(p.label for p in points))
    sources = list(dict.fromkeys(p.source for p in points))
    k = max(len(sources), 1)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(labels) * max(1, k * 0.6)))
    step = 0.6 / k
    for si, src in enumerate(sources):
        ys, xs, lo, hi = [], [], [], []
        for p in points:
            if p.source != src or not _finite(p.value):
                continue
            y = labels.index(p.label) + (si - (k - 1) / 2) * step
            ys.append(y)
            xs.append(p.value)
            low = p.ci_low if _finite(p.ci_low) else p.value
            high = p.ci_high if _finite(p.ci_high) else p.value
            lo.append(max(p.value - low, 0.0))
            hi.append(max(high - p.value, 0.0))
        if ys:
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=colour(src, sources), ecolor=colour(src, sources),
                        capsize=3, markersize=5, label=src)
    for name, x in (refs or {}).items():
        if _finite(x):
            ax.axvline(x, color="#888888", linestyle="--", linewidth=1)
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="#555555")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(axis="x", color="#e5e5e5")
    ax.spines[["top", "right"]].set_visible(False)
    if len(sources) > 1:
        ax.legend(fontsize=8, frameon=False, loc="best")
    return _svg(fig)


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str, ylabel: str) -> str:
    """Bars per category, one bar per series (source) side by side."""
    cats = list(categories)
    names = list(series)
    k = max(len(names), 1)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(4.8, min(9.0, 0.5 * len(cats) * k + 2)), 3.2))
    for i, name in enumerate(names):
        xs = [c + (i - (k - 1) / 2) * width for c in range(len(cats))]
        ax.bar(xs, list(series[name])[: len(cats)], width=width, color=colour(name, names), label=name)
    ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 6 else 0, ha="right" if len(cats) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    if len(names) > 1:
        ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str, ylabel: str) -> str:
    """One line per series: ``{name: (xs, ys)}``."""
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    names = list(series)
    for name in names:
        xs, ys = series[name]
        ax.plot(list(xs), list(ys), marker="o", color=colour(name, names), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(color="#e5e5e5")
    ax.spines[["top", "right"]].set_visible(False)
    if len(names) > 1:
        ax.legend(fontsize=8, frameon=False)
    return _svg(fig)
