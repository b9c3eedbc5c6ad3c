"""The self-contained HTML fidelity report.

>>> from simlab.report import write_html, write_run_report
>>> write_run_report("runs/quickstart-abc123", human="data/human")  # doctest: +SKIP
PosixPath('runs/quickstart-abc123/report.html')
>>> write_html(simlab.fidelity.compare(run, human), "report.html")  # doctest: +SKIP
>>> write_leaderboard_html(simlab.compare_simulators(runs=["runs/variants"]), "compare.html")  # doctest: +SKIP

One HTML file, no network: charts are inline SVG, there is no script, and a
Content-Security-Policy forbids any. All data text is escaped.
"""

from __future__ import annotations

from simlab.report.html import render_html, scrub, write_html
from simlab.report.leaderboard import render_leaderboard_html, write_leaderboard_html
from simlab.report.of_run import write_run_report

__all__ = ["render_html", "render_leaderboard_html", "scrub", "write_html", "write_leaderboard_html", "write_run_report"]
