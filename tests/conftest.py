import threading

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


def in_thread(fn):
    """Start fn in a thread; join() re-raises its exception and returns its result."""
    box = {}

    def target():
        try:
            box["out"] = fn()
        except BaseException as e:  # handed to the joining thread
            box["err"] = e

    t = threading.Thread(target=target)
    t.start()

    def join():
        t.join(60)
        if "err" in box:
            raise box["err"]
        return box.get("out")
    return join


def while_paused(model, first, second):
    """Run first() in another thread, paused inside its first decoder pass
    (decoder.hook_logits) while second() runs here: (first(), second())."""
    a_paused, b_done = threading.Event(), threading.Event()

    def pause_once(t, name):
        if not a_paused.is_set():
            a_paused.set()
            assert b_done.wait(60)

    def thread_a():
        with model.hooks([("decoder.hook_logits", pause_once)]):
            return first()

    join = in_thread(thread_a)
    assert a_paused.wait(60)
    try:
        got = second()
    finally:
        b_done.set()
    return join(), got
