"""The out-of-distribution score: scene-world images score low, photographs and noise high,
and the app warns beside the caption of an image unlike the scene world."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ssm_bridge import load_pretrained
from ssm_bridge.interp.ood import OODScore, _scene_images, auroc


def photo_files() -> list[str]:
    """Photographs that ship inside installed packages (offline): gradio's demo images and
    matplotlib's sample portrait."""
    import gradio
    import matplotlib

    g, m = os.path.dirname(gradio.__file__), os.path.dirname(matplotlib.__file__)
    names = [f"{g}/media_assets/images/{n}" for n in
             ("cheetah.jpg", "cheetah1.jpg", "groot.jpeg", "lion.jpg", "tower.jpg")]
    names += [f"{g}/test_data/cheetah2.jpg", f"{m}/mpl-data/sample_data/grace_hopper.jpg"]
    return [n for n in names if os.path.exists(n)]


def photos(transform, crops: int = 3, seed: int = 0) -> torch.Tensor:
    """Each photo whole and as `crops` random square crops (30-80 % of its short side)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in photo_files():
        im = Image.open(f).convert("RGB")
        W, H = im.size
        out.append(transform(np.asarray(im)))
        for _ in range(crops):
            s = int(min(W, H) * rng.uniform(0.3, 0.8))
            x, y = rng.integers(0, W - s + 1), rng.integers(0, H - s + 1)
            out.append(transform(np.asarray(im.crop((x, y, x + s, y + s)))))
    return torch.stack(out)


def noise(transform, n: int = 20, seed: int = 0) -> torch.Tensor:
    """Uniform and Gaussian pixel noise, n of each."""
    rng = np.random.default_rng(seed)
    uniform = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
    gauss = [np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
             for _ in range(n)]
    return torch.stack([transform(x) for x in uniform + gauss])


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shapes-tiny")


@pytest.fixture(scope="module")
def fitted(shipped):
    return OODScore.fit(shipped.model, shipped.transform, shipped.scene_config)


def test_auroc_known_values():
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert auroc([0.1, 0.3], [0.2, 0.3]) == pytest.approx(0.625)  # one win, one tie of four
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])


@pytest.mark.slow
def test_scenes_score_low_photos_and_noise_high(shipped, fitted):
    assert len(photo_files()) >= 5, "the packages' sample photographs are missing"
    m = shipped.model
    scenes = fitted.score(m, _scene_images(shipped.transform, shipped.scene_config, "test",
                                           200))
    assert (scenes > 1).float().mean() <= 0.05  # calibrated at the validation 99th percentile
    assert auroc(scenes, fitted.score(m, photos(shipped.transform))) >= 0.95
    assert auroc(scenes, fitted.score(m, noise(shipped.transform))) >= 0.95
    assert fitted.is_unusual(m, photos(shipped.transform, crops=0)).all()


def test_fit_refuses_too_few_scenes(shipped):
    with pytest.raises(ValueError, match="n_train must be >= 2"):
        OODScore.fit(shipped.model, shipped.transform, shipped.scene_config, n_train=1)


@pytest.mark.slow
def test_the_app_warns_beside_the_caption_of_a_photo(shipped):
    from ssm_bridge.app.support import Analyser, Decoding, word_info
    from ssm_bridge.data import make_scene

    an = Analyser(shipped)
    greedy = Decoding("greedy", 1.0, 0, 1.0, shipped.model.config.max_seq_length, 0)
    photo = an.prepare(Image.open(photo_files()[0]))
    view = an.analyse(photo, greedy)
    assert view.ood > 1 and "unlike the scenes the model was trained on" in word_info(view, 0)
    scene = make_scene("test", 3, shipped.scene_config)
    view = an.analyse(an.prepare(scene.image), greedy, scene)
    assert view.ood < 1 and "unlike" not in word_info(view, 0)
    assert Analyser(shipped, fit_ood=False).ood_score(photo) is None


def test_the_fit_holds_a_given_lock_one_batch_at_a_time():
    """The app fits the score in the background under its model lock; holding it for the
    whole fit (5-10 s) made the first captions after a start wait for all of it."""
    import threading

    p = load_pretrained("shapes-tiny")

    class Counted:
        def __init__(self):
            self.lock, self.entered = threading.Lock(), 0

        def __enter__(self):
            self.lock.acquire()
            self.entered += 1

        def __exit__(self, *exc):
            self.lock.release()

    lock = Counted()
    locked = OODScore.fit(p.model, p.transform, p.scene_config, n_train=16, n_val=8,
                          batch=4, lock=lock)
    assert lock.entered == 16 // 4 + 8 // 4 and not lock.lock.locked()
    free = OODScore.fit(p.model, p.transform, p.scene_config, n_train=16, n_val=8, batch=4)
    torch.testing.assert_close(locked.precision, free.precision)
    assert locked.scale == pytest.approx(free.scale)
