"""The original package's README snippets, run as written (seed-size models, CPU).

Basic Usage builds the ~200 M-parameter default model, runs forward and generates
50 tokens; Advanced Configuration (1024-wide, 24 + 24 layers, 384 px) builds and runs
with 12 heads of 85 dims (see VLMConfig's docstring).
"""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_basic_usage_as_written(capsys):
    torch.manual_seed(0)
    # ---- verbatim from the original README ----
    from ssm_bridge.model import EnhancedVLM, VLMConfig

    # Create configuration
    config = VLMConfig(
        img_size=224,
        patch_size=16,
        vision_embed_dim=768,
        vision_num_layers=12,
        vision_num_heads=12,
        vocab_size=32000,
        text_embed_dim=768,
        text_num_layers=12,
        text_num_heads=12,
        text_kv_heads=1,
        max_seq_length=2048,
        ssm_state_dim=64,
        ssm_hidden_dim=256,
        ssm_num_layers=4,
        ssm_dropout=0.1,
        cross_attn_layers=2,
        cross_attn_heads=8,
        dropout=0.1,
        layer_norm_eps=1e-5,
    )

    # Initialize model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = EnhancedVLM(config).to(device)

    # Prepare input data
    images = torch.randn(2, 3, 224, 224).to(device)  # Batch of images
    tokens = torch.randint(0, 32000, (2, 10)).to(device)  # Text tokens
    targets = torch.randint(0, 32000, (2, 10)).to(device)  # Target tokens

    # Forward pass
    logits, loss = model(images, tokens, targets)
    print(f"Logits shape: {logits.shape}, Loss: {loss.item():.4f}")

    # Text generation
    generated_tokens = model.generate(
        images,
        max_length=50,
        temperature=0.8,
        top_k=50,
        top_p=0.9
    )
    print(f"Generated tokens shape: {generated_tokens.shape}")
    # ---- end of the snippet ----
    out = capsys.readouterr().out
    assert "Logits shape: torch.Size([2, 10, 32000])" in out
    assert generated_tokens.shape[0] == 2 and generated_tokens.shape[1] <= 50
    assert 9 < loss.item() < 12  # ~ln(32000) = 10.4 for a fresh model
    assert model.training, "generate must leave the model's mode as it found it"


def test_advanced_configuration_builds_and_runs():
    # ---- verbatim from the original README ----
    from ssm_bridge.model import VLMConfig

    # Custom SSM configuration for different use cases
    config = VLMConfig(
        # Vision settings
        img_size=384,  # Higher resolution
        patch_size=16,
        vision_embed_dim=1024,  # Larger embeddings
        vision_num_layers=24,  # Deeper vision encoder

        # SSM Bridge settings
        ssm_state_dim=128,  # Larger state dimension
        ssm_hidden_dim=512,  # Larger hidden dimension
        ssm_num_layers=6,  # More SSM layers

        # Language settings
        text_embed_dim=1024,  # Match vision embedding
        text_num_layers=24,  # Deeper language model
        max_seq_length=4096,  # Longer sequences
    )
    # ---- end of the snippet; now build and run it ----
    from ssm_bridge.model import EnhancedVLM

    torch.manual_seed(0)
    model = EnhancedVLM(config).eval()
    assert model.decoder.blocks[0].attn.head_dim == 85  # 1024 // 12
    images = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        logits = model(images, torch.randint(0, 32000, (1, 6)))
    assert logits.shape == (1, 6, 32000) and torch.isfinite(logits).all()
    out = model.generate(images, max_length=4, temperature=0)
    assert out.shape[0] == 1 and out[0, 0] == config.bos_token_id
