"""The flat module names of ssm-bridge 0.1 (`ssm_bridge.maps`, `python -m ssm_bridge.train`,
...) still import: each is an alias of the module's home in the sub-package layout.

`import ssm_bridge.maps` returns the very module object `ssm_bridge.interp.maps` (so a
monkeypatch on one is seen through the other), and `python -m ssm_bridge.train` runs
`ssm_bridge.training.train` as __main__. New code imports the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old flat name -> its home. The one list of moved modules.
MOVED = {
    "layers": "core.layers", "hooks": "core.hooks", "ssm": "core.ssm", "scan": "core.scan",
    "attention": "core.attention", "transformer": "core.transformer", "vision": "core.vision",
    "decoder": "core.decoder", "generation": "core.generation", "bridge": "core.bridge",
    "bridges": "core.bridge_variants", "checks": "core.checks",
    "mamba_lm": "mamba.lm", "mamba_hf": "mamba.hf", "mamba_tools": "mamba.tools",
    "train": "training.train", "train_config": "training.train_config",
    "trainer": "training.trainer", "checkpoint": "training.checkpoint",
    "precision": "training.precision", "pretrained": "training.pretrained",
    "evaluate": "training.evaluate",
    "implicit_attention": "interp.implicit_attention", "interventions": "interp.interventions",
    "maps": "interp.maps", "attribution": "interp.attribution", "probes": "interp.probes",
    "localization": "interp.localization", "interpret": "interp.interpret",
    "ablate": "tools.ablate", "model_card": "tools.model_card",
    "app_support": "app.support",
}
_PREFIX = __name__.rsplit(".", 1)[0] + "."


class _Alias(importlib.abc.Loader):
    """Loads an old name as the already-imported module of its new name."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        """Nothing to run: the target module ran when create_module imported it."""

    def get_code(self, fullname: str):
        # runpy (`python -m old.name`) asks for code to run as __main__: run the new module
        # through runpy, so its own package (and relative imports) are right.
        return compile(f"import runpy; runpy.run_module({self.target!r}, run_name='__main__', "
                       "alter_sys=True)", f"<{fullname} -> {self.target}>", "exec")


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        old = fullname[len(_PREFIX):] if fullname.startswith(_PREFIX) else None
        if old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(_PREFIX + MOVED[old]))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
