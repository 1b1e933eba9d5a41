"""A PNG bar chart of devices/s per configuration, with the floor and mfg_tool as lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the chart; returns its path, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = [(b["label"], b["devices_per_s"]) for b in results.get("bars", [])]
    refs = results.get("references", {})
    fig, ax = plt.subplots(figsize=(10, 5.5))
    labels = [label for label, _ in bars]
    values = [value for _, value in bars]
    rects = ax.bar(range(len(bars)), values, color="#4C72B0")
    ax.bar_label(rects, fmt="%.0f", padding=2)
    ax.set_xticks(range(len(bars)), labels, rotation=20, ha="right")
    styles = {"floor": ("#C44E52", "--"), "mfg_tool": ("#55A868", ":")}
    for name, value in refs.items():
        if value:
            color, style = styles.get(name, ("grey", "-."))
            ax.axhline(value, color=color, linestyle=style, label=f"{name}: {value:.0f}/s")
    ax.set_ylabel("devices / s")
    meta = results.get("machine", {})
    ax.set_title(
        f"matterfab throughput at {results.get('iterations', 10000)} PBKDF2 iterations "
        f"({meta.get('cpus', '?')} cores, load avg at start {meta.get('loadavg_start', '?')})"
    )
    if any(refs.values()):
        ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
