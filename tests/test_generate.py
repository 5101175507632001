"""Generation: BOS/EOS/padding, greedy and sampling, seeds, prompts, and the KV cache."""

import pytest
import torch
from conftest import batch, make_model, open_gates

from ssm_bridge.core.generation import filter_logits
from ssm_bridge.core.layers import eval_mode


@pytest.fixture
def model(tiny_config):
    return open_gates(make_model(tiny_config), 0.7)


def test_shape_bos_and_length(model, tiny_config):
    images, _ = batch(tiny_config, B=3)
    out = model.generate(images, max_length=9, temperature=0.8, top_k=50, top_p=0.9, seed=0)
    assert out.dtype == torch.long and out.shape[0] == 3 and out.shape[1] <= 9
    assert (out[:, 0] == tiny_config.bos_token_id).all()
    assert ((out >= 0) & (out < tiny_config.vocab_size)).all()


def force_eos_for_row(model, row: int):
    """Hook the logits so `row` always prefers EOS and the other rows never emit it."""
    eos = model.config.eos_token_id

    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos] = -1e9
        logits[row, :, eos] = 1e9
        return logits

    return model.decoder.hook_logits.register_forward_hook(hook)


def test_rows_stop_at_eos_and_are_padded(model, tiny_config):
    images, _ = batch(tiny_config, B=2)
    handle = force_eos_for_row(model, 0)
    try:
        out = model.generate(images, max_length=7, temperature=0)
    finally:
        handle.remove()
    c = tiny_config
    assert out.shape == (2, 7)
    assert out[0].tolist() == [c.bos_token_id, c.eos_token_id] + [c.pad_token_id] * 5
    assert (out[1, 1:] != c.eos_token_id).all()


def test_stops_early_when_every_row_is_done(model, tiny_config):
    images, _ = batch(tiny_config, B=1)
    handle = force_eos_for_row(model, 0)
    try:
        out = model.generate(images, max_length=20, temperature=0)
    finally:
        handle.remove()
    assert out.tolist() == [[tiny_config.bos_token_id, tiny_config.eos_token_id]]


def test_greedy_is_argmax_of_full_forward(model, tiny_config):
    images, _ = batch(tiny_config)
    out = model.generate(images, max_length=6, temperature=0)
    logits = model(images, out[:, :-1])
    eos = tiny_config.eos_token_id
    for b in range(2):
        for t in range(out.shape[1] - 1):
            if t > 0 and out[b, t].item() in (eos, tiny_config.pad_token_id):
                break
            assert out[b, t + 1] == logits[b, t].argmax()


def test_cached_decoding_equals_full_recompute(model, tiny_config):
    images, _ = batch(tiny_config)
    cached = model.generate(images, max_length=12, temperature=0)
    full = model.generate(images, max_length=12, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # and step logits match the full forward to float precision
    media = model.encode_image(images)
    seq = cached[:, :6]
    cache = model.decoder.new_cache(2, 12, media.shape[1], media.device, media.dtype)
    step_logits = [model.decoder(media, seq[:, :3], cache=cache)]
    step_logits += [model.decoder(media, seq[:, t : t + 1], cache=cache) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(step_logits, 1), model(images, seq), rtol=1e-5,
                               atol=1e-5)


def test_image_is_encoded_once_per_call(model, tiny_config):
    images, _ = batch(tiny_config)
    calls = []
    handle = model.vision.register_forward_hook(lambda *a: calls.append(1))
    model.generate(images, max_length=10, temperature=0)
    handle.remove()
    assert len(calls) == 1


def test_seed_and_generator_reproduce(model, tiny_config):
    images, _ = batch(tiny_config)
    kw = dict(max_length=10, temperature=1.5, top_k=None, top_p=None)
    a = model.generate(images, seed=3, **kw)
    b = model.generate(images, seed=3, **kw)
    g = torch.Generator().manual_seed(3)
    c = model.generate(images, generator=g, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    draws = {tuple(model.generate(images, seed=s, **kw).flatten().tolist()) for s in range(5)}
    assert len(draws) > 1, "different seeds should give different samples"


def test_prompt_is_continued(model, tiny_config):
    images, _ = batch(tiny_config)
    out = model.generate(images, max_length=8, temperature=0, prompt=[10, 11, 12])
    assert out[:, :4].tolist() == [[tiny_config.bos_token_id, 10, 11, 12]] * 2
    per_row = model.generate(images, max_length=8, temperature=0,
                             prompt=torch.tensor([[10, 11, 12], [10, 11, 12]]))
    assert torch.equal(out, per_row)


def test_generate_restores_training_mode(model, tiny_config):
    images, _ = batch(tiny_config)
    model.train()
    model.generate(images, max_length=4, temperature=0)
    assert model.training


def test_eval_mode_restores_either_mode_even_after_an_error(model):
    for training in (True, False):
        model.train(training)
        with pytest.raises(RuntimeError, match="boom"), eval_mode(model) as m:
            assert m is model and not model.training
            assert not any(sub.training for sub in model.modules())
            raise RuntimeError("boom")
        assert all(sub.training == training for sub in model.modules())


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, None)).tolist() == [[False, False, True, True]]
    kept = ~torch.isinf(filter_logits(logits, None, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    assert (~torch.isinf(filter_logits(logits, None, 0.1))).sum() == 1  # top token survives
    assert not torch.isinf(filter_logits(logits, 10, 1.0)).any()


def test_default_max_length_is_50_or_the_models_limit(tiny_config):
    images = torch.randn(1, tiny_config.in_channels, tiny_config.img_size, tiny_config.img_size)
    short = make_model(tiny_config.replace(max_seq_length=12))
    assert short.generate(images, temperature=0).shape[1] <= 12
    with pytest.raises(ValueError, match="max_length"):
        short.generate(images, max_length=50, temperature=0)  # explicit values stay checked
    long = make_model(tiny_config.replace(max_seq_length=64))
    eos = long.config.eos_token_id
    with long.hooks([("decoder.hook_logits",
                      lambda t, n: t.index_fill(-1, torch.tensor([eos]), -1e9))]):
        assert long.generate(images, temperature=0).shape[1] == 50  # never stops early
