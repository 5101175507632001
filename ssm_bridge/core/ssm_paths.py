"""Where the SSM layers of a model are, by module path: the one place that knows the layout
of each SSM stack (a stop-gap until the common SSM-layer addressing replaces it).

    ssm_layers(model, "decoder")                    ['decoder.layers.0.mixer', ...]
    ssm_hook(model, "decoder", 0, "hook_delta", 0)  'decoder.layers.0.mixer.hook_delta'
    ssm_hook(model, "vision", 1, "hook_delta", 1)   'vision.layers.1.mixer.dirs.1.hook_delta'
    ssm_hook(model, "bridge", 0, "hook_gate")       'bridge.layers.0.mixer.hook_gate'

A stack is a top-level part ("vision", "bridge", "decoder"). Its SSM layers are the
`SSMLayer`s (bridge, Vim: one scan direction per `dirs.{k}`) and the Mamba mixers (decoder:
the mixer *is* its one scan direction). Paths come from the module tree, not from format
strings, so they follow the model as built.
"""

from __future__ import annotations

from torch import nn

from .ssm import ScanDirection, SSMLayer


def ssm_layers(model: nn.Module, stack: str) -> list[str]:
    """Module paths of the SSM layers of `stack`, in order ([] when it has none)."""
    out: list[str] = []
    for name, m in model.named_modules():
        inside = any(name.startswith(f"{p}.") for p in out)
        if name.startswith(f"{stack}.") and isinstance(m, (SSMLayer, ScanDirection)) \
                and not inside:
            out.append(name)
    return out


def scan_directions(model: nn.Module, layer_path: str) -> list[str]:
    """Module paths of the scan directions of one SSM layer (itself for a Mamba mixer)."""
    layer = model.get_submodule(layer_path)
    return [f"{layer_path}.{n}".rstrip(".") for n, m in layer.named_modules()
            if isinstance(m, ScanDirection)]


def ssm_hook(model: nn.Module, stack: str, layer: int, hook: str,
             direction: int | None = None) -> str:
    """The hook path of `hook` in SSM layer `layer` of `stack`: on the layer itself when
    direction is None (hook_y, hook_gate), else on that scan direction (hook_delta, ...)."""
    layers = ssm_layers(model, stack)
    if not 0 <= layer < len(layers):
        raise ValueError(f"{stack} has {len(layers)} SSM layers, no layer {layer}")
    if direction is None:
        return f"{layers[layer]}.{hook}"
    dirs = scan_directions(model, layers[layer])
    if not 0 <= direction < len(dirs):
        raise ValueError(f"{layers[layer]} has {len(dirs)} scan directions, no {direction}")
    return f"{dirs[direction]}.{hook}"
