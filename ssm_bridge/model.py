"""EnhancedVLM: ViT encoder -> selective-SSM bridge -> gated cross-attention + causal decoder.

    images (B, 3, H, W) --ViT--> (B, 1 + P, vision_dim) --SSM bridge--> media (B, 1 + P, text_dim)
    tokens (B, T) --embed--> cross-attend to media --> decoder over [media ; text] --> logits

Each part has variants (VLMConfig): vision_type "vit" | "vim" (Vision Mamba, core/vim.py),
bridge_type (core/bridge_variants.py), decoder_type "transformer" | "mamba" (Mamba-1 blocks,
core/mamba_decoder.py). Vim -> SSM bridge -> Mamba decoder has no attention anywhere.

The original package's API is kept verbatim:
    from ssm_bridge.model import EnhancedVLM, VLMConfig
    logits, loss = model(images, tokens, targets)     # targets may hold -100 (ignored)
    logits = model(images, tokens)                    # (B, T, vocab)
    model.generate(images, max_length=50, temperature=0.8, top_k=50, top_p=0.9)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import VLMConfig
from .core import hooks as _hooks
from .core.attention import CrossModalAttention, MultiQueryAttention
from .core.bridge import EnhancedSSMBridge
from .core.bridge_variants import build_bridge
from .core.checks import check_images, check_tokens
from .core.decoder import LanguageDecoder
from .core.generation import generate
from .core.layers import SwiGLU, Swish
from .core.mamba_decoder import MambaDecoder
from .core.ssm import SSMLayer
from .core.transformer import TransformerBlock
from .core.vim import VisionMamba
from .core.vision import EnhancedVisionTransformer
from .training import checkpoint

__all__ = [
    "CrossModalAttention", "EnhancedSSMBridge", "EnhancedVLM", "EnhancedVisionTransformer",
    "MultiQueryAttention", "SSMLayer", "SwiGLU", "Swish", "TransformerBlock", "VLMConfig",
]


VISION_ENCODERS = {"vit": EnhancedVisionTransformer, "vim": VisionMamba}  # config.VISION_TYPES
DECODERS = {"transformer": LanguageDecoder, "mamba": MambaDecoder}  # config.DECODER_TYPES


class EnhancedVLM(nn.Module):
    def __init__(self, config: VLMConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else VLMConfig()
        self.vision = VISION_ENCODERS[c.vision_type](c)
        self.bridge = build_bridge(c)  # config.bridge_type; see core/bridge_variants.py
        self.decoder = DECODERS[c.decoder_type](c)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style N(0, 0.02) for projections and embeddings. Left alone: Δ's
        projection (its own init), A_log, D, the zero gates, convs and norms."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("dt_proj"):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    # ---- the forward in two halves: image features (computed once when generating), head ----
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> media (B, 1 + P, text_embed_dim), the bridge outputs."""
        return self.bridge(self.vision(images))

    def forward_head(self, media: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """media (B, P, text_dim), tokens (B, T) -> logits (B, T, vocab)."""
        return self.decoder(media, tokens)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                targets: torch.Tensor | None = None):
        """-> logits (B, T, vocab), or (logits, loss) when targets (B, T) are given.

        targets[b, t] is the id expected after tokens[b, :t+1]; -100 marks ignored
        positions (padding, the prompt)."""
        check_images(images, self.config)
        check_tokens(tokens, self.config)
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"images and tokens must have the same batch size, got "
                             f"{images.shape[0]} images and {tokens.shape[0]} token rows")
        logits = self.forward_head(self.encode_image(images), tokens)
        if targets is None:
            return logits
        check_tokens(targets, self.config, "targets", allow_ignore=True)
        if targets.shape != tokens.shape:
            raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, "
                             f"got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=-100)
        return logits, loss

    generate = generate

    # ---- interpretability (TransformerLens-style; see ssm_bridge/core/hooks.py) ----
    def hook_names(self, heavy: bool = True) -> list[str]:
        """Every hook point by module path (heavy (B, L, D, N) ones unless heavy=False)."""
        return _hooks.hook_names(self, heavy)

    def run_with_cache(self, images, tokens=None, names_filter=None, *, heavy: bool = False,
                       grad: bool = False):
        """-> (logits, ActivationCache). See `ssm_bridge.core.hooks.run_with_cache`."""
        return _hooks.run_with_cache(self, images, tokens, names_filter, heavy=heavy, grad=grad)

    def hooks(self, fwd_hooks=(), *, heavy: bool = False, check_fired: bool = True):
        """Context manager: `with model.hooks([(name_or_glob, fn)]): ...`; fn(tensor, name)
        returns a replacement or None. Hooks fire for this thread's forward passes only
        and are removed on exit, even on error. Globs skip the heavy (B, L, D, N) points
        unless heavy=True. See `ssm_bridge.core.hooks.hooks`."""
        return _hooks.hooks(self, fwd_hooks, heavy=heavy, check_fired=check_fired)

    # ---- checkpoints (safetensors + JSON) ----
    def save_pretrained(self, directory: str | os.PathLike):
        """Write config.json and model.safetensors to `directory` (atomically per file)."""
        return checkpoint.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> EnhancedVLM:
        """The model saved in `directory`. Nothing is allocated before config.json (types,
        bounds) and the weights file's header (names, shapes, dtypes, checked against
        the model built on the meta device) pass; NaN or Inf weights are refused. Every
        problem raises checkpoint.CheckpointError (a ValueError) naming the file."""
        config = checkpoint.read_config(directory)
        with torch.device("meta"):  # free: parameters without storage
            skeleton = cls(config)
        checkpoint.check_weights(skeleton, directory)
        model = cls(config)
        checkpoint.load_weights(model, directory)
        return model.to(map_location).eval()

    def init_decoder_from_hf(self, source, vocab_map=None) -> dict:
        """Initialise the Mamba decoder (decoder_type="mamba") from a Hugging Face
        MambaForCausalLM: a folder on disk (config.json + *.safetensors) or an in-memory
        model; nothing is downloaded. The vocabulary rule (copy, keep the initialisation, or
        map rows with `vocab_map`) is `MambaDecoder.init_from_hf`'s. Returns what was done."""
        if self.config.decoder_type != "mamba":
            raise ValueError(f"init_decoder_from_hf needs decoder_type='mamba', this model has "
                             f"{self.config.decoder_type!r}")
        return self.decoder.init_from_hf(source, vocab_map)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_gradient_checkpointing(self, enabled: bool = True) -> EnhancedVLM:
        self.config.gradient_checkpointing = enabled
        for m in (self.vision, self.bridge, self.decoder):
            m.gradient_checkpointing = enabled
        return self
