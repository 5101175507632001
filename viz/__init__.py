"""Pure plotting functions: tensors, records or a cache in, a matplotlib Figure out.

Nothing here calls the model, shows a window or touches global pyplot state: every
function builds its own Figure (Agg-safe), so the app, notebooks and trainer share
one look.
"""

from .style import new_figure
from .training import plot_training_curves

__all__ = ["new_figure", "plot_training_curves"]
