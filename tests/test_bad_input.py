"""Every bad input gets a ValueError that names the problem and the expected value."""

import pytest
import torch
from conftest import batch, make_model


@pytest.fixture(scope="module")
def model():
    from ssm_bridge import VLMConfig

    return make_model(VLMConfig.from_preset("tiny"))


@pytest.fixture(scope="module")
def good(model):
    return batch(model.config)


@pytest.mark.parametrize(
    "make_images, words",
    [
        (lambda: torch.randn(3, 32, 32), ["rank 4", "unsqueeze(0)"]),
        (lambda: torch.randn(2, 1, 32, 32), ["3 channels", "got 1"]),
        (lambda: torch.randn(2, 3, 64, 64), ["32x32", "got 64x64", "resize"]),
        (lambda: torch.full((2, 3, 32, 32), float("nan")), ["NaN", "finite"]),
        (lambda: torch.zeros(2, 3, 32, 32).index_fill_(2, torch.tensor([3]), float("inf")),
         ["infinite"]),
        (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ["float", "/ 255"]),
    ],
)
def test_bad_images(model, good, make_images, words):
    for call in (lambda im: model(im, good[1]), lambda im: model.generate(im, max_length=4)):
        with pytest.raises(ValueError) as e:
            call(make_images())
        for w in words:
            assert w in str(e.value)


@pytest.mark.parametrize(
    "make_tokens, words",
    [
        (lambda: torch.tensor([[1, 2, 64]]).expand(2, -1), ["64", "[0, 64)"]),
        (lambda: torch.tensor([[1, -5, 3]]).expand(2, -1), ["-5", "vocabulary"]),
        (lambda: torch.ones(2, 33, dtype=torch.long), ["33", "max_seq_length=32"]),
        (lambda: torch.ones(2, 4), ["integer token ids"]),
        (lambda: torch.ones(4, dtype=torch.long), ["2-D"]),
    ],
)
def test_bad_tokens(model, good, make_tokens, words):
    with pytest.raises(ValueError) as e:
        model(good[0], make_tokens())
    for w in words:
        assert w in str(e.value)


def test_bad_targets(model, good):
    images, tokens = good
    with pytest.raises(ValueError, match="or -100"):
        model(images, tokens, torch.full_like(tokens, 99))
    with pytest.raises(ValueError, match="shape of tokens"):
        model(images, tokens, tokens[:, :3])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(top_p=0.0), ["top_p", "(0, 1]"]),
        (dict(top_p=1.5), ["top_p", "(0, 1]"]),
        (dict(top_k=0), ["top_k", ">= 1"]),
        (dict(temperature=-0.5), ["temperature", ">= 0"]),
        (dict(temperature=float("nan")), ["temperature", "finite"]),
        (dict(max_length=0), ["max_length", "[1, max_seq_length=32]"]),
        (dict(max_length=40), ["max_length", "[1, max_seq_length=32]"]),
        (dict(max_length=1), ["no room", "raise max_length"]),
        (dict(prompt=[5, 70]), ["prompt", "vocabulary"]),
    ],
)
def test_bad_sampling_arguments(model, good, kwargs, words):
    with pytest.raises(ValueError) as e:
        model.generate(good[0], **{"max_length": 8, **kwargs})
    for w in words:
        assert w in str(e.value)


def test_images_and_tokens_must_have_one_batch_size(model, good):
    images, tokens = good  # batch 2
    for imgs, toks, words in [(images, tokens[:1], ["2 images", "1 token rows"]),
                              (images[:1], tokens, ["1 images", "2 token rows"])]:
        with pytest.raises(ValueError) as e:
            model(imgs, toks)
        for w in ["same batch size", *words]:
            assert w in str(e.value)
