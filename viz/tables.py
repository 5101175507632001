"""Scalar results as tables and bar charts: localisation scores, the cross-attention gates.

    rows = [{"map": "cross_attention", "pointing_game": 0.8, "energy_in_mask": 0.4,
             "random_pointing_game": 0.2, "random_energy": 0.1, "n": 300}, ...]
    fig = localisation_table(rows)
    fig = localisation_bars(rows, metric="energy_in_mask")     # baseline from "random_energy"
    fig = gate_values({"cross 0 attn": 0.31, "cross 0 ff": -0.05})
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .arrays import to_numpy
from .style import LABEL_SIZE, PALETTE, TICK_SIZE, new_figure, set_labels, set_title


def _check_rows(rows: Sequence[dict]) -> list[dict]:
    rows = list(rows)
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, one per map, like "
                         '{"map": "cross_attention", "pointing_game": 0.8, ...}')
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def localisation_table(rows: Sequence[dict], title: str | None = "localisation") -> Figure:
    """The rows as a table: one line per row, one column per key (in order of first use)."""
    rows = _check_rows(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(k)) for k in columns] for r in rows]
    headers = [textwrap.fill(c.replace("_", " "), 10) for c in columns]
    header_lines = max(h.count("\n") + 1 for h in headers)
    widths = [max(max(len(line) for line in h.split("\n")), *(len(row[j]) for row in cells)) + 2
              for j, h in enumerate(headers)]  # characters per column
    line_in = 0.2  # inches per text line
    fig = Figure(figsize=(0.085 * sum(widths) + 0.3,
                          line_in * (1.6 * len(rows) + header_lines + 0.6) + 0.35),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    table = ax.table(cellText=cells, colLabels=headers, cellLoc="center", bbox=[0, 0, 1, 1],
                     colWidths=[w / sum(widths) for w in widths])
    table.auto_set_font_size(False)
    table.set_fontsize(TICK_SIZE + 1)
    unit = 1.0 / (1.6 * len(rows) + header_lines + 0.6)  # axes height per text line
    for (r, _), cell in table.get_celld().items():
        cell.set_height(unit * ((header_lines + 0.6) if r == 0 else 1.6))
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#eeeeee")
    set_title(ax, title)
    return fig


def _baseline(row: dict, metric: str, baseline_key: str) -> float | None:
    """row[f"{baseline_key}_{metric}"], or the `{baseline_key}_*` key whose suffix starts the
    metric's name ("random_energy" for "energy_in_mask"), or None."""
    exact = row.get(f"{baseline_key}_{metric}")
    if exact is not None:
        return float(exact)
    stem = f"{baseline_key}_"
    for key, value in row.items():
        if key.startswith(stem) and metric.startswith(key[len(stem):]) and value is not None:
            return float(value)
    return None


def localisation_bars(rows: Sequence[dict], metric: str = "pointing_game",
                      baseline_key: str = "random", label_key: str = "map") -> Figure:
    """One bar per row's `metric`, with its baseline as a dashed line across the bar.

    The baseline is the row's `{baseline_key}_{metric}` (or a shorter `{baseline_key}_*` key
    the metric starts with, e.g. random_energy for energy_in_mask), or, when a row's
    `label_key` equals `baseline_key`, that row's value (drawn as a line, not a bar).
    """
    rows = _check_rows(rows)
    missing = [r.get(label_key, i) for i, r in enumerate(rows) if metric not in r]
    if missing:
        raise ValueError(f"metric {metric!r} missing from rows {missing}; "
                         f"keys present: {sorted({k for r in rows for k in r})}")
    common = [r for r in rows if r.get(label_key) == baseline_key]
    bars = [r for r in rows if r.get(label_key) != baseline_key]
    if not bars:
        raise ValueError(f"every row is the {baseline_key!r} baseline; nothing to draw")
    fig, axes = new_figure(size=(max(3.0, 0.9 * len(bars) + 1.5), 3.0))
    ax = axes[0, 0]
    x = np.arange(len(bars))
    values = [float(r[metric]) for r in bars]
    ax.bar(x, values, color=PALETTE[0], width=0.7, zorder=2)
    for xi, v in zip(x, values):
        ax.text(xi, v, f"{v:.2f}", ha="center", va="bottom", fontsize=TICK_SIZE)
    labelled = False
    for xi, r in zip(x, bars):
        base = float(common[0][metric]) if common else _baseline(r, metric, baseline_key)
        if base is not None:
            ax.hlines(base, xi - 0.45, xi + 0.45, colors="black", linestyles="--",
                      linewidth=1.2, zorder=3, label=None if labelled else baseline_key)
            labelled = True
    ax.set_xticks(x, [str(r.get(label_key, i)) for i, r in enumerate(bars)],
                  rotation=30 if len(bars) > 3 else 0, ha="right" if len(bars) > 3 else "center")
    top = max([*values, 1e-9])
    ax.set_ylim(0, 1.05 if top <= 1 else top * 1.1)
    set_labels(ax, None, metric.replace("_", " "))
    set_title(ax, metric.replace("_", " "))
    if labelled:
        ax.legend(fontsize=LABEL_SIZE, loc="upper right")
    return fig


def gate_values(gates: dict[str, float], title: str = "cross-attention gates tanh(g)") -> Figure:
    """One bar per gate: the tanh gate scalars per layer (0 = that path is shut)."""
    if not isinstance(gates, dict) or not gates:
        raise ValueError("gates must be a non-empty dict name -> scalar, like "
                         '{"cross 0 attn": 0.3, "cross 0 ff": -0.1}')
    values = []
    for name, v in gates.items():
        a = to_numpy(v, f"gates[{name!r}]")
        if a.size != 1:
            raise ValueError(f"gates[{name!r}] must be a scalar (shape ()), got {a.shape}")
        values.append(float(a.reshape(())))  # () scalar
    fig, axes = new_figure(size=(max(3.0, 0.6 * len(values) + 1.5), 2.8))
    ax = axes[0, 0]
    x = np.arange(len(values))
    colours = [PALETTE[0] if v >= 0 else PALETTE[3] for v in values]
    ax.bar(x, values, color=colours, width=0.7, zorder=2)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, list(gates), rotation=30 if len(values) > 3 else 0,
                  ha="right" if len(values) > 3 else "center")
    bound = max(1.05, 1.1 * max(abs(v) for v in values))  # tanh gates live in [-1, 1]
    ax.set_ylim(-bound, bound)
    set_labels(ax, None, "tanh gate")
    set_title(ax, title)
    return fig
