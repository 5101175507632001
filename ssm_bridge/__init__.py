"""ssm-bridge: State Space Models as the bridge between a vision encoder and a language
decoder, built to be looked inside."""

from .config import PRESETS, VLMConfig
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

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CrossModalAttention",
    "EnhancedSSMBridge",
    "EnhancedVLM",
    "EnhancedVisionTransformer",
    "MultiQueryAttention",
    "Pretrained",
    "SSMLayer",
    "SwiGLU",
    "Swish",
    "TransformerBlock",
    "VLMConfig",
    "load_pretrained",
]
