"""Figures, their summary statistics, the printed table and the JSON file."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Side:
    samples: list[float] = field(default_factory=list)
    na: str | None = None  # why there is no figure (e.g. "HTTP 404")
    cpu_s: float = 0.0  # server CPU seconds spent in this workload
    mismatches: list[str] = field(default_factory=list)  # wrong answers (counts, sizes)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu_s": round(self.cpu_s, 3)}
        if self.na is not None or not self.samples:
            out["na"] = self.na or "no sample"
        else:
            out.update(
                median=statistics.median(self.samples),
                min=min(self.samples),
                max=max(self.samples),
                n=len(self.samples),
            )
        if self.mismatches:
            out["mismatches"] = self.mismatches[:5]
        return out


@dataclass
class Figure:
    name: str
    unit: str
    higher_is_better: bool
    sides: dict[str, Side] = field(default_factory=dict)

    def side(self, name: str) -> Side:
        return self.sides.setdefault(name, Side())

    def speedup(self) -> float | None:
        """How many times faster ours is than Orthanc (> 1: ours ahead)."""
        a, b = self.sides.get("ours"), self.sides.get("orthanc")
        if not a or not b or a.na or b.na or not a.samples or not b.samples:
            return None
        ma, mb = statistics.median(a.samples), statistics.median(b.samples)
        if ma <= 0 or mb <= 0:
            return None
        return ma / mb if self.higher_is_better else mb / ma

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "sides": {k: v.summary() for k, v in self.sides.items()},
            "speedup_ours_vs_orthanc": self.speedup(),
        }


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(side: Side | None) -> str:
    if side is None:
        return "-"
    if side.na is not None or not side.samples:
        return f"n/a ({side.na or 'no sample'})"
    med, lo, hi = statistics.median(side.samples), min(side.samples), max(side.samples)
    text = f"{_fmt(med)} [{_fmt(lo)}–{_fmt(hi)}]"
    return text + (" !" if side.mismatches else "")


def table(figures: list[Figure], sides: list[str], totals: dict[str, dict[str, Any]]) -> str:
    head = ["figure", "unit", *[f"{s} median [min–max]" for s in sides]]
    if len(sides) == 2:
        head.append("ours ×")
    head += [f"cpu s {s}" for s in sides]
    rows = [head]
    for f in figures:
        row = [f.name, f.unit, *[cell(f.sides.get(s)) for s in sides]]
        if len(sides) == 2:
            sp = f.speedup()
            row.append(f"{sp:.2f}" if sp is not None else "-")
        row += [f"{f.sides[s].cpu_s:.1f}" if s in f.sides else "-" for s in sides]
        rows.append(row)
    rows.append(
        ["peak RSS (process tree)", "MB", *[f"{totals[s]['peak_rss_mb']:.0f}" for s in sides]]
        + ([""] if len(sides) == 2 else [])
        + [""] * len(sides)
    )
    rows.append(
        ["CPU, whole run", "s", *[f"{totals[s]['cpu_s']:.1f}" for s in sides]]
        + ([""] if len(sides) == 2 else [])
        + [""] * len(sides)
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
