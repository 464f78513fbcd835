"""Charts as SVG strings, drawn on the server: no script, no library, nothing fetched.

Each chart is a fixed ``viewBox`` scaled to the width of its box by the browser. Every
bar or point carries a ``<title>``, which browsers show on hover. Colours come from
classes styled in ``outbox/dashboard.css``, so the admin's dark mode applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["Series", "bars", "duration", "lines"]

WIDTH, HEIGHT = 640, 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 10, 22
_PLOT_W, _PLOT_H = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM


@dataclass
class Series:
    """One named row of values (None: no value) drawn with the CSS class ``kind``."""

    name: str
    values: Sequence[float | None]
    kind: str


def duration(seconds: float | None) -> str:
    """A duration people read: "4 ms", "1.2 s", "3 min", "2 h"; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


def _nice(top: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``top`` (1 for nothing)."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= top)


def _frame(top: float, labels: Sequence[str], fmt: Callable[[float], str], title: str) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="outbox-chart" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for fraction in (0, 0.5, 1):
        y = _TOP + _PLOT_H * (1 - fraction)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(top * fraction))}</text>"
        )
    count = len(labels)
    every = max(1, math.ceil(count / 6))
    for i in range(0, count, every):
        x = _LEFT + _PLOT_W * (i + 0.5) / count
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(labels[i])}</text>'
        )
    return parts


def bars(
    series: Sequence[Series],
    labels: Sequence[str],
    *,
    unit: str = "",
    title: str = "",
    fmt: Callable[[float], str] = _number,
) -> SafeString:
    """Stacked bars, one per label: each series' value on top of the previous ones'."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    top = _nice(max(totals, default=0))
    parts = _frame(top, labels, fmt, title)
    width = _PLOT_W / max(len(labels), 1)
    for i, label in enumerate(labels):
        base = 0.0
        for s in series:
            value = s.values[i] or 0
            if not value:
                continue
            y0, y1 = _y(base, top), _y(base + value, top)
            parts.append(
                f'<rect class="{escape(s.kind)}" x="{_LEFT + width * i + 0.5:.1f}" y="{y1:.1f}" '
                f'width="{max(width - 1, 0.5):.1f}" height="{max(y0 - y1, 0.5):.1f}">'
                f"<title>{escape(label)}: {escape(fmt(value))}{escape(unit)} {escape(s.name)}</title></rect>"
            )
            base += value
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped


def lines(
    series: Sequence[Series],
    labels: Sequence[str],
    *,
    unit: str = "",
    title: str = "",
    fmt: Callable[[float], str] = _number,
) -> SafeString:
    """One line per series, broken where a value is None; a dot on each value."""
    top = _nice(max((v for s in series for v in s.values if v is not None), default=0))
    parts = _frame(top, labels, fmt, title)
    count = max(len(labels), 1)
    for s in series:
        runs: list[list[str]] = [[]]  # points between gaps (None)
        dots = []
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x, y = _LEFT + _PLOT_W * (i + 0.5) / count, _y(value, top)
            runs[-1].append(f"{x:.1f},{y:.1f}")
            dots.append(
                f'<circle class="{escape(s.kind)}" cx="{x:.1f}" cy="{y:.1f}" r="2">'
                f"<title>{escape(labels[i])}: {escape(s.name)} {escape(fmt(value))}{escape(unit)}"
                "</title></circle>"
            )
        parts += [
            f'<polyline class="{escape(s.kind)}" points="{" ".join(run)}"/>' for run in runs if len(run) > 1
        ]
        parts.extend(dots)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped


def _y(value: float, top: float) -> float:
    return _TOP + _PLOT_H * (1 - min(value / top, 1))
