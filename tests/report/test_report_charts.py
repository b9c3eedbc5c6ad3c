"""Charts are inline SVG whose data-derived text cannot inject markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from simlab.report import charts
from simlab.report.charts import Point

EVIL = '<script>alert(1)</script><img src=x onerror="x()">'


def _tags(svg: str) -> set[str]:
    return {el.tag.split("}")[-1] for el in ET.fromstring(svg).iter()}


def test_forest_escapes_labels_and_is_well_formed_svg():
    svg = charts.forest([Point(EVIL, "human", 0.5, 0.1, 0.9), Point(EVIL, f"sim {EVIL}", 0.2, -0.1, 0.4)],
                        title=EVIL, xlabel="x", refs={EVIL: 0.0})
    assert svg.startswith("<svg")
    assert "<script" not in svg.lower() and "<img" not in svg.lower()
    assert "&lt;script&gt;" in svg  # the label is there, as text
    assert _tags(svg).isdisjoint({"script", "img", "foreignObject", "iframe"})


def test_bars_and_lines_escape_category_and_series_names():
    for svg in (charts.grouped_bars([EVIL, "b"], {EVIL: [0.5, 0.5]}, title="t", ylabel="y"),
                charts.lines({EVIL: ([1, 2], [3.0, 4.0]), "human": ([1, 2], [2.0, 1.0])}, title="t", xlabel="x", ylabel="y")):
        assert "<script" not in svg.lower() and "&lt;script&gt;" in svg
        assert _tags(svg).isdisjoint({"script", "img", "foreignObject"})


def test_missing_intervals_are_drawn_without_error():
    svg = charts.forest([Point("a", "human", 0.5, float("nan"), float("nan")), Point("b", "human", float("nan"), 0, 1)],
                        title="t", xlabel="x")
    assert "<svg" in svg
