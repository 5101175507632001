"""ssm-bridge: State Space Models as the bridge between a vision encoder and a language
decoder, built to be looked inside.

Layout: `model` and `config` (the full model and its settings) assemble `core/` (layers,
scan, SSM, attention, encoders, bridges, decoder, generation); `mamba/` is a hooked Mamba
language model; `data/` the scene world, COCO and the tokenizer; `training/` training and
evaluation; `interp/` the interpretability tools; `app/` the demo app and the notebooks' setup;
`tools/` the ablation study and model-card tooling. The 0.1 flat names still import
(see `_moved`)."""


from ._moved import install as _install_moved
from .config import PRESETS, VLMConfig
from .core.generation import GenerationTraces
from .core.hooks import ActivationCache, HookPoint
from .core.ssm import explain_mode
from .model import (
    CrossModalAttention,
    EnhancedSSMBridge,
    EnhancedVisionTransformer,
    EnhancedVLM,
    MultiQueryAttention,
    SSMLayer,
    SwiGLU,
    Swish,
    TransformerBlock,
)
from .training.checkpoint import CheckpointError
from .training.pretrained import Pretrained, load_pretrained

_install_moved()  # the 0.1 flat module names import as aliases

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
    "load_pretrained",
]
