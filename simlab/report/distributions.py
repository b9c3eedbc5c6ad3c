"""The report section of the distribution comparison (``simlab.fidelity.analyses.distributions``): per
instrument, each source's answers overlaid on the humans' (an inline SVG step histogram), a table of
``sd_ratio`` and ``w1_excess`` with their CIs, and a verdict sentence naming every spread collapse.

Text comes from data (instrument, arm and source names): matplotlib escapes SVG text and the template
escapes the rest, as for every other section.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from simlab.fidelity.distributions_result import DistributionComparison, DistributionsResult, Histogram  # noqa: E402
from simlab.report import charts  # noqa: E402
from simlab.report.sections import Row, Section, estimate_row, fmt, fmt_ci, new_section, unavailable  # noqa: E402

__all__ = ["overlay", "section"]

KEY = "distributions"


def overlay(histograms: dict[str, Histogram], *, title: str, xlabel: str) -> str:
    """Each source's histogram as a step line on shared bins (human first, in black), as inline SVG."""
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    names = list(histograms)
    for name, h in histograms.items():
        if len(h.edges) != len(h.shares) + 1 or not h.shares:
            continue
        ax.stairs(h.shares, h.edges, color=charts.colour(name, names), linewidth=1.6,
                  label=charts.text(f"{name} (n = {h.n}, SD {fmt(h.sd)})"))
    ax.set_xlabel(charts.text(xlabel))
    ax.set_ylabel("share of answers")
    ax.set_title(charts.text(title), fontsize=11, loc="left")
    ax.grid(color="#e5e5e5")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "simlab"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):].strip()


def _rows(s: Section, what: str, src: str, c: DistributionComparison) -> None:
    if c.status != "ok":
        s.rows.append(Row(src, what, unavailable(c.status, c.reason)))
        return
    s.rows.append(estimate_row(src, f"{what}: SD ratio (sim / human)", c.sd_ratio))
    s.rows.append(estimate_row(src, f"{what}: W1 excess (bias-corrected distance)", c.w1_excess))


def section(r: DistributionsResult, turns: pd.DataFrame | None = None) -> Section:
    """The distributions section: a chart per instrument, the table, and which spreads collapsed."""
    s = new_section(KEY, r.status)
    collapses: list[str] = []
    wider: list[str] = []
    for name, inst in r.instruments.items():
        if inst.histograms:
            s.charts.append(overlay(inst.histograms, title=f"{name} ({inst.table})", xlabel=name))
        for src, c in inst.pooled.items():
            _rows(s, name, src, c)
            e = c.sd_ratio
            if c.spread_collapse and e is not None:
                collapses.append(f"{name} of {src} (SD ratio {fmt(e.value)}, 95% CI {fmt_ci(e)})")
            elif e is not None and e.ci_low > 1:
                wider.append(f"{name} of {src} (SD ratio {fmt(e.value)}, 95% CI {fmt_ci(e)})")
        for arm, by_source in inst.per_arm.items():
            for src, c in by_source.items():
                _rows(s, f"{name} [{arm}]", src, c)
                e = c.sd_ratio
                if c.spread_collapse and e is not None and (inst.per_arm_only or not inst.pooled):
                    collapses.append(f"{name} of {src} in arm {arm} (SD ratio {fmt(e.value)}, 95% CI {fmt_ci(e)})")
    if collapses:
        s.verdicts.append("Spread collapse in " + "; ".join(collapses) + ": the simulated answers are less spread "
                          "out than people's (the CI of SD(sim) / SD(human) lies below 1).")
    elif r.instruments:
        s.verdicts.append("No spread collapse: no CI of SD(sim) / SD(human) over every arm lies below 1.")
    if wider:
        s.verdicts.append("More spread out than people: " + "; ".join(wider) + ".")
    s.verdicts.append("W1 excess is the Wasserstein-1 distance between the simulated and human answers (in the "
                      "instrument's units) minus what relabelling whole participants gives by chance: about 0 "
                      "when the two distributions are alike.")
    return s
