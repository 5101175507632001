"""ssm-bridge: State Space Models as the bridge between a vision encoder and a language
decoder, built to be looked inside."""

from .checkpoint import CheckpointError
from .config import PRESETS, VLMConfig
from .generation import GenerationTraces
from .hooks import ActivationCache, HookPoint
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
from .pretrained import Pretrained, load_pretrained
from .ssm import explain_mode

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
