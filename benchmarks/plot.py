"""The latency distributions of every path, one panel per table, as a PNG (matplotlib, Agg).

Boxes span p25..p75 with the median marked, whiskers reach p1 and p99, and a
dot marks p99.9; the x axis is logarithmic so a 100 µs path and a 5 ms one
read on the same panel:

```python
plot_latencies({"seq/nginx-200": {"httpx": [...], "mesh": [...]}}, Path("latency.png"), title)
```
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.stats import percentile

__all__ = ["plot_latencies"]


def plot_latencies(
    tables: dict[str, dict[str, list[float]]], path: Path, title: str
) -> Path | None:
    """Draw one horizontal box plot panel per table; return `path`, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, StrMethodFormatter
    except ImportError:
        return None
    panels = [(name, paths) for name, paths in tables.items() if any(paths.values())]
    if not panels:
        return None
    heights = [max(1.6, 0.38 * len(paths) + 0.9) for _, paths in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (name, paths) in zip(axes[:, 0], panels, strict=True):
        labels = [label for label, values in paths.items() if values]
        data = [paths[label] for label in labels]
        ax.boxplot(
            data,
            orientation="horizontal",
            whis=(1, 99),
            showfliers=False,
            widths=0.6,
            medianprops={"color": "tab:red"},
        )
        for i, values in enumerate(data, start=1):
            ax.plot([percentile(sorted(values), 99.9)], [i], marker=".", color="grey")
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(StrMethodFormatter("{x:.0f}"))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[-1, 0].set_xlabel(
        "latency per request, µs (log scale); box p25..p75, whiskers p1..p99, dot p99.9"
    )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
