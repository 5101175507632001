"""`VLMConfig`: every knob of the model, validated on construction.

The first block of fields is the original package's config, names and defaults
verbatim, so code written for it runs unchanged. Everything after it is new and
has a default. Named presets live in `PRESETS`; build one with
`VLMConfig.from_preset("tiny", vocab_size=64)`.

Heads that do not divide the width: `head_dim = dim // num_heads`, and the
attention projects `dim -> num_heads * head_dim` and back. The original's
"Advanced Configuration" (1024-wide embeddings with the default 12 heads) thus
runs with 12 heads of 85 dims (1020 inner width) instead of failing.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The orders the bridge can read the patch grid in, and the scan directions each runs
# (ssm.SSMLayer runs one ScanDirection per name; addressing.direction_perm defines them).
# Kept here, not in core/, so that config validation needs no torch.
SCAN_DIRECTIONS = {
    "raster": ("row",),
    "bidirectional": ("row", "row_rev"),
    "cross": ("row", "col", "row_rev", "col_rev"),
}
SCAN_ORDERS = tuple(SCAN_DIRECTIONS)
# The selective-scan implementations (scan.selective_scan's `backend`, described there).
SCAN_BACKENDS = ("auto", "torch", "cpp", "ref")
ATTN_IMPLS = ("sdpa", "eager")
VISION_STEMS = ("patch", "conv")
# Bridges between the ViT and the decoder (ssm_bridge/core/bridge_variants.py builds them; the
# ablation study ssm_bridge/tools/ablate.py compares them under one training budget).
BRIDGE_TYPES = ("ssm", "ssm_lti", "seed_ssm", "mlp", "resampler", "linear")
# The vision encoder: "vit" the ViT (core/vision.py), "vim" Vision Mamba (core/vim.py).
VISION_TYPES = ("vit", "vim")
# The language decoder: "transformer" (core/decoder.py), "mamba" Mamba-1 blocks over
# [image tokens ; text] as in Cobra (core/mamba_decoder.py).
DECODER_TYPES = ("transformer", "mamba")
# Upper bounds on every size. A config.json is checked against them before anything is
# built, so a hostile or mistyped one (a width of 10^9, 10^6 layers) is refused at once
# instead of allocating terabytes or building modules for minutes. Each is far above this
# package's largest preset ("advanced": 1024 wide, 24 layers, 4096 tokens) and above the
# sizes of common public models.
MAX_SIZES = {
    "img_size": 4096, "patch_size": 1024, "in_channels": 16, "vision_stem_depth": 16,
    "vision_embed_dim": 16384, "text_embed_dim": 16384, "ssm_hidden_dim": 16384,
    "vision_num_layers": 256, "text_num_layers": 256, "ssm_num_layers": 256,
    "cross_attn_layers": 256, "resampler_layers": 256,
    "vision_num_heads": 256, "text_num_heads": 256, "text_kv_heads": 256,
    "cross_attn_heads": 256, "cross_attn_kv_heads": 256,
    "vocab_size": 1_048_576, "max_seq_length": 131_072, "text_ffn_dim": 131_072,
    "ssm_state_dim": 1024, "ssm_dt_rank": 16384, "ssm_conv_kernel": 64,
    "resampler_latents": 4096, "decoder_state_dim": 1024, "decoder_expand": 64,
    "decoder_dt_rank": 16384, "vim_state_dim": 1024, "vim_expand": 64,
}
MAX_PATCHES = 65_536  # (img_size / patch_size)^2: a 4096-px image in 16-px patches
MAX_MLP_RATIO = 64.0  # vision_mlp_ratio


@dataclass
class VLMConfig:
    # ---- the original package's fields (names and defaults are a contract) ----
    img_size: int = 224  # square input images, pixels per side
    patch_size: int = 16  # ViT patch side; img_size must be a multiple
    vision_embed_dim: int = 768
    vision_num_layers: int = 12
    vision_num_heads: int = 12
    vocab_size: int = 32000
    text_embed_dim: int = 768
    text_num_layers: int = 12
    text_num_heads: int = 12
    text_kv_heads: int = 1  # 1 = multi-query attention; must divide text_num_heads
    max_seq_length: int = 2048  # longest text sequence (the image prefix is extra)
    ssm_state_dim: int = 64  # N: state size per channel of the selective scan
    ssm_hidden_dim: int = 256  # D: channels of the bridge (the scan runs over D)
    ssm_num_layers: int = 4  # residual selective-SSM blocks in the bridge
    ssm_dropout: float = 0.1
    # Gated cross-attention layers (text -> bridge). None, the default, resolves on
    # construction: 2 (the original's default) for the transformer decoder, 0 for the Mamba
    # decoder (Cobra reads the image through its prefix only).
    cross_attn_layers: int | None = None
    cross_attn_heads: int = 8
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5

    # ---- new fields (all optional) ----
    in_channels: int = 3  # image channels the patch embedding expects
    # "patch": one conv with kernel = stride = patch_size (the classic ViT). "conv": a stem
    # of stride-2 3x3 convs down to the patch grid (Xiao et al. 2021, "Early convolutions
    # help transformers see better"): same tokens, much faster to learn small shapes.
    vision_stem: str = "patch"
    # 3x3 convs per stage of the "conv" stem: 1 = one stride-2 conv per halving; 2 adds a
    # stride-1 conv after each: more local capacity, but a slower step and, at shapes-tiny's
    # size, a much slower start on colour, so 1 is the default (docs/training-notes.md,
    # "Why the defaults are what they are").
    vision_stem_depth: int = 1
    vision_mlp_ratio: float = 4.0  # ViT MLP width = ratio * vision_embed_dim
    text_ffn_dim: int | None = None  # SwiGLU hidden width; None = 8/3 * width rounded up to 64
    cross_attn_kv_heads: int = 1  # shared K/V heads in cross-attention (multi-query)
    # Training only: probability per sample that the decoder's image prefix is blanked, so
    # that cross-attention is then the only route from the image to the text. Without it
    # a model can learn to read the image through the prefix alone and leave the
    # cross-attention gates near zero, and its cross-attention maps then mean little.
    image_prefix_dropout: float = 0.0
    # The bridge (core/bridge_variants.py): "ssm" the selective SSM (Mamba S6, the default);
    # "ssm_lti" the same blocks with Δ, B, C independent of the input (S4D-style, LTI);
    # "seed_ssm" the original package's dense-A, non-selective recurrent loop (a slow
    # baseline); "mlp" LLaVA-1.5's Linear-GELU-Linear projector; "resampler" a Perceiver
    # resampler (Flamingo / BLIP-2) that outputs `resampler_latents` tokens instead of
    # 1 + P; "linear" one projection. The ssm_* fields apply to the SSM variants only.
    bridge_type: str = "ssm"
    resampler_latents: int = 16  # learned queries = media tokens of the "resampler" bridge
    resampler_layers: int = 2  # cross-attention + feed-forward blocks of the resampler
    # Selective SSM (Mamba S6) details; defaults follow Mamba.
    ssm_conv_kernel: int = 4  # depthwise causal conv before the scan (local mixing)
    ssm_dt_rank: int | None = None  # rank of the Δ projection; None = ceil(D / 16)
    ssm_dt_min: float = 1e-3  # Δ is initialised log-uniformly in [dt_min, dt_max]
    ssm_dt_max: float = 1e-1
    ssm_scan_order: str = "raster"  # raster | bidirectional | cross (VMamba's 4 directions)
    ssm_scan_backend: str = "auto"  # auto | torch | cpp | ref: same maths, different speed
    # Attention: "sdpa" is fused; "eager" materialises the pattern (for study).
    attn_impl: str = "sdpa"
    tie_word_embeddings: bool = True  # lm_head shares the token embedding (nanoGPT)
    gradient_checkpointing: bool = False  # recompute blocks in backward to save memory
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # The vision encoder (VISION_TYPES). "vim": Vision Mamba (Zhu et al. 2024), the same
    # patch embedding (vision_stem) and width (vision_embed_dim, vision_num_layers), with
    # bidirectional selective-scan blocks instead of attention and the class token in the
    # middle of the sequence; its output is laid out as the ViT's (cls first).
    vision_type: str = "vit"
    vim_state_dim: int = 16  # N of the Vim scans
    vim_expand: int = 2  # the Vim scans run over vim_expand * vision_embed_dim channels
    # The language decoder (DECODER_TYPES). "mamba": Mamba-1 blocks (ssm_bridge.mamba.lm's)
    # of width text_embed_dim, text_num_layers deep, over [image tokens ; text] (Cobra); no
    # attention unless cross_attn_layers > 0. Its conv kernel is ssm_conv_kernel, its Δ range
    # ssm_dt_min / ssm_dt_max; text_num_heads, text_kv_heads and pos embeddings do not apply.
    decoder_type: str = "transformer"
    decoder_state_dim: int = 16  # N of the Mamba decoder (Hugging Face's state_size)
    decoder_expand: int = 2  # the decoder's scans run over decoder_expand * text_embed_dim
    decoder_dt_rank: int | None = None  # rank of its Δ projection; None = ceil(width / 16)

    def __post_init__(self) -> None:
        if self.cross_attn_layers is None:  # the decoder type's own default
            self.cross_attn_layers = 0 if self.decoder_type == "mamba" else 2
        _validate(self)

    # ---- derived sizes ----
    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_image_tokens(self) -> int:
        """Length of the image prefix the decoder sees: patches + cls."""
        return self.num_patches + 1

    @property
    def num_media_tokens(self) -> int:
        """Tokens the bridge hands the decoder: one per image token, except the resampler's
        learned latents."""
        return self.resampler_latents if self.bridge_type == "resampler" else \
            self.num_image_tokens

    @property
    def dt_rank(self) -> int:
        return self.ssm_dt_rank or math.ceil(self.ssm_hidden_dim / 16)

    @property
    def ffn_dim(self) -> int:
        if self.text_ffn_dim is not None:
            return self.text_ffn_dim
        return 64 * math.ceil(8 * self.text_embed_dim / 3 / 64)

    # ---- (de)serialisation and presets ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown VLMConfig field(s) {unknown}; known fields are {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VLMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> VLMConfig:
        return dataclasses.replace(self, **changes)


# What the scene-world presets share: 64 px scenes in 8 px patches through the conv stem
# (it learns small shapes ~3x faster than a patch conv), captions of at most 32 tokens, the
# scene tokenizer's vocabulary (47 words; set from the tokenizer when training), no dropout.
_SCENES_64: dict[str, Any] = dict(
    img_size=64, patch_size=8, vision_stem="conv", vocab_size=64, max_seq_length=32,
    dropout=0.0, ssm_dropout=0.0,
)
_MAMBA_DECODER: dict[str, Any] = dict(
    decoder_type="mamba", text_embed_dim=128, text_num_layers=2, decoder_state_dim=16,
    decoder_expand=1, cross_attn_layers=0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The original package's defaults: ~200 M parameters.
    "seed": {},
    # The original README's "Advanced Configuration".
    "advanced": dict(
        img_size=384, vision_embed_dim=1024, vision_num_layers=24, ssm_state_dim=128,
        ssm_hidden_dim=512, ssm_num_layers=6, text_embed_dim=1024, text_num_layers=24,
        max_seq_length=4096,
    ),
    # Unit tests: every code path, milliseconds per step.
    "tiny": dict(
        img_size=32, patch_size=8, vision_embed_dim=32, vision_num_layers=1, vision_num_heads=2,
        vocab_size=64, text_embed_dim=32, text_num_layers=2, text_num_heads=4, text_kv_heads=1,
        max_seq_length=32, ssm_state_dim=4, ssm_hidden_dim=16, ssm_num_layers=2,
        cross_attn_layers=1, cross_attn_heads=2, dropout=0.0, ssm_dropout=0.0,
    ),
    # The models of the training presets (training/train_config.TRAIN_PRESETS names them);
    # training sets vocab_size from its tokenizer, so these leave it at the default.
    # The shipped checkpoint: 64 px scenes, 1.4 M parameters with the scene vocabulary.
    # The conv stem learns small shapes ~3x faster than a patch conv; image-prefix dropout
    # moves the decoder onto its cross-attention (the training preset says from which step).
    "shapes-tiny": dict(
        vision_stem="conv", img_size=64, patch_size=8, vision_embed_dim=128,
        vision_num_layers=3, vision_num_heads=4, text_embed_dim=128, text_num_layers=2,
        text_num_heads=4, text_kv_heads=1, max_seq_length=32, ssm_state_dim=16,
        ssm_hidden_dim=128, ssm_num_layers=2, cross_attn_layers=1, cross_attn_heads=4,
        dropout=0.0, ssm_dropout=0.0, image_prefix_dropout=0.2,
    ),
    # Training tests: a run of 20 steps in seconds on 2 cores.
    "test-tiny": dict(
        img_size=32, patch_size=8, vision_embed_dim=32, vision_num_layers=1,
        vision_num_heads=2, text_embed_dim=32, text_num_layers=1, text_num_heads=2,
        max_seq_length=32, ssm_state_dim=4, ssm_hidden_dim=16, ssm_num_layers=1,
        cross_attn_layers=1, cross_attn_heads=2, dropout=0.0, ssm_dropout=0.0,
    ),
    # The scene world at 64 px (training presets of the same names in
    # training/train_config.py, where vocab_size becomes the tokenizer's). Both have
    # shapes-tiny's widths and encoder depth and the same Mamba decoder, so that the
    # ablation compares parts, not sizes. Expand 1 keeps a training step below shapes-tiny's
    # on a CPU (expand 2 measured +13 % a step in the decoder, +39 % in the Vim).
    # Cobra-style: ViT -> LLaVA's MLP projector -> Mamba decoder over [image ; text].
    "cobra-tiny": dict(
        **_SCENES_64, **_MAMBA_DECODER, vision_embed_dim=128, vision_num_layers=3,
        vision_num_heads=4, bridge_type="mlp",
    ),
    # No attention anywhere: Vision Mamba -> SSM bridge -> Mamba decoder. Its decoder is
    # wider than cobra-tiny's (expand 2, state 32: 4x the state, +28 % a training step):
    # with the narrow one the captions named every object's colour at chance for ~3300
    # steps; with this one they read colour from step ~1250 (docs/training-notes.md).
    "all-ssm-tiny": dict(
        **_SCENES_64, **{**_MAMBA_DECODER, "decoder_expand": 2, "decoder_state_dim": 32},
        vision_type="vim", vision_embed_dim=128, vision_num_layers=3, vim_state_dim=16,
        vim_expand=1, bridge_type="ssm", ssm_hidden_dim=128, ssm_state_dim=16,
        ssm_num_layers=1,
    ),
}


def check_types(cls: type, values: Mapping[str, Any], where: str) -> None:
    """ValueError("{where}: {field} must be ...") when a value does not have its dataclass
    field's annotated type: bool fields take only true/false (not "no", not 0), int fields
    integers (not floats, not bools), float fields finite numbers, str fields strings,
    tuple fields lists or tuples of the element type, `X | None` also None. Values read
    from JSON are checked this way before the class is built."""
    hints = typing.get_type_hints(cls)
    for name, v in values.items():
        if name in hints and not _has_type(v, hints[name]):
            raise ValueError(f"{where}: {name} must be {_type_name(hints[name])}, got {v!r} "
                             f"({type(v).__name__})")


def _has_type(v: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(v, a) for a in args)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(x, args[0]) for x in v)
        return len(v) == len(args) and all(_has_type(x, a) for x, a in zip(v, args))
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v))
    if tp is str:
        return isinstance(v, str)
    return True  # a type these configs do not use: not checked here


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_type_name(args[0])})"
        return f"a list of {len(args)}: ({', '.join(_type_name(a) for a in args)})"
    names = {bool: "true or false", int: "an integer", float: "a finite number",
             str: "a string", type(None): "null (None)"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(f"VLMConfig: {msg}")


def _validate(c: VLMConfig) -> None:
    check_types(VLMConfig, {f.name: getattr(c, f.name) for f in dataclasses.fields(c)},
                "VLMConfig")
    _validate_sizes(c)
    _validate_choices(c)


def _validate_sizes(c: VLMConfig) -> None:
    """Sizes, shapes that must divide, rates and the upper bounds of config.MAX_SIZES."""
    positive = [
        "img_size", "patch_size", "vision_embed_dim", "vision_num_layers", "vision_num_heads",
        "vocab_size", "text_embed_dim", "text_num_layers", "text_num_heads", "text_kv_heads",
        "max_seq_length", "ssm_state_dim", "ssm_hidden_dim", "cross_attn_heads", "in_channels",
        "ssm_conv_kernel", "cross_attn_kv_heads", "resampler_latents", "resampler_layers",
        "vision_stem_depth", "vim_state_dim", "vim_expand", "decoder_state_dim",
        "decoder_expand",
    ]
    for name in positive:
        v = getattr(c, name)
        _need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
    for name in ["ssm_num_layers", "cross_attn_layers"]:
        v = getattr(c, name)
        _need(isinstance(v, int) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
    _need(
        c.img_size % c.patch_size == 0,
        f"img_size ({c.img_size}) must be a multiple of patch_size ({c.patch_size}); "
        f"try img_size={c.grid_size * c.patch_size or c.patch_size}",
    )
    for dim, heads in [
        ("vision_embed_dim", "vision_num_heads"),
        ("text_embed_dim", "text_num_heads"),
        ("text_embed_dim", "cross_attn_heads"),
    ]:
        _need(
            getattr(c, heads) <= getattr(c, dim),
            f"{heads} ({getattr(c, heads)}) must be <= {dim} ({getattr(c, dim)}) so that "
            "each head has at least one dimension",
        )
    _need(
        c.text_num_heads % c.text_kv_heads == 0,
        f"text_kv_heads ({c.text_kv_heads}) must divide text_num_heads ({c.text_num_heads}); "
        "use 1 for multi-query attention",
    )
    _need(
        c.cross_attn_heads % c.cross_attn_kv_heads == 0,
        f"cross_attn_kv_heads ({c.cross_attn_kv_heads}) must divide cross_attn_heads "
        f"({c.cross_attn_heads})",
    )
    for name in ["dropout", "ssm_dropout", "image_prefix_dropout"]:
        v = getattr(c, name)
        _need(0.0 <= v < 1.0, f"{name} must be in [0, 1), got {v}")
    _need(c.layer_norm_eps > 0, f"layer_norm_eps must be > 0, got {c.layer_norm_eps}")
    _need(0 < c.vision_mlp_ratio <= MAX_MLP_RATIO,
         f"vision_mlp_ratio must be in (0, {MAX_MLP_RATIO:g}], got {c.vision_mlp_ratio}")
    _need(c.num_patches <= MAX_PATCHES,
         f"img_size / patch_size = {c.grid_size} gives {c.num_patches} patches, over the "
         f"limit of {MAX_PATCHES}; raise patch_size or lower img_size")
    _need(
        0 < c.ssm_dt_min < c.ssm_dt_max,
        f"need 0 < ssm_dt_min < ssm_dt_max, got {c.ssm_dt_min} and {c.ssm_dt_max}",
    )
    _need(
        c.ssm_dt_rank is None or c.ssm_dt_rank >= 1,
        f"ssm_dt_rank must be None (auto) or >= 1, got {c.ssm_dt_rank}",
    )
    _need(c.text_ffn_dim is None or c.text_ffn_dim >= 1, "text_ffn_dim must be None or >= 1")
    _need(c.decoder_dt_rank is None or c.decoder_dt_rank >= 1,
         f"decoder_dt_rank must be None (auto) or >= 1, got {c.decoder_dt_rank}")
    for name, limit in MAX_SIZES.items():
        v = getattr(c, name)
        _need(v is None or v <= limit, f"{name}={v} is over its limit of {limit} (limits keep "
             "a damaged or hostile config from allocating terabytes; see config.MAX_SIZES)")


def _validate_choices(c: VLMConfig) -> None:
    """Closed sets (scan order, backend, bridge, stem, attention) and the special tokens."""
    _need(
        c.ssm_scan_order in SCAN_ORDERS,
        f"ssm_scan_order must be one of {SCAN_ORDERS}, got {c.ssm_scan_order!r}",
    )
    _need(
        c.ssm_scan_backend in SCAN_BACKENDS,
        f"ssm_scan_backend must be one of {SCAN_BACKENDS}, got {c.ssm_scan_backend!r}",
    )
    _need(c.bridge_type in BRIDGE_TYPES,
         f"bridge_type must be one of {BRIDGE_TYPES}, got {c.bridge_type!r}")
    _need(c.vision_stem in VISION_STEMS,
         f"vision_stem must be one of {VISION_STEMS}, got {c.vision_stem!r}")
    _need(
        c.vision_stem != "conv" or c.patch_size & (c.patch_size - 1) == 0,
        f"vision_stem='conv' halves the image per conv, so patch_size must be a power of 2, "
        f"got {c.patch_size}; use vision_stem='patch'",
    )
    _need(c.attn_impl in ATTN_IMPLS, f"attn_impl must be one of {ATTN_IMPLS}, got {c.attn_impl!r}")
    _need(c.vision_type in VISION_TYPES,
         f"vision_type must be one of {VISION_TYPES}, got {c.vision_type!r}")
    _need(c.decoder_type in DECODER_TYPES,
         f"decoder_type must be one of {DECODER_TYPES}, got {c.decoder_type!r}")
    ids = {"pad_token_id": c.pad_token_id, "bos_token_id": c.bos_token_id,
           "eos_token_id": c.eos_token_id}
    for name, v in ids.items():
        _need(
            0 <= v < c.vocab_size,
            f"{name} ({v}) must be a token id in [0, vocab_size={c.vocab_size})",
        )
    _need(len(set(ids.values())) == 3, f"pad, bos and eos token ids must differ, got {ids}")
