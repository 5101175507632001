"""What every notebook in notebooks/ does first: seed torch, fix its thread count, show figures.

    # %matplotlib inline
    from ssm_bridge.app.notebook import setup, show

    setup(seed=0, threads=1)
    show(viz.overlay(...))  # the figure in the cell's output, then freed

It lives with the app because the notebooks are the kit's other front-end: they draw the
same viz/ figures from the same analysis objects. viz/ itself stays free of torch state
and of ssm_bridge. IPython is imported only when a figure is shown, so the package
imports without it (it comes with the `notebooks` extra).
"""

from __future__ import annotations

import torch


def setup(seed: int = 0, threads: int = 1) -> None:
    """Seed torch's global generator with `seed` and run torch's CPU ops on `threads`
    threads (the thread count changes how float sums are split, hence their last bits)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def show(fig) -> None:
    """Draw a matplotlib Figure (a viz figure) into the notebook's outputs, then clear it
    to free its artists: a notebook draws dozens, and the kernel keeps its variables."""
    from IPython.display import display

    display(fig)
    fig.clf()
