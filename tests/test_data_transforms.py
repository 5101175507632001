"""ImageTransform: every common image mode and size in, (3, S, S) float out, and back."""

import numpy as np
import pytest
import torch
from PIL import Image

from ssm_bridge.data import ImageTransform

S = 32
TF = ImageTransform(S)


def pixel(tf, image):
    """The uint8 RGB of the top-left pixel after the transform and its inverse."""
    return tuple(tf.inverse(tf(image))[0, 0].tolist())


def test_rgb_array_fast_path_round_trips():
    arr = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    x = TF(arr)
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(TF.inverse(x), arr)
    assert np.array_equal(TF.inverse(TF.batch(arr[None].repeat(2, 0)))[1], arr)


def test_mean_std_normalisation():
    tf = ImageTransform(S, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    x = tf(np.full((S, S, 3), 255, np.uint8))
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 1.0, 0.0]))
    assert pixel(tf, np.full((S, S, 3), 200, np.uint8)) == (200, 200, 200)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "CMYK", "1", "I;16", "I", "F",
                                  "YCbCr"])
def test_modes(mode):
    base = Image.new("RGB", (40, 24), (200, 40, 40))
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        img = Image.fromarray(np.full((24, 40), 40000, np.uint16))
        assert img.mode == "I;16"
    elif mode == "I":
        img = Image.fromarray(np.full((24, 40), 40000, np.int32))
    elif mode == "F":
        img = Image.fromarray(np.full((24, 40), 0.5, np.float32))
    x = TF(img)
    assert x.shape == (3, S, S) and torch.isfinite(x).all()
    got = pixel(TF, img)
    if mode in ("I;16", "I"):
        assert got == (156, 156, 156)  # 40000 / 257
    elif mode == "F":
        assert got == (128, 128, 128)
    elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P"):
        tolerance = 20 if mode == "P" else 6  # P: PIL's web palette has 51-level steps
        assert np.abs(np.array(got) - [200, 40, 40]).max() <= tolerance, got


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (S, S), (255, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 255))
    out = TF.inverse(TF(img))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 255)
    la = Image.new("LA", (S, S), (0, 0))
    assert pixel(TF, la) == (255, 255, 255)
    p = Image.new("P", (S, S), 0)
    p.putpalette([0, 255, 0] * 256)
    p.info["transparency"] = 0
    assert pixel(TF, p) == (255, 255, 255)
    black_fill = ImageTransform(S, fill=(0, 0, 0))
    assert pixel(black_fill, img) == (0, 0, 0)


def test_odd_sizes_and_letterbox():
    for w, h in [(1, 1), (37, 91), (300, 7), (S, S)]:
        assert TF(Image.new("RGB", (w, h), (10, 20, 30))).shape == (3, S, S)
    pad = ImageTransform(S, fit="pad", fill=(255, 255, 255))
    out = pad.inverse(pad(Image.new("RGB", (64, 16), (0, 0, 0))))
    assert tuple(out[0, 0]) == (255, 255, 255)  # padded band above
    assert tuple(out[S // 2, S // 2]) == (0, 0, 0)  # the image in the middle
    assert TF(np.zeros((50, 20), np.uint8)).shape == (3, S, S)


def test_files(tmp_path):
    for name, img in [("a.png", Image.new("RGBA", (20, 30), (0, 0, 255, 255))),
                      ("b.jpg", Image.new("CMYK", (20, 30), (0, 255, 255, 0))),
                      ("c.png", Image.fromarray(np.full((9, 9), 65535, np.uint16))),
                      ("d.gif", Image.new("P", (9, 9), 3))]:
        img.save(tmp_path / name)
        x = TF(tmp_path / name)
        assert x.shape == (3, S, S)
        assert TF(str(tmp_path / name)).equal(x)
    assert pixel(TF, tmp_path / "c.png") == (255, 255, 255)
    assert np.abs(np.array(pixel(TF, tmp_path / "b.jpg")) - [255, 0, 0]).max() < 8


def test_non_images_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png"):
        TF(text)
    good = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    good.write_bytes(good.read_bytes()[:60])  # truncated download
    with pytest.raises(ValueError, match=r"cut\.png"):
        TF(good)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        TF(tmp_path / "missing.png")


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        TF(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TF(np.full((4, 4, 3), 2.0))
    with pytest.raises(ValueError, match="dtype"):
        TF(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ValueError, match="PIL image"):
        TF([1, 2, 3])
    with pytest.raises(ValueError, match="fit"):
        ImageTransform(S, fit="crop")
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        TF.inverse(torch.zeros(S, S))
    assert pixel(TF, np.full((4, 4), 65535, np.uint16)) == (255, 255, 255)
    assert pixel(TF, np.full((4, 4, 3), 0.5)) == (128, 128, 128)
