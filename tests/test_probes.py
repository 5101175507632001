"""Linear probes: the logistic-regression probe, patch labels from scene masks, and a
probe_layers run end to end on a tiny model."""

import numpy as np
import pytest
import torch
from conftest import make_model

from ssm_bridge.data import Scene, SceneObject
from ssm_bridge.interp.probes import (
    BACKGROUND,
    majority_baseline,
    patch_labels,
    patch_objects,
    probe_layers,
    train_probe,
)


def blobs(n: int = 300, D: int = 8, K: int = 3, seed: int = 0):
    """K well-separated Gaussian clusters in D dims, labels "c0".."c{K-1}"."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(K, D, generator=g)  # (K, D)
    y = torch.randint(0, K, (n,), generator=g)  # (n,)
    X = centres[y] + torch.randn(n, D, generator=g)  # (n, D)
    return X, np.array([f"c{i}" for i in y.tolist()])


def test_probe_separates_separable_data_and_not_shuffled_labels():
    X, y = blobs()
    probe = train_probe(X[:200], y[:200], seed=0, epochs=30)
    assert probe.accuracy(X[200:], y[200:]) > 0.95
    shuffled = np.random.default_rng(0).permutation(y[:200])
    chance = train_probe(X[:200], shuffled, seed=0, epochs=30).accuracy(X[200:], y[200:])
    assert chance < 0.55  # 3 classes: chance ~ 1/3
    again = train_probe(X[:200], y[:200], seed=0, epochs=30)
    assert torch.equal(again.weight, probe.weight)  # deterministic


def test_probe_rejects_bad_inputs():
    X, y = blobs(20)
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_probe(X, np.array(["a"] * 20))
    with pytest.raises(ValueError, match=r"X must be \(n, D\)"):
        train_probe(X, y[:5])


def hand_scene() -> Scene:
    """A 16 x 16 scene, 2 x 2 grid of 8 px patches: a red square filling patch 0, a blue
    circle covering 20 px of patch 1 and 40 px of patch 3, patch 2 empty."""
    red = np.zeros((16, 16), bool)
    red[:8, :8] = True
    blue = np.zeros((16, 16), bool)
    blue[:4, 8:13] = True  # 20 px of patch 1 (31 %)
    blue[8:13, 8:16] = True  # 40 px of patch 3 (62 %)
    objs = [SceneObject("square", "red", "large", (4, 4), (0, 0, 8, 8), red),
            SceneObject("circle", "blue", "small", (12, 8), (8, 0, 16, 13), blue)]
    return Scene(np.zeros((16, 16, 3), np.uint8), objs, "", [], [], seed=0)


def test_patch_labels_follow_the_coverage_rule():
    scene = hand_scene()
    assert patch_objects(scene, 2).tolist() == [0, 1, -1, 1]
    assert patch_objects(scene, 2, min_coverage=0.5).tolist() == [0, -1, -1, 1]
    labels = patch_labels(scene, 2)
    assert labels["colour"].tolist() == ["red", "blue", BACKGROUND, "blue"]
    assert labels["shape"].tolist() == ["square", "circle", BACKGROUND, "circle"]
    with pytest.raises(ValueError, match="patch grid"):
        patch_objects(scene, 3)
    with pytest.raises(ValueError, match="attributes"):
        patch_labels(scene, 2, attributes=("texture",))


def test_majority_baseline():
    assert majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"]) == 0.25


def test_probe_layers_runs_end_to_end_on_a_tiny_model(tiny_config):
    model = make_model(tiny_config)
    rows = probe_layers(model, n_train=6, n_test=2, attributes=("colour", "shape"),
                        layers=["input", "layer_1"], progress=False, epochs=8, control=True)
    assert [(r["layer"], r["attribute"]) for r in rows] == [
        (n, a) for n in ("input", "layer_1") for a in ("colour", "shape")]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["majority_baseline"] <= 1
        assert 0 < r["n_test"] < r["n_test_all"] == 2 * 16
        assert 0 <= r["control_accuracy"] <= 1
    with pytest.raises(ValueError, match="probe layers"):
        probe_layers(model, n_train=2, n_test=1, layers=["layer_9"], progress=False)


@pytest.mark.parametrize("changes", [dict(bridge_type="mlp", decoder_type="mamba",
                                          cross_attn_layers=0), dict(bridge_type="ssm")])
def test_probes_follow_an_attribute_from_encoder_to_decoder_prefix_in_any_bridge(
        tiny_config, changes):
    """"encoder", "input", "output" and "prefix" exist for every bridge type (an MLP bridge
    has no SSM layers), in the order the image flows; "prefix" is what the decoder gets."""
    from ssm_bridge.data import make_scene
    from ssm_bridge.interp.probes import collect_patch_features, every_layer

    model = make_model(tiny_config.replace(**changes))
    names = list(every_layer(model))
    assert names[0] == "encoder" and names[-2:] == ["output", "prefix"]
    assert ("layer_0" in names) == (changes["bridge_type"] == "ssm")
    scenes = [make_scene("test", i) for i in range(2)]
    feats = collect_patch_features(model, scenes, ["encoder", "output", "prefix"])
    P = tiny_config.num_patches
    assert feats["encoder"].shape == (2 * P, tiny_config.vision_embed_dim)
    # image-prefix dropout is off in eval: a Mamba decoder is given the bridge's output as
    # is, the transformer decoder adds its learned prefix embedding (cls dropped)
    added = feats["prefix"] - feats["output"]  # (2 * P, dim)
    if changes.get("decoder_type") == "mamba":
        assert torch.equal(added, torch.zeros_like(added))
    else:
        with torch.no_grad():
            model.decoder.prefix_embed.normal_()  # (1, 1, dim), zero at init
        moved = collect_patch_features(model, scenes, ["output", "prefix"])
        added = moved["prefix"] - moved["output"]  # (2 * P, dim)
        embed = model.decoder.prefix_embed.reshape(1, -1)  # (1, dim)
        assert torch.allclose(added, embed.expand_as(added), atol=1e-5)
    rows = probe_layers(model, n_train=4, n_test=2, attributes=("colour",), progress=False,
                        epochs=4, layers=["encoder", "prefix"])
    assert [r["layer"] for r in rows] == ["encoder", "prefix"]


def test_a_patch_probe_refuses_a_resampler_s_latents(tiny_config):
    from ssm_bridge.data import make_scene
    from ssm_bridge.interp.probes import collect_patch_features

    model = make_model(tiny_config.replace(bridge_type="resampler"))
    with pytest.raises(ValueError, match="not a cls and the 16 patches"):
        collect_patch_features(model, [make_scene("test", 0)], ["output"])
