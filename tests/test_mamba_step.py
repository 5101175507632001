"""The fused decoding step of a Mamba block (ssm_bridge/mamba/step.py): the C++ kernel equals
its PyTorch twin and the block's own modules (fp32, <= 1e-5, outputs and both states),
MambaLM takes it only where no hook watches, and hooks see what they saw without it."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from mambautil import max_rel, random_ids, tiny_mamba

from ssm_bridge.core import scan
from ssm_bridge.mamba import step as mamba_step

SHAPES = [dict(), dict(conv_kernel=2, state_size=1, expand=1, use_conv_bias=False),
          dict(num_hidden_layers=3, use_bias=True, time_step_rank=5), dict(conv_kernel=1)]


def cpp_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan.load_extension() is not None


needs_cpp = pytest.mark.skipif(not cpp_available(), reason="C++ extension unavailable")


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert a.numel() == 0 or max_rel(a, b) <= rel


def random_states(block, batch: int, seed: int, copies: int = 3) -> list[dict]:
    """Non-zero conv windows and SSM states, as mid-sequence: `copies` identical ones."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g)
             for k, v in block.mixer.allocate_state(batch).items()}
    return [{k: v.clone() for k, v in state.items()} for _ in range(copies)]


@needs_cpp
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("overrides", SHAPES)
def test_fused_step_equals_its_twin_and_the_modules(overrides, batch):
    model = tiny_mamba(**overrides)
    for i, block in enumerate(model.layers):
        x = torch.randn(batch, model.config.hidden_size, generator=torch.Generator().manual_seed(i))
        fused, twin, modules = random_states(block, batch, seed=i)
        weights = mamba_step.block_weights(block)
        with torch.no_grad():
            out = mamba_step.block_step(x, weights, fused)
            out_ref = mamba_step.block_step_ref(x, *weights, twin["conv"], twin["ssm"])
        with torch.enable_grad():  # a gradient to keep: the block runs its modules
            out_modules = block(x[:, None], modules)[:, 0].detach()
        for key in ("conv", "ssm"):
            assert_close(fused[key], twin[key])
            assert_close(modules[key].detach(), twin[key])
        assert_close(out, out_ref)
        assert_close(out_modules, out_ref)


@needs_cpp
def test_fused_head_equals_linear():
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(3, 40, generator=g), torch.randn(37, 40, generator=g)  # 37 rows: 4 x 8 + 5
    with torch.no_grad():
        assert_close(mamba_step.head(x, W), F.linear(x, W), 1e-6)


@needs_cpp
def test_big_products_are_shared_between_threads_and_callers():
    """Matrices of 256 KiB and more are split over torch's threads (csrc ChunkPool): the same
    products, also with four Python threads calling at once (all but one work alone)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(1001, 300, generator=g)  # 300K floats; 1001 rows, not a multiple of 8
    xs = [torch.randn(2, 300, generator=g) for _ in range(4)]
    results: list = [None] * 4

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = scan.load_extension().rows_times(xs[i], W)

    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        work(0)
        assert_close(results[0], F.linear(xs[0], W), 1e-6)
        callers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
    finally:
        torch.set_num_threads(threads)
    for x, out in zip(xs, results):
        assert_close(out, F.linear(x, W), 1e-6)


@pytest.fixture
def fused_calls(monkeypatch) -> list[int]:
    """Records the blocks that ran the fused step (by id of their state dict)."""
    calls: list[int] = []
    real = mamba_step.blocks_step

    def counting(x, blocks):
        calls.extend(id(state) for _, state in blocks)
        return real(x, blocks)

    monkeypatch.setattr(mamba_step, "blocks_step", counting)
    return calls


def decode(model, steps: int = 4, hooks=()):
    """Logits of `steps` tokens decoded one at a time after a 3-token prompt."""
    ids = random_ids(2, 3 + steps)
    state = model.new_state(2)
    with torch.no_grad(), model.hooks(hooks):
        model(ids[:, :3], state)
        logits = torch.stack([model.step(ids[:, t], state) for t in range(3, 3 + steps)], 1)
    return logits, state


@needs_cpp
def test_decoding_fuses_only_the_blocks_no_hook_watches(fused_calls):
    model = tiny_mamba(num_hidden_layers=3)
    decode(model)
    assert len(fused_calls) == 3 * 4
    fused_calls.clear()

    seen = []
    _, state = decode(model, hooks=[("layers.1.mixer.hook_delta", lambda t, n: seen.append(t))])
    assert len(fused_calls) == 2 * 4 and id(state.layers[1]) not in fused_calls
    assert len(seen) == 1 + 4  # the prompt, then every step
    fused_calls.clear()

    handle = model.layers[2].mixer.in_proj.register_forward_hook(lambda *a: None)  # a torch hook
    try:
        _, state = decode(model)
    finally:
        handle.remove()
    assert len(fused_calls) == 2 * 4 and id(state.layers[2]) not in fused_calls


@needs_cpp
def test_no_fusing_with_a_gradient_or_a_pytorch_backend(fused_calls):
    model = tiny_mamba()
    state = model.new_state(1)
    with torch.no_grad():
        model(random_ids(1, 2), state)
    model.step(random_ids(1, 1)[:, 0], state).sum().backward()  # the modules, differentiable
    assert fused_calls == [] and model.layers[0].mixer.in_proj.weight.grad is not None
    torch_model = tiny_mamba(scan_backend="torch")
    decode(torch_model)
    assert fused_calls == []


@needs_cpp
def test_hooked_decoding_sees_and_gives_what_it_did(fused_calls):
    """A no-op hook on one layer makes that layer run its modules: the logits stay those of
    the fused decoding (<= 1e-5), and the values the hook sees, token by token, are those
    of a forward over the whole sequence (run_with_cache)."""
    model = tiny_mamba(num_hidden_layers=3)
    plain, _ = decode(model, steps=6)
    seen: list[torch.Tensor] = []
    hooked, _ = decode(model, steps=6,
                       hooks=[("layers.1.mixer.hook_gate", lambda t, n: seen.append(t))])
    assert len(fused_calls) == 3 * 6 + 2 * 6  # hooked, layers 0 and 2 still fuse
    assert_close(hooked, plain)
    _, cache = model.run_with_cache(random_ids(2, 9), "layers.1.mixer.hook_gate")
    torch.testing.assert_close(torch.cat(seen, 1), cache["layers.1.mixer.hook_gate"],
                               rtol=1e-5, atol=1e-5)


def test_the_vlm_mamba_decoder_decodes_through_the_fused_step(fused_calls):
    from ssm_bridge.model import EnhancedVLM, VLMConfig

    torch.manual_seed(0)
    model = EnhancedVLM(VLMConfig.from_preset("tiny", decoder_type="mamba",
                                              cross_attn_layers=0)).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fused = model.generate(images, max_length=8, temperature=0.0)
    steps = (fused[0] != model.config.pad_token_id).sum().item() - 2  # after prefix + BOS
    assert len(fused_calls) == steps * len(model.decoder.layers)
    fused_calls.clear()
    with torch.no_grad(), model.hooks([("decoder.layers.*.hook_resid_post", lambda t, n: t)]):
        plain = model.generate(images, max_length=8, temperature=0.0)  # watched: modules
    assert not fused_calls and torch.equal(fused, plain)
