"""Files the app hands out: a fresh folder per download under gradio's upload cache (which
the server serves as it is: no allowed_paths, no copy), pruned by age; and the "download
this map" files: the open tab's figure as a PNG and the arrays behind it (.npz).

    folder = fresh_folder("maps")                    # .../ssm-bridge-maps/maps-XXXX/
    arrays = tab_arrays(analyser, view, "cross", word=2)     # {"cross_attention": (g, g)}
    write_map_files(fig, arrays, folder, "cross-word3")      # .png and .npz
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_AGE_S = 3600  # a download's folder is removed this many seconds after it was made
MAP_DPI = 150


def safe_name(text: str) -> str:
    """A file-name part: letters, digits, '.', '_' and '-' only, at most 60 of them."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "image"


def fresh_folder(kind: str, root: str | Path | None = None,
                 max_age_s: float = MAX_AGE_S) -> Path:
    """A new folder under `root` (None: ssm-bridge-<kind> in gradio's upload cache);
    folders there older than max_age_s go first, so the disk holds at most that long's
    files."""
    if root is None:
        from gradio.utils import get_upload_folder

        root = Path(get_upload_folder()) / f"ssm-bridge-{kind}"
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in base.iterdir():
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            continue
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def tab_arrays(analyser, view, tab: str, word: int, layer: int | str = 0, direction: int = 0,
               method: str = "ig", heads: str = "mean") -> dict[str, np.ndarray]:
    """The arrays behind tab `tab`'s figure for word `word`, at the model's resolution
    (the (g, g) maps, not the upsampled overlays): {name: array}; {} when there is none
    yet (an attribution not computed, the ground truth of an upload)."""
    from .support import selectivity_maps

    a = view.analysis
    w = min(max(int(word), 0), max(a.n_words - 1, 0))
    if tab in ("cross", "prefix", "implicit") and a.n_words:
        return {k: _np(v) for k, v in _word_arrays(a, tab, w, heads).items()}
    if tab == "bridge":
        return {safe_name(k): _np(v) for k, v in selectivity_maps(a).items()}
    if tab in ("state", "scrubber"):
        s = analyser.scan(view, layer, direction)
        return {"scan_order": s.perm, "state": s.state, "state_pca": s.proj,
                "delta": s.delta, "gate": s.gate}
    if tab == "attribution" and w in a.attributions.get(method, {}):
        return {method: _np(a.attributions[method][w])}
    if tab == "truth" and view.scene is not None:
        return {f"object{j + 1}_mask": o.mask for j, o in enumerate(view.scene.objects)}
    return {}


def _word_arrays(a, tab: str, w: int, heads: str) -> dict:
    if a.cross_attention is None:  # a Mamba decoder: its scans stand in for attention
        return {"cross": {"hidden_rollout": a.hidden_rollout[w]},
                "prefix": {f"decoder_layer{i}": m
                           for i, m in enumerate(a.hidden_attention_layers[w])},
                "implicit": {"hidden_attention": a.hidden_attention[w],
                             "hidden_rollout": a.hidden_rollout[w]}}[tab]
    if tab == "cross" and heads == "per layer":
        return {f"layer{i}": m for i, m in enumerate(a.cross_attention_layers[w])}
    if tab == "cross" and heads == "per head":
        return {f"layer{i}_head{h}": m for i, per in enumerate(a.cross_attention_heads[w])
                for h, m in enumerate(per)}
    if tab == "prefix":
        return {"prefix_attention": a.prefix_attention[w]}
    if tab == "implicit":
        return {"cross_attention": a.cross_attention[w], "implicit": a.implicit[w]}
    return {"cross_attention": a.cross_attention[w]}


def write_map_files(fig, arrays: dict[str, np.ndarray], folder: Path, stem: str
                    ) -> list[Path]:
    """The figure as <stem>.png and the arrays behind it as <stem>.npz: the paths."""
    if fig is None or not arrays:
        raise ValueError("this tab has no map yet: compute it first")
    png, npz = folder / f"{stem}.png", folder / f"{stem}.npz"
    fig.savefig(png, dpi=MAP_DPI, bbox_inches="tight")
    np.savez(npz, **arrays)
    return [png, npz]
