"""Training curves from the trainer's metrics records (metrics.jsonl, one dict per line)."""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib.figure import Figure

from .style import new_figure


def plot_training_curves(records: Iterable[dict]) -> Figure:
    """Loss against step (log scale) and, when evaluations exist, their accuracies."""
    records = list(records)
    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = new_figure(ncols=2 if evals else 1)
    ax = axes[0, 0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        if all(r["loss"] > 0 for r in train):
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    if evals:
        ax2 = axes[0, 1]
        keys = [k for k in evals[-1] if k not in ("kind", "step", "samples", "train_seconds")
                and isinstance(evals[-1][k], (int, float)) and 0 <= evals[-1][k] <= 1]
        for k in keys:
            ax2.plot([r["step"] for r in evals], [r.get(k) for r in evals], marker="o",
                     markersize=3, label=k)
        ax2.set_ylim(0, 1.02)
        ax2.set_xlabel("step")
        ax2.set_title("evaluation")
        ax2.legend(fontsize=7, loc="lower right")
    return fig
