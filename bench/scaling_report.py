"""The scaling sweep's tables, fitted slopes and plots (matplotlib, log2 x axis), for the bench's result file.

The slope is a least-squares line through (log2 x, log2 y): y grows by 2**slope each time x doubles. Time is the
training call's wall time for the rows sweep (where the work itself doubles) and seconds per example at the steady
rate for the length sweeps (where the steps are fixed); memory is the process's peak RSS.
"""

from __future__ import annotations

import math
from pathlib import Path

from common import Result

MIB = 2**20


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of log2 y against log2 x (NaN with fewer than two points)."""
    if len(xs) < 2:
        return math.nan
    lx, ly = [math.log2(x) for x in xs], [math.log2(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def seconds(sweep: str, r: Result) -> float:
    """The time the slope is fitted to: the whole training call (rows), or seconds per example (lengths)."""
    if sweep == "rows":
        return r.seconds
    rate = r.settings.get("steady_examples_per_s") or r.examples / r.seconds
    return 1 / rate


def slopes(sweep: str, points: list[tuple[int, str, Result]]) -> list[str]:
    """One line per side: how time and peak RSS grow per doubling."""
    lines = []
    what = "training call" if sweep == "rows" else "seconds per example"
    for side in dict.fromkeys(side for _, side, _ in points):
        mine = [(x, r) for x, s, r in points if s == side]
        xs = [x for x, _ in mine]
        time_slope = slope(xs, [seconds(sweep, r) for _, r in mine])
        rss = [r.peak_rss_bytes / MIB for _, r in mine]
        rss_slope = slope(xs, rss)
        per_doubling = (rss[-1] - rss[0]) / max(1, math.log2(xs[-1] / xs[0])) if len(xs) > 1 else math.nan
        lines.append(f"- {side}: {what} x{2 ** time_slope:.2f} per doubling (log-log slope {time_slope:.2f}); peak "
                     f"RSS x{2 ** rss_slope:.2f} per doubling (slope {rss_slope:.2f}), {per_doubling:+.0f} MiB per "
                     "doubling on average")
    return lines


def table(points: list[tuple[int, str, Result]]) -> str:
    header = ["x", "side", "examples/s (training call)", "examples/s (steady)", "tokens/s (steady)",
              "tokens per row (min-max)", "peak RSS", "training call", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for x, side, r in points:
        steady = r.settings.get("steady_examples_per_s")
        per_row = r.tokens / r.examples if r.examples else 0
        low, high = r.settings.get("train_tokens_min_max", [0, 0])
        lines.append("| " + " | ".join([
            str(x), side, f"{r.examples / r.seconds:.1f}", f"{steady:.1f}" if steady else "-",
            f"{steady * per_row:.0f}" if steady else "-", f"{low}-{high}", f"{r.peak_rss_bytes / MIB:.0f} MiB",
            f"{r.seconds:.1f} s", str(r.settings.get("steps", "?"))]) + " |")
    return "\n".join(lines)


def plot(title: str, axis: str, points: list[tuple[int, str, Result]], path: Path) -> None:
    """Two panels on a log2 x axis: examples/s (steady, solid; whole training call, dashed) and peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for side in dict.fromkeys(side for _, side, _ in points):
        mine = [(x, r) for x, s, r in points if s == side]
        xs = [x for x, _ in mine]
        line = speed.plot(xs, [r.settings.get("steady_examples_per_s") or math.nan for _, r in mine], marker="o",
                          label=f"{side}, steady")[0]
        speed.plot(xs, [r.examples / r.seconds for _, r in mine], marker="x", linestyle="--", color=line.get_color(),
                   label=f"{side}, training call")
        memory.plot(xs, [r.peak_rss_bytes / MIB for _, r in mine], marker="o", color=line.get_color(), label=side)
    for ax, label in ((speed, "examples/s"), (memory, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_yscale("log", base=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def section(found: dict[str, list[tuple[int, str, Result]]], titles: dict[str, tuple[str, str]], out: Path,
            prefix: str) -> list[str]:
    """The result file's scaling section: per sweep a plot (written to ``out``), the slopes and the table."""
    lines = ["## How cost grows", ""]
    for name, points in found.items():
        title, axis = titles[name]
        path = out / f"{prefix}-scaling-{name}.png"
        plot(f"{name}: {title}", axis, points, path)
        lines += [f"### {name}: {title} ({axis} doubling)", "", f"![{name}]({path.name})", "", *slopes(name, points),
                  "", table(points), ""]
    return lines
