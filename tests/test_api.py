"""The original package's API: names, config fields and defaults, component signatures."""

import dataclasses

import pytest
import torch

import ssm_bridge
import ssm_bridge.model
from ssm_bridge.model import (
    CrossModalAttention,
    EnhancedSSMBridge,
    EnhancedVisionTransformer,
    EnhancedVLM,
    MultiQueryAttention,
    SSMLayer,
    SwiGLU,
    Swish,
    TransformerBlock,
    VLMConfig,
)

ORIGINAL_NAMES = [
    "EnhancedVLM", "VLMConfig", "EnhancedVisionTransformer", "EnhancedSSMBridge", "SSMLayer",
    "Swish", "SwiGLU", "MultiQueryAttention", "CrossModalAttention", "TransformerBlock",
]

ORIGINAL_DEFAULTS = dict(
    img_size=224, patch_size=16, vision_embed_dim=768, vision_num_layers=12,
    vision_num_heads=12, vocab_size=32000, text_embed_dim=768, text_num_layers=12,
    text_num_heads=12, text_kv_heads=1, max_seq_length=2048, ssm_state_dim=64,
    ssm_hidden_dim=256, ssm_num_layers=4, ssm_dropout=0.1, cross_attn_layers=2,
    cross_attn_heads=8, dropout=0.1, layer_norm_eps=1e-5,
)


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_original_names_exported(name):
    assert getattr(ssm_bridge, name) is getattr(ssm_bridge.model, name)
    assert name in ssm_bridge.__all__


def test_config_has_every_original_field_and_default():
    c = VLMConfig()
    for k, v in ORIGINAL_DEFAULTS.items():
        assert getattr(c, k) == v, k
    # Original fields come first, in the original order; positional construction works too.
    names = [f.name for f in dataclasses.fields(VLMConfig)]
    assert names[: len(ORIGINAL_DEFAULTS)] == list(ORIGINAL_DEFAULTS)
    assert VLMConfig(*ORIGINAL_DEFAULTS.values()) == c


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(img_size=230), ["img_size", "multiple of patch_size"]),
        (dict(text_kv_heads=5), ["text_kv_heads", "divide text_num_heads"]),
        (dict(dropout=1.5), ["dropout", "[0, 1)"]),
        (dict(ssm_scan_order="zigzag"), ["ssm_scan_order", "raster"]),
        (dict(ssm_dt_min=0.5, ssm_dt_max=0.1), ["ssm_dt_min"]),
        (dict(vocab_size=2), ["eos_token_id", "vocab_size"]),
        (dict(vision_num_layers=0), ["vision_num_layers", "positive"]),
        (dict(vision_num_heads=1000, vision_embed_dim=64), ["vision_num_heads", "at least one"]),
        (dict(tie_word_embeddings="no"), ["tie_word_embeddings", "true or false"]),
        (dict(gradient_checkpointing=1), ["gradient_checkpointing", "true or false"]),
        (dict(img_size=224.0), ["img_size", "an integer"]),
        (dict(text_num_layers=True), ["text_num_layers", "an integer"]),
        (dict(layer_norm_eps=float("inf")), ["layer_norm_eps", "finite number"]),
        (dict(text_ffn_dim="512"), ["text_ffn_dim", "an integer or null"]),
        (dict(attn_impl=["sdpa"]), ["attn_impl", "a string"]),
        (dict(vocab_size=2_000_000), ["vocab_size", "limit of 1048576"]),
        (dict(vision_mlp_ratio=100.0), ["vision_mlp_ratio", "(0, 64]"]),
        (dict(img_size=8192, patch_size=256), ["img_size", "limit of 4096"]),
        (dict(img_size=4096, patch_size=8), ["262144 patches", "limit of 65536"]),
    ],
)
def test_config_validation_names_the_fix(kwargs, words):
    with pytest.raises(ValueError) as e:
        VLMConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_presets_and_unknown_fields():
    assert VLMConfig.from_preset("seed") == VLMConfig()
    assert VLMConfig.from_preset("tiny", vocab_size=99).vocab_size == 99
    with pytest.raises(ValueError, match="unknown preset"):
        VLMConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown VLMConfig field"):
        VLMConfig.from_dict({"img_size": 32, "colour": "red"})


def test_components_keep_original_signatures():
    """Each component called as the original package's own tests called it (smaller sizes)."""
    x = torch.randn(2, 10, 32)
    y = Swish()(torch.randn(10, 20))
    assert y.shape == (10, 20) and torch.isfinite(y).all() and (y >= -0.3).all()
    assert SwiGLU(32, 64, dropout=0.1)(x).shape == x.shape
    mqa = MultiQueryAttention(32, 8, 2, dropout=0.1).eval()
    causal = torch.tril(torch.ones(10, 10)).unsqueeze(0)  # the original's (1, T, T) 1/0 mask
    out = mqa(x, causal)
    assert out.shape == x.shape
    # a causal mask means position 0 ignores the rest
    x2 = x.clone()
    x2[:, 1:] += 1
    assert torch.allclose(mqa(x2, causal)[:, 0], out[:, 0], atol=1e-6)
    cma = CrossModalAttention(32, 8, dropout=0.1)
    kv = torch.randn(2, 15, 32)
    assert cma(x, kv, kv).shape == x.shape
    assert cma(x, kv, kv, torch.ones(2, 10, 15)).shape == x.shape
    block = TransformerBlock(32, 8, 2, 64, dropout=0.1)
    assert block(x).shape == block(x, causal).shape == x.shape
    assert SSMLayer(32, 8)(x).shape == x.shape
    bridge = EnhancedSSMBridge(48, 8, 32, 40, 2, dropout=0.1)
    assert bridge(torch.randn(2, 20, 48)).shape == (2, 20, 40)
    cfg = VLMConfig.from_preset("tiny")
    vit = EnhancedVisionTransformer(cfg)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, cfg.num_patches + 1, cfg.vision_embed_dim)


def test_forward_shapes_and_loss(tiny_config):
    torch.manual_seed(0)
    model = EnhancedVLM(tiny_config)
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(0, 64, (2, 10))
    targets = torch.randint(0, 64, (2, 10))
    logits, loss = model(images, tokens, targets)
    assert logits.shape == (2, 10, 64)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert model(images, tokens).shape == (2, 10, 64)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters()), "every param learns"


def test_targets_minus_100_are_ignored(tiny_config):
    torch.manual_seed(0)
    model = EnhancedVLM(tiny_config).eval()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    masked = targets.clone()
    masked[:, :3] = -100
    logits, loss = model(images, tokens, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 64),
                                                 targets[:, 3:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)
    _, full = model(images, tokens, targets)
    assert not torch.allclose(loss, full)
