"""viz/: every plot returns a Figure with the panels it promises, from torch or numpy input,
draws the data it was given where it belongs, rejects wrong shapes and saves as PNG."""

import io

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import viz
from ssm_bridge.core.ssm import direction_perm
from viz.arrays import as_image, grid_values, scan_step_grid
from viz.style import upsample

G = 4  # patch grid side
L = 1 + G * G  # cls + patches
H = 32  # image side


def rng(seed=0):
    return np.random.default_rng(seed)


def rand(*shape, seed=0):
    return rng(seed).random(shape)


def randn(*shape, seed=0):
    return rng(seed).standard_normal(shape)


@pytest.fixture
def image():
    return rng().integers(0, 256, (H, H, 3), dtype=np.uint8)  # (H, W, 3)


def close(fig):
    assert isinstance(fig, Figure)
    fig.clear()


def heat_images(ax):
    """Images drawn on an axes, in drawing order (the picture first, then the heat map)."""
    return [im.get_array() for im in ax.images]


ROWS = [
    {"map": "cross_attention", "pointing_game": 0.8, "energy_in_mask": 0.4,
     "random_pointing_game": 0.2, "random_energy": 0.1, "n": 300},
    {"map": "gradcam", "pointing_game": 0.6, "energy_in_mask": 0.3,
     "random_pointing_game": 0.2, "random_energy": 0.1, "n": 300},
]


# ---- input handling ----

def test_as_image_accepts_uint8_float_and_channel_first():
    img = rng().integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(as_image(img), img / 255.0)
    np.testing.assert_allclose(as_image(torch.from_numpy(img)), img / 255.0)
    normalised = torch.from_numpy(randn(3, 8, 8))  # a model input: channel-first, mean 0
    out = as_image(normalised)
    assert out.shape == (8, 8, 3) and out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        as_image(np.zeros((8, 8, 5)))


def test_grid_values_puts_scan_order_back_on_the_patch_grid():
    perm = direction_perm("row_rev", L)  # step 1 reads the last patch
    steps = np.arange(L, dtype=float)
    grid = grid_values(steps, G, prefix=1, scan_perm=perm)
    assert grid.shape == (G, G)
    assert grid[-1, -1] == 1 and grid[0, 0] == L - 1
    np.testing.assert_array_equal(grid, scan_step_grid(perm, G, 1))
    col = grid_values(steps, G, prefix=1, scan_perm=direction_perm("col", L))
    np.testing.assert_array_equal(col[:, 0], [1, 2, 3, 4])  # column-major: down first
    with pytest.raises(ValueError, match="permutation"):
        grid_values(steps, G, scan_perm=np.zeros(L))
    with pytest.raises(ValueError, match="grid_side"):
        grid_values(np.arange(L + 1.0), G)


def test_upsample_is_bilinear_and_keeps_constants():
    np.testing.assert_allclose(upsample(np.full((4, 4), 2.5), (32, 32)), 2.5, rtol=1e-6)
    ramp = upsample(np.array([[0.0, 1.0]]), (1, 8))
    assert np.all(np.diff(ramp[0]) >= 0) and ramp[0, 0] == 0 and ramp[0, -1] == 1
    assert 0 < ramp[0, 3] < 1  # interpolated, not a step


# ---- maps ----

@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_overlay_draws_upsampled_map_over_image(image, to):
    grid = rng(1).random((G, G))
    fig = viz.overlay(to(image), to(grid), title="t")
    assert len(fig.axes) == 2  # panel + colourbar
    picture, heat = heat_images(fig.axes[0])
    assert picture.shape == (H, H, 3) and heat.shape == (H, H)
    assert fig.axes[0].get_title() == "t"
    close(fig)


def test_overlay_into_given_axes_and_bad_shapes(image):
    fig, axes = viz.new_figure(ncols=2)
    out = viz.overlay(image, np.ones((G, G)), ax=axes[0, 1], colorbar=False)
    assert out is fig and len(axes[0, 1].images) == 2 and len(axes[0, 0].images) == 0
    close(fig)
    with pytest.raises(ValueError, match=r"\(g, g\)"):
        viz.overlay(image, np.ones(G * G))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        viz.overlay(np.ones((H, H, 2)), np.ones((G, G)))


def test_word_attention_grid_one_panel_per_word(image):
    maps = [(w, torch.from_numpy(rand(G, G))) for w in ["a", "red", "circle", "left", "of"]]
    fig = viz.word_attention_grid(image, maps, ncols=3)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["a", "red", "circle", "left", "of"]
    assert len(fig.axes) == 5 + 1  # unused 6th cell removed, one shared colourbar
    close(fig)
    with pytest.raises(ValueError, match="at least one"):
        viz.word_attention_grid(image, [])
    with pytest.raises(ValueError, match=r"\(g, g\)"):
        viz.word_attention_grid(image, [("a", np.ones((1, G, G)))])


def test_layer_maps_panel_and_colourbar_per_map(image):
    maps = {"layer 0 Δ": rand(G, G), "layer 0 gate": torch.from_numpy(rand(G, G)),
            "layer 1 Δ": rand(G, G)}
    fig = viz.layer_maps(maps, ncols=2)
    assert len(fig.axes) == 3 + 3
    assert heat_images(fig.axes[0])[0].shape == (G, G)  # bare map without an image
    close(fig)
    fig = viz.layer_maps(maps, image=image, shared_scale=True)
    assert len(fig.axes) == 3 + 1
    close(fig)
    with pytest.raises(ValueError, match="dict"):
        viz.layer_maps([("a", np.ones((G, G)))])


def test_attribution_overlay_colour_maps(image):
    signed = torch.from_numpy(randn(3, H, H))
    fig = viz.attribution_overlay(image, signed, "gradient x input")
    assert len(fig.axes) == 3  # image, overlay, colourbar
    heat = fig.axes[1].images[1]
    assert heat.get_cmap().name == viz.style.DIVERGING_CMAP and heat.get_array().shape == (H, H)
    assert fig.axes[1].get_title() == "gradient x input"
    close(fig)
    fig = viz.attribution_overlay(image, rand(G, G), "GradCAM")
    assert fig.axes[1].images[1].get_cmap().name == viz.style.SEQUENTIAL_CMAP
    close(fig)
    fig = viz.attribution_overlay(image, -rand(H, H), "abs", signed=False)
    assert fig.axes[1].images[1].get_array().min() >= 0
    close(fig)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        viz.attribution_overlay(image, np.ones((1, 3, H, H)), "x")


# ---- ssm ----

def test_state_pca_is_deterministic_and_finds_the_main_direction():
    t = np.linspace(0, 1, L)
    h = np.outer(t, rng().normal(size=8)) + 1e-3 * rng(1).normal(size=(L, 8))  # (L, F) a line
    proj, explained = viz.state_pca(h)
    again, _ = viz.state_pca(torch.from_numpy(h).reshape(L, 2, 4))  # (L, D, N) same states
    np.testing.assert_allclose(proj, again, atol=1e-9)
    assert proj.shape == (L, 2) and explained[0] > 0.99
    assert abs(np.corrcoef(proj[:, 0], t)[0, 1]) > 0.999  # PC1 is the position along the line


@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_state_trajectory_path_has_one_point_per_step(image, to):
    h = to(rng().normal(size=(L, 3, 4)))
    perm = direction_perm("col", L)
    fig = viz.state_trajectory(h, grid_side=G, scan_perm=perm, image=image)
    assert len(fig.axes) == 3  # path, patch grid, shared colourbar
    (path,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(path.get_offsets()) == L
    np.testing.assert_array_equal(path.get_array(), np.arange(L))
    steps = fig.axes[1].images[1].get_array()  # patch grid, drawn over the image
    np.testing.assert_array_equal(steps, scan_step_grid(perm, G, 1))
    close(fig)


def test_state_trajectory_bad_shapes():
    with pytest.raises(ValueError, match=r"\(L, D, N\) or \(L, F\)"):
        viz.state_trajectory(np.ones(L))
    with pytest.raises(ValueError, match="grid_side"):
        viz.state_trajectory(np.ones((L, 4)), grid_side=G + 1)


def test_delta_gate_and_norm_maps_land_on_the_right_patches(image):
    perm = direction_perm("row_rev", L)
    delta = torch.arange(L, dtype=torch.float32)[:, None].repeat(1, 6)  # (L, D) = scan step
    fig = viz.delta_map(delta, G, scan_perm=perm)
    assert len(fig.axes) == 2
    np.testing.assert_array_equal(heat_images(fig.axes[0])[0], scan_step_grid(perm, G, 1))
    close(fig)
    gate = np.zeros((L, 6))
    gate[1 + 5, 2] = 3.0  # patch (1, 1), one channel
    mean = heat_images(viz.gate_map(gate, G).axes[0])[0]
    peak = heat_images(viz.gate_map(gate, G, reduce="max").axes[0])[0]
    assert mean[1, 1] == pytest.approx(0.5) and peak[1, 1] == 3.0 and peak.sum() == 3.0
    h = np.zeros((L, 2, 3))
    h[1, :, 0] = 2.0  # |h| = 2 at the first patch
    fig = viz.state_norm_map(torch.from_numpy(h), G, image=image)
    _, heat = heat_images(fig.axes[0])
    assert heat.shape == (H, H) and heat.max() > 0
    close(fig)
    with pytest.raises(ValueError, match=r"\(L, D, N\)"):
        viz.state_norm_map(np.ones((L, 2)), G)
    with pytest.raises(ValueError, match="reduce"):
        viz.delta_map(np.ones((L, 2)), G, reduce="median")


# ---- attention ----

def test_implicit_attention_matrix_linear_and_log():
    alpha = torch.tril(torch.from_numpy(rand(L, L)))  # zeros above the diagonal
    fig = viz.implicit_attention_matrix(alpha, title="layer 0")
    assert len(fig.axes) == 2 and heat_images(fig.axes[0])[0].shape == (L, L)
    assert fig.axes[0].get_title() == "layer 0"
    close(fig)
    fig = viz.implicit_attention_matrix(alpha.numpy(), log=True)
    shown = fig.axes[0].images[0].get_array()
    assert shown.mask[0, 1] and not shown.mask[1, 0]  # zeros masked on the log scale
    close(fig)
    with pytest.raises(ValueError, match=r"\(L, L\)"):
        viz.implicit_attention_matrix(np.ones((L, L - 1)))


def test_implicit_attention_grid_projects_rows_and_outlines_query(image):
    alpha = np.zeros((L, L))
    alpha[5, 1:6] = 1.0  # step 5 attends to the first five patch steps
    perm = direction_perm("row", L)
    fig = viz.implicit_attention_grid(torch.from_numpy(alpha), G, queries=[0, 5], image=image,
                                      scan_perm=perm)
    assert len(fig.axes) == 2 + 2
    assert len(fig.axes[0].patches) == 0  # step 0 reads cls: no patch to outline
    panel = {ax.get_title(): ax for ax in fig.axes}["query step 5"]
    (box,) = [p for p in panel.patches if isinstance(p, Rectangle)]
    assert box.get_xy() == (0 * 8 - 0.5, 1 * 8 - 0.5)  # step 5 reads patch (1, 0), 8 px cells
    close(fig)
    fig = viz.implicit_attention_grid(alpha, G, queries=[5])
    np.testing.assert_array_equal(heat_images(fig.axes[0])[0].ravel()[:5], 1.0)
    close(fig)
    with pytest.raises(ValueError, match="queries"):
        viz.implicit_attention_grid(alpha, G, queries=[L])


# ---- tables ----

def test_localisation_table_shows_every_value():
    fig = viz.localisation_table(ROWS)
    assert len(fig.axes) == 1
    texts = {c.get_text().get_text() for c in fig.axes[0].tables[0].get_celld().values()}
    assert {"cross_attention", "gradcam", "0.800", "0.300", "300"} <= texts
    close(fig)
    with pytest.raises(ValueError, match="non-empty"):
        viz.localisation_table([])


def test_localisation_bars_with_dashed_baselines():
    fig = viz.localisation_bars(ROWS, metric="energy_in_mask")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [0.4, 0.3]
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    segs = [seg for c in dashed for seg in c.get_segments()]
    assert len(segs) == 2 and all(s[0][1] == 0.1 for s in segs)  # from "random_energy"
    close(fig)
    rows = [*ROWS, {"map": "random", "pointing_game": 0.25}]
    fig = viz.localisation_bars(rows)  # the "random" row is the line, not a bar
    assert len(fig.axes[0].patches) == 2
    close(fig)
    with pytest.raises(ValueError, match="missing"):
        viz.localisation_bars(ROWS, metric="iou")


def test_gate_values_bars():
    fig = viz.gate_values({"cross 0 attn": torch.tensor(0.3), "cross 0 ff": -0.5})
    assert [round(p.get_height(), 6) for p in fig.axes[0].patches] == [0.3, -0.5]
    close(fig)
    with pytest.raises(ValueError, match="scalar"):
        viz.gate_values({"a": np.ones(2)})


# ---- scrubber ----

def test_scan_scrubber_frame_panels_and_progress(image):
    perm = direction_perm("row", L)
    proj = torch.from_numpy(randn(L, 2))
    fig = viz.scan_scrubber_frame(image, perm, step=6, grid_side=G, state_proj=proj,
                                  delta=torch.from_numpy(rand(L, 3)), gate=rand(L))
    assert len(fig.axes) == 3
    img_ax, path_ax, bar_ax = fig.axes
    shade = img_ax.images[1].get_array()  # (g, g, RGBA): unread patches dimmed
    assert shade.shape == (G, G, 4)
    assert (shade[..., 3] == 0).sum() == 6  # steps 1..6 read six patches
    (box,) = img_ax.patches
    assert box.get_xy() == (1 * 8 - 0.5, 1 * 8 - 0.5)  # step 6 reads patch (1, 1)
    sizes = [len(c.get_offsets()) for c in path_ax.collections]
    assert sizes == [7, 1]  # path so far (steps 0..6), current point
    assert len(bar_ax.patches) == 2
    close(fig)
    fig = viz.scan_scrubber_frame(image, perm.numpy(), step=0, grid_side=G)
    assert len(fig.axes) == 1 and fig.axes[0].images[1].get_array()[..., 3].min() > 0
    close(fig)
    with pytest.raises(ValueError, match="step"):
        viz.scan_scrubber_frame(image, perm, step=L, grid_side=G)
    with pytest.raises(ValueError, match=r"\(L, 2\)"):
        viz.scan_scrubber_frame(image, perm, step=1, grid_side=G, state_proj=np.ones((L, 3)))


# ---- every figure saves ----

BUILDERS = {
    "overlay": lambda im: viz.overlay(im, rand(G, G)),
    "words": lambda im: viz.word_attention_grid(im, [("a", rand(G, G))]),
    "trajectory": lambda im: viz.state_trajectory(randn(L, 2, 3), G),
    "norm": lambda im: viz.state_norm_map(randn(L, 2, 3), G, image=im),
    "delta": lambda im: viz.delta_map(rand(L, 2), G),
    "gate": lambda im: viz.gate_map(rand(L, 2), G, image=im),
    "layers": lambda im: viz.layer_maps({"a": rand(G, G)}, image=im),
    "matrix": lambda im: viz.implicit_attention_matrix(rand(L, L), log=True),
    "rows": lambda im: viz.implicit_attention_grid(rand(L, L), G, [3], image=im),
    "attribution": lambda im: viz.attribution_overlay(im, randn(H, H), "x"),
    "table": lambda im: viz.localisation_table(ROWS),
    "bars": lambda im: viz.localisation_bars(ROWS),
    "gates": lambda im: viz.gate_values({"a": 0.2}),
    "scrubber": lambda im: viz.scan_scrubber_frame(im, np.arange(L), 3, G,
                                                   state_proj=randn(L, 2),
                                                   delta=rand(L)),
    "training": lambda im: viz.plot_training_curves(
        [{"kind": "train", "step": 1, "loss": 2.0}, {"kind": "train", "step": 2, "loss": 1.0},
         {"kind": "eval", "step": 2, "exact_match": 0.5}]),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_figure_saves_as_png(image, name):
    fig = BUILDERS[name](image)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and len(buf.getvalue()) > 500
    close(fig)
