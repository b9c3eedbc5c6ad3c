"""Charts for the report: matplotlib (Agg) rendered to inline SVG strings.

Text in the figures comes from data (arm names, sources, cluster labels); matplotlib
escapes SVG text itself, and ``tests/report/test_charts.py`` proves it, so the SVG
can be embedded as markup.
"""

from __future__ import annotations

import colorsys
import io
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["Point", "colour", "forest", "grouped_bars", "lines", "text"]

# One colour per source, the same in every chart (colour-blind safe Okabe–Ito); the humans'
# split-half row of a leaderboard is drawn as the humans are.
SOURCE_COLOURS = {"human": "#000000", "humans": "#000000", "sim_dynamic": "#E69F00", "sim_judgement": "#0072B2"}
# then the rest of Okabe–Ito and darker tones of Tableau 10 (none of them black or the fixed ones)
_FALLBACK = ["#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#7F3C8D", "#11A579", "#3969AC", "#E73F74",
             "#80BA5A", "#8C564B", "#A5AA99"]
_GOLDEN = 0.618033988749895
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
    """The source's colour (stable across charts): the fixed ones, then, by position among the other
    sources of ``order``, a palette of distinct colours and beyond it hues spread by the golden
    ratio, so any number of sources get distinct colours; a source not in ``order`` gets one by a
    hash of its name.

    >>> colour("human"), colour("sim_dynamic:a", ["human", "sim_dynamic:a"])
    ('#000000', '#009E73')
    >>> len({colour(s, [f"v{i}" for i in range(40)]) for s in (f"v{i}" for i in range(40))})
    40
    """
    if source in SOURCE_COLOURS:
        return SOURCE_COLOURS[source]
    others = [s for s in dict.fromkeys(order) if s not in SOURCE_COLOURS]
    i = others.index(source) if source in others else zlib.crc32(source.encode("utf-8")) % len(_FALLBACK)
    if i < len(_FALLBACK):
        return _FALLBACK[i]
    hue = ((i - len(_FALLBACK)) * _GOLDEN) % 1.0
    lightness = (0.38, 0.5, 0.62)[(i // 7) % 3]  # hues repeat less than a colour does
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}"


def text(label: str) -> str:
    """Data text as matplotlib shows it literally: a ``$`` in a name would start mathematics (and a
    stray one fail the figure)."""
    return label.replace("$", r"\$")


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
    dodge: bool = True,
    colours: Sequence[str] = (),
) -> str:
    """Point estimates with 95% CIs, one row per label, sources dodged vertically.

    ``refs`` draws labelled vertical reference lines (e.g. chance, the human ceiling). ``dodge=False``
    draws every point on its label's line (one point per label, e.g. one row per source).
    ``colours``: the source order that picks colours (default: the order of ``points``).
    """
    labels = list(dict.fromkeys(p.label for p in points))
    sources = list(dict.fromkeys(p.source for p in points))
    order = list(colours) or sources
    k = max(len(sources), 1) if dodge else 1
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(labels) * max(1, k * 0.6)))
    step = 0.6 / k
    for si, src in enumerate(sources):
        ys, xs, lo, hi = [], [], [], []
        for p in points:
            if p.source != src or not _finite(p.value):
                continue
            y = labels.index(p.label) + ((si - (k - 1) / 2) * step if dodge else 0.0)
            ys.append(y)
            xs.append(p.value)
            low = p.ci_low if _finite(p.ci_low) else p.value
            high = p.ci_high if _finite(p.ci_high) else p.value
            lo.append(max(p.value - low, 0.0))
            hi.append(max(high - p.value, 0.0))
        if ys:
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=colour(src, order), ecolor=colour(src, order),
                        capsize=3, markersize=5, label=text(src))
    for name, x in (refs or {}).items():
        if _finite(x):
            ax.axvline(x, color="#888888", linestyle="--", linewidth=1)
            ax.annotate(text(name), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="#555555")
    ax.set_yticks(range(len(labels)), [text(label) for label in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
    ax.set_xlabel(text(xlabel))
    ax.set_title(text(title), fontsize=11, loc="left")
    ax.grid(axis="x", color="#e5e5e5")
    ax.spines[["top", "right"]].set_visible(False)
    if len(sources) > 1 and dodge:
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
