"""ssm-bridge: State Space Models as the bridge between a vision encoder and a language
decoder, built to be looked inside.

Layout: `model` and `config` (the full model and its settings) assemble `core/` (layers,
scan, SSM, attention, encoders, bridges, decoder, generation); `mamba/` is a hooked Mamba
language model; `data/` the scene world, COCO and the tokenizer; `training/` training and
evaluation; `interp/` the interpretability tools; `app/` the demo app and the notebooks' setup;
`tools/` the ablation study and model-card tooling. The 0.1 flat names still import
(see `_moved`)."""


import importlib

from ._moved import install as _install_moved

_install_moved()  # the 0.1 flat module names import as aliases

# The package's names, imported on first use (PEP 562): `import ssm_bridge.cli` or
# `python app.py --help` then answer without loading torch (seconds). Name -> module.
_EXPORTS = {
    "PRESETS": "config", "VLMConfig": "config",
    "GenerationTraces": "core.generation",
    "ActivationCache": "core.hooks", "HookPoint": "core.hooks",
    "explain_mode": "core.ssm",
    **dict.fromkeys(("CrossModalAttention", "EnhancedSSMBridge", "EnhancedVisionTransformer",
                     "EnhancedVLM", "MultiQueryAttention", "SSMLayer", "SwiGLU", "Swish",
                     "TransformerBlock"), "model"),
    "CheckpointError": "training.checkpoint",
    "Pretrained": "training.pretrained", "load_pretrained": "training.pretrained",
    "explore": "app.explore",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ActivationCache",
    "CheckpointError",
    "CrossModalAttention",
    "EnhancedSSMBridge",
    "EnhancedVLM",
    "EnhancedVisionTransformer",
    "GenerationTraces",
    "HookPoint",
    "MultiQueryAttention",
    "Pretrained",
    "SSMLayer",
    "SwiGLU",
    "Swish",
    "TransformerBlock",
    "VLMConfig",
    "explain_mode",
    "explore",
    "load_pretrained",
]
