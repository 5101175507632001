"""Pure plotting functions: tensors, records or a cache in, a matplotlib Figure out.

Nothing here calls the model, shows a window or touches global pyplot state: every
function builds its own Figure (Agg-safe), so the app, notebooks and trainer share
one look. Inputs may be torch tensors (any device / dtype) or numpy arrays; take one
example of a batch first (x[0]). Wrong shapes raise a ValueError naming the expected one.

    maps.py       overlay, layer_maps, attribution_overlay, map_panels
    attention.py  word_attention_grid, implicit_attention_matrix, implicit_attention_grid
    ssm.py        state_trajectory, state_pca, state_norm_map, delta_map, gate_map
    tokens.py     token_heatmap (per-token Δ, gate, |h| of a language model's layers)
    scrubber.py   scan_scrubber_frame
    tables.py     localisation_table, localisation_bars, gate_values
    faithfulness.py  deletion_curves, morf_lerf_panels, cascade_plot, trace_heatmap,
                     plausible_vs_faithful
    training.py   plot_training_curves
    arrays.py     to_numpy, as_image, grid_values (per-token values -> (g, g) map)
    style.py      new_figure, colour maps, font sizes, overlay / colourbar helpers
"""

from .arrays import as_image, grid_values, to_numpy
from .attention import implicit_attention_grid, implicit_attention_matrix, word_attention_grid
from .faithfulness import (
    cascade_plot,
    deletion_curves,
    morf_lerf_panels,
    plausible_vs_faithful,
    trace_heatmap,
)
from .maps import attribution_overlay, layer_maps, map_panels, overlay
from .scrubber import scan_scrubber_frame
from .ssm import delta_map, gate_map, state_norm_map, state_pca, state_trajectory
from .style import add_colorbar, new_figure, overlay_map
from .tables import gate_values, localisation_bars, localisation_table
from .tokens import token_heatmap
from .training import plot_training_curves

__all__ = [
    "add_colorbar",
    "as_image",
    "attribution_overlay",
    "cascade_plot",
    "deletion_curves",
    "delta_map",
    "gate_map",
    "gate_values",
    "grid_values",
    "implicit_attention_grid",
    "implicit_attention_matrix",
    "layer_maps",
    "localisation_bars",
    "localisation_table",
    "map_panels",
    "morf_lerf_panels",
    "new_figure",
    "overlay",
    "overlay_map",
    "plausible_vs_faithful",
    "plot_training_curves",
    "scan_scrubber_frame",
    "state_norm_map",
    "state_pca",
    "state_trajectory",
    "to_numpy",
    "token_heatmap",
    "trace_heatmap",
    "word_attention_grid",
]
