"""Chart geometry for the pages: computed here, drawn as inline SVG by the templates.

Charts are pictures of a table that the page shows beside them (the text alternative), so
they carry no number that the table does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SERIES = 8  # CSS classes s0..s7; more series reuse them


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    css: str
    label: str  # the SVG <title>: what a pointer hovering the bar shows


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "start"
    css: str = ""


@dataclass
class Chart:
    width: int
    height: int
    summary: str  # aria-label
    bars: list[Bar] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    lines: list[tuple[float, float, float, float]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (css, name)


def number(value: Any) -> float | None:
    """A cell as a number, if it is one (decimals may arrive as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def short(value: Any, limit: int = 18) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def cell(value: Any) -> str:
    """A result cell as the table shows it: numbers as the chart labels them."""
    if value is None:
        return "—"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return fmt(float(value)) if math.isfinite(value) else str(value)
    return str(value)


def result_bars(title: str, columns: list[str], rows: list[list[Any]],
                limit: int = 20) -> Chart | None:
    """Horizontal bars of a query result: the first column that is not numeric labels the
    bars, the first numeric one sizes them. None when the result has no such pair."""
    if not rows or len(columns) < 2:
        return None
    numeric = [i for i in range(len(columns))
               if all(number(r[i]) is not None for r in rows if i < len(r))]
    labels = [i for i in range(len(columns)) if i not in numeric]
    if not numeric:
        return None
    value_col = numeric[0] if labels else (numeric[1] if len(numeric) > 1 else None)
    label_col = labels[0] if labels else numeric[0]
    if value_col is None:
        return None
    shown = [r for r in rows[:limit] if len(r) > max(label_col, value_col)]
    values = [number(r[value_col]) or 0.0 for r in shown]
    top = max([abs(v) for v in values] + [0.0]) or 1.0
    row_h, left, span, width = 30, 124, 212, 400
    chart = Chart(width, row_h * len(shown) + 8,
                  f"{title}: {columns[value_col]} by {columns[label_col]}, as bars; "
                  "the table below has the numbers")
    for i, (row, value) in enumerate(zip(shown, values, strict=True)):
        y = 4 + i * row_h
        w = max(1.0, span * abs(value) / top)
        chart.texts.append(Text(left - 8, y + 19, short(row[label_col]), "end"))
        chart.bars.append(Bar(left, y + 5, round(w, 1), 20, "s0",
                              f"{row[label_col]}: {fmt(value)}"))
        chart.texts.append(Text(left + w + 6, y + 19, fmt(value), "start", "value"))
    return chart


def usage_chart(hours: list[float], series: list[tuple[str, str, list[int]]],
                refused: list[int], hour_label: Any, legend: list[tuple[str, str]]) -> Chart:
    """Stacked bars, one per hour: a segment per series (category and operation, coloured
    by category), the refused calls on top in the refusal colour. ``series`` is
    (css, name, counts)."""
    width, height, left, bottom, top_pad = 960, 260, 44, 30, 12
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    totals = [sum(s[2][i] for s in series) + refused[i] for i in range(len(hours))]
    peak = max([*totals, 1])
    scale = _nice(peak)
    chart = Chart(width, height, f"KMS calls per hour over the last {len(hours)} hours, by "
                  "category and operation, refused calls in red; the table below has the "
                  "numbers")
    for tick in (0, scale / 2, scale):
        y = top_pad + plot_h - plot_h * tick / scale
        chart.lines.append((left, y, width - 8, y))
        chart.texts.append(Text(left - 6, y + 4, fmt(tick), "end", "axis"))
    slot = plot_w / max(1, len(hours))
    for i, start in enumerate(hours):
        x = left + i * slot + slot * 0.15
        y = top_pad + plot_h
        for css, name, counts in series:
            if counts[i]:
                h = plot_h * counts[i] / scale
                y -= h
                chart.bars.append(Bar(round(x, 1), round(y, 1), round(slot * 0.7, 1),
                                      round(h, 1), css,
                                      f"{hour_label(start)}: {name}: {counts[i]}"))
        if refused[i]:
            h = max(2.0, plot_h * refused[i] / scale)
            y -= h
            chart.bars.append(Bar(round(x, 1), round(y, 1), round(slot * 0.7, 1), round(h, 1),
                                  "refused", f"{hour_label(start)}: refused: {refused[i]}"))
            chart.texts.append(Text(round(x + slot * 0.35, 1), round(y - 3, 1),
                                    str(refused[i]), "middle", "refused-count"))
        if i % 3 == 0 or i == len(hours) - 1:
            chart.texts.append(Text(round(x + slot * 0.35, 1), height - 10,
                                    hour_label(start), "middle", "axis"))
    chart.legend = list(legend)
    if any(refused):
        chart.legend.append(("refused", "refused"))
    return chart


def _nice(peak: int) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``peak``."""
    magnitude = 10 ** max(0, math.floor(math.log10(peak)))
    for step in (1, 2, 5, 10):
        if step * magnitude >= peak:
            return float(step * magnitude)
    return float(10 * magnitude)
