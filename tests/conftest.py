import pytest
import torch

from ssm_bridge import EnhancedVLM, VLMConfig


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and batch-1 decoding run fastest on one thread (extra threads only spin,
    and far worse on a loaded machine); restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> VLMConfig:
    return VLMConfig.from_preset("tiny")


def make_model(config: VLMConfig, seed: int = 0) -> EnhancedVLM:
    torch.manual_seed(seed)
    return EnhancedVLM(config).eval()


def open_gates(model: EnhancedVLM, value: float = 1.0) -> EnhancedVLM:
    """Set every tanh gate so cross-attention contributes (they start at zero)."""
    with torch.no_grad():
        for layer in model.decoder.cross_layers:
            layer.attn_gate.fill_(value)
            layer.ff_gate.fill_(value)
    return model


def batch(config: VLMConfig, B: int = 2, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, config.in_channels, config.img_size, config.img_size, generator=g)
    tokens = torch.randint(0, config.vocab_size, (B, T), generator=g)
    return images, tokens
