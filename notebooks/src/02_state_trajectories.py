# %% [markdown]
# # 02 · State trajectories: what the bridge's state carries along the scan
#
# **Question.** Each bridge layer reads the 65 image tokens (cls, then the 8 × 8 patch
# grid) one after another and keeps a hidden state h of D × N numbers per direction. How
# does that state move as the scan crosses the image, layer by layer and direction by
# direction, and how long does it remember a patch once the scan has moved on?
#
# The recurrence of one channel d and state slot n is
# h_t = exp(Δ_t A) · h_{t-1} + Δ_t B_t x_t, with A < 0: every step multiplies the old
# state by a decay below 1, and Δ (the step size, chosen per token from the input) sets
# how much. The state is a *heavy* hook: `run_with_cache(..., heavy=True)` materialises
# it, (B, L, D, N) in scan order.

# %%
# %matplotlib inline
import math

import torch
from einops import reduce

from ssm_bridge.app.notebook import setup, show

# One CPU thread: models this small run fastest on it, and the float sums then run in
# one order, so the numbers below come out the same on every run (nbval compares them).
setup(seed=0, threads=1)


# %%
from ssm_bridge import load_pretrained
from ssm_bridge.core.ssm import direction_perm
from ssm_bridge.data import make_scene

p = load_pretrained("shapes-tiny")
model = p.model
c = model.config
g = c.grid_size  # patch grid side
L = c.num_image_tokens  # tokens the bridge reads: cls + patches
layers = model.bridge.layers
scene = make_scene("test", 3, p.scene_config)
image = p.transform(scene.image)[None]  # (1, 3, 64, 64)
print("scene:", scene.caption)
print(f"{len(layers)} layers; directions per layer: {list(layers[0].mixer.direction_names)}; "
      f"state per direction D x N = {c.ssm_hidden_dim} x {c.ssm_state_dim}")

# %% [markdown]
# ## Scan orders
#
# `ssm_scan_order` chooses how the grid is read: `raster` (row by row), `bidirectional`
# (raster and its reverse, as in Vision Mamba) or `cross` (rows, columns and both
# reversed, as in VMamba). The cls token is read first by every direction.
# `direction_perm(name, L)` gives the token read at each step; here is the step at which
# each patch is read, for the four directions the kit knows.

# %%
from matplotlib.colors import Normalize

from viz import new_figure
from viz.ssm import draw_scan_positions
from viz.style import set_title

names = ("row", "col", "row_rev", "col_rev")
fig, axes = new_figure(ncols=4, size=(2.3, 2.3), grid=False)
for ax, name in zip(axes[0], names):
    draw_scan_positions(ax, direction_perm(name, L).numpy(), g, 1, Normalize(0, L - 1))
    set_title(ax, f"'{name}'")
show(fig)
print("this checkpoint scans", c.ssm_scan_order, "=", list(layers[0].mixer.direction_names))

# %% [markdown]
# ## The state's path, per layer and direction
#
# One image-only pass records every layer's and direction's state. `state_trajectory`
# projects the 65 states (each D·N numbers) on their first two principal components and
# colours each point by scan step, with the grid beside it in the same colours, so a
# point's colour tells which patch the scan had just read.

# %%
from ssm_bridge.core.addressing import SSMStack

bridge = SSMStack.of(model)  # the bridge's hook names and scan orders
_, cache = model.run_with_cache(image, None, names_filter=bridge.glob("hook_state"), heavy=True)
states = {}  # (layer, direction name) -> h (L, D, N) in scan order
for name, h in cache.items():
    layer, k, _ = bridge.locate(name)
    states[layer, layers[layer].mixer.direction_names[k]] = h[0]
for key, h in states.items():
    print(f"layer {key[0]} '{key[1]}': h {tuple(h.shape)}, |h| over the scan "
          f"{h.flatten(1).norm(dim=1).min():.2f} .. {h.flatten(1).norm(dim=1).max():.2f}")

# %%
from viz import state_pca, state_trajectory

pc_share, clock = {}, {}
for (layer, name), h in states.items():
    proj, explained = state_pca(h)
    pc_share[layer, name] = explained.sum()
    clock[layer, name] = abs(torch.corrcoef(torch.stack(
        [torch.as_tensor(proj[:, 0]), torch.arange(L, dtype=torch.float64)]))[0, 1].item())
    print(f"layer {layer} '{name}': PC1 + PC2 explain {explained.sum():.2f} of the variance; "
          f"|correlation of PC1 with the scan step| {clock[layer, name]:.2f}")
    show(state_trajectory(h, grid_side=g, scan_perm=direction_perm(name, L), image=scene.image,
                          title=f"layer {layer}, '{name}': state along the scan"))

# %% [markdown]
# ## Does the state react to objects?
#
# Mark a patch *on an object* when an object covers at least 10 % of it, and compare the
# state's norm right after the scan reads object patches with its norm after background
# patches. We pool 16 test scenes so one layout does not decide. The norm also grows
# along the scan, and objects do not sit evenly along it, so we compare a second way, at
# matched scan steps: at each step, the scenes with an object patch there against the
# scenes with background there (steps where each side has at least two scenes), and
# count the scenes in which object patches win on their own.

# %%
def object_patches(scene, g):
    """(1 + g*g,) bool: token is a patch at least 10 % covered by some object (cls: False)."""
    cover = torch.zeros(g, g)
    for o in scene.objects:
        share = reduce(torch.as_tensor(o.mask, dtype=torch.float32), "(r h) (c w) -> r c", "mean",
                       r=g, c=g)  # (g, g)
        cover = torch.maximum(cover, share)
    return torch.cat([torch.tensor([False]), cover.flatten() >= 0.1])  # (L,)


pool = [make_scene("test", i, p.scene_config) for i in range(16)]
batch = torch.stack([p.transform(s.image) for s in pool])  # (16, 3, 64, 64)
on_object = torch.stack([object_patches(s, g) for s in pool])  # (16, L) patch order
_, pooled = model.run_with_cache(batch, None, names_filter=bridge.glob("hook_state"), heavy=True)
print("layer direction   |h| after object   |h| after background   ratio   matched steps   "
      "scenes > 1")
norm_ratio, matched_ratio, scenes_above = {}, {}, {}
for name, h in pooled.items():
    layer, k, _ = bridge.locate(name)
    dname = layers[layer].mixer.direction_names[k]
    norms = h.flatten(2).norm(dim=2)  # (16, L) scan order
    obj = bridge[layer].to_scan_order(on_object, k)  # (16, L) scan order
    bg = ~obj
    bg[:, 0] = False  # leave out the cls step
    a, b = norms[obj].mean().item(), norms[bg].mean().item()
    norm_ratio[layer, dname] = a / b
    steps = [t for t in range(1, L) if obj[:, t].sum() >= 2 and bg[:, t].sum() >= 2]
    matched_ratio[layer, dname] = torch.tensor(
        [norms[obj[:, t], t].mean() / norms[bg[:, t], t].mean() for t in steps]).mean().item()
    per_scene = torch.stack([norms[i][obj[i]].mean() / norms[i][bg[i]].mean()
                             for i in range(len(pool))])
    scenes_above[layer, dname] = int((per_scene > 1).sum())
    print(f"{layer:5d} {dname:<9} {a:16.3f}   {b:19.3f}   {a / b:5.2f}   "
          f"{matched_ratio[layer, dname]:13.2f}   {scenes_above[layer, dname]:4d} of {len(pool)}")

# %% [markdown]
# The same 16 scenes also test the clock seen above on one scene: how closely does each
# scene's leading principal component follow the scan step?

# %%
steps_axis = torch.arange(L, dtype=torch.float64)
clock_pool = {}  # (layer, direction) -> (16,) |correlation of PC1 with the scan step|
for name, h in pooled.items():
    layer, k, _ = bridge.locate(name)
    dname = layers[layer].mixer.direction_names[k]
    clock_pool[layer, dname] = torch.tensor([abs(torch.corrcoef(torch.stack(
        [torch.as_tensor(state_pca(hi)[0][:, 0]), steps_axis]))[0, 1].item()) for hi in h])
    r = clock_pool[layer, dname]
    print(f"layer {layer} '{dname}': |correlation of PC1 with the scan step| over {len(r)} scenes: "
          f"median {r.median():.2f}, range {r.min():.2f} .. {r.max():.2f}")

# %% [markdown]
# ## How long does the state remember a patch?
#
# Two views. **From the parameters:** a state slot (d, n) loses half of what it holds in
# ln 2 / (Δ_d |A_dn|) steps; with Δ averaged over this image's tokens that gives a
# half-life per slot. **By intervention:** erase one token from the scan input
# (`hook_conv`, zero at one step), rerun, and measure how much the state at every later
# step changes, relative to its norm. Erasing each of the 64 patches in turn runs as one
# batch of 64 images; averaging over them gives the state's memory as a function of the
# lag between reading a patch and now.

# %%
_, deltas = model.run_with_cache(image, None, names_filter=bridge.glob("hook_delta"))
half_life = {}
print("layer direction   half-life in steps: median   share > 8 (one grid row)   share > 64")
for layer, block in enumerate(layers):
    for k, (dname, d) in enumerate(zip(block.mixer.direction_names, block.mixer.dirs)):
        delta = deltas[bridge.hook("hook_delta", layer, k)][0]  # (L, D)
        rate = delta.mean(0)[:, None] * torch.exp(d.A_log.detach())  # (D, N): Δ|A| per step
        half = math.log(2) / rate  # (D, N) half-life in steps
        half_life[layer, dname] = half
        print(f"{layer:5d} {dname:<9}  {half.median():27.1f}   {(half > 8).float().mean():24.2f}"
              f"   {(half > 64).float().mean():10.2f}")

# %%
lags = torch.arange(L - 1)  # 0 .. 63


def erase_each_step(layer, k):
    """Relative change of layer `layer`, direction k's state (64, L) when scan step s + 1
    (patch s in scan order) is erased from its input, for s = 0 .. 63 (one batch)."""
    conv, state = bridge.hook("hook_conv", layer, k), bridge.hook("hook_state", layer, k)
    clean = states[layer, layers[layer].mixer.direction_names[k]]  # (L, D, N)
    rows = torch.arange(L - 1)

    def erase(x, name):
        x = x.clone()
        x[rows, rows + 1] = 0  # batch row s erases scan step s + 1
        return x

    with model.hooks([(conv, erase)]):
        _, out = model.run_with_cache(image.expand(L - 1, -1, -1, -1), None, names_filter=state)
    diff = (out[state] - clean).flatten(2).norm(dim=2)  # (64, L)
    return diff / clean.flatten(1).norm(dim=1)  # (64, L) relative change


memory = {}  # (layer, direction) -> mean relative change (64,) by lag
final_map = {}  # (layer, direction) -> (g, g): how much the last state changes per erased patch
final_step = {}  # the same (64,) in scan order
for layer, block in enumerate(layers):
    for k, dname in enumerate(block.mixer.direction_names):
        rel = erase_each_step(layer, k)  # (64 sources, L)
        src = torch.arange(1, L)  # scan step of each source
        by_lag = torch.stack([torch.stack([rel[s - 1, s + lag] for s in src if s + lag < L]).mean()
                              for lag in lags])  # (64,)
        memory[layer, dname] = by_lag
        final_step[layer, dname] = rel[:, -1]  # (64,) by the erased patch's scan step
        last = bridge[layer].to_token_order(torch.cat([torch.zeros(1), rel[:, -1]]), k, dim=0)
        # ^ (L,) patch order: change of the final state per erased patch (cls: 0)
        final_map[layer, dname] = last[1:].reshape(g, g)

print("relative change of the state, by steps since the erased patch was read")
print("layer direction " + " ".join(f"{f'lag {t}':>7}" for t in (0, 1, 2, 4, 8, 16, 32, 63)))
for (layer, dname), curve in memory.items():
    print(f"{layer:5d} {dname:<9} "
          + " ".join(f"{curve[t]:7.3f}" for t in (0, 1, 2, 4, 8, 16, 32, 63)))

# %%
fig, axes = new_figure()
ax = axes[0, 0]
for (layer, dname), curve in memory.items():
    ax.plot(lags.numpy(), curve.numpy(), label=f"layer {layer} '{dname}'")
for row in range(1, g):
    ax.axvline(row * g, color="#cccccc", linewidth=0.6, zorder=0)
ax.set_yscale("log")
ax.set_xlabel("steps since the erased patch was read (grey: whole grid rows)")
ax.set_ylabel("relative change of h")
ax.set_title("how long the state remembers a patch")
ax.legend(fontsize=7)
show(fig)

# %% [markdown]
# The same experiment read the other way: how much does the **final** state, the one that
# has read the whole image, change when each patch is erased? For a scan that ends at the
# bottom-right, this is the image as the last state remembers it (log scale: the last
# few patches dominate).

# %%
from viz import map_panels

fig, _ = map_panels([(f"layer {la} '{dn}': final state", m.log10())
                     for (la, dn), m in final_map.items()],
                    scene.image, shared_scale=False, signed=False, label="log10 relative change")
show(fig)
halves = {}
for key, last in final_step.items():
    halves[key] = (last[: (L - 1) // 2].mean().item(), last[(L - 1) // 2 :].mean().item())
    print(f"layer {key[0]} '{key[1]}': erasing a patch moves the final state by "
          f"{halves[key][0]:.3f} if read in the first half of the scan, {halves[key][1]:.3f} "
          "in the second (means)")

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if a new checkpoint
# changes them, so the text never silently goes stale.

# %%
for key, curve in memory.items():
    assert curve[g] < 0.5 * curve[0], f"{key}: revise 'a row later, less than half is left'"
    assert curve[-1] < 0.1, f"{key}: revise 'by the end of the scan, little is left'"
    assert (half_life[key] > 64).float().mean() < 0.25, \
        f"{key}: revise 'few slots outlive the image'"
for key, (first_half, second_half) in halves.items():
    assert second_half > 2 * first_half, f"{key}: revise 'the half read last'"
assert all(1.1 < r < 1.35 for r in norm_ratio.values()), "revise 'object patches raise the norm'"
assert all(1.05 < r < 1.35 for r in matched_ratio.values()), "revise 'at matched scan steps too'"
assert all(12 <= n < len(pool) for n in scenes_above.values()), "revise 'most scenes, not all'"
assert min(pc_share.values()) > 0.5, "revise 'two components carry about two thirds'"
assert max(pc_share.values()) - min(pc_share.values()) < 0.1, "revise 'alike in both layers'"
first, second = (0, layers[0].mixer.direction_names[0]), (1, layers[1].mixer.direction_names[0])
assert clock[second] > 0.9 and clock[first] < 0.8, \
    "revise 'on this scene, the second layer is the clock'"
for key, r in clock_pool.items():
    assert 0.5 < r.median() < 0.85, f"{key}: revise 'median about 0.7'"
    assert r.min() < 0.4 and r.max() > 0.9, f"{key}: revise 'from scene to scene'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * The state does not wander at random: on the scene shown, its first two principal
#   components carry about two thirds of its variance in both layers (0.67 and 0.69).
#   Part of the state is a clock, a code of how far the scan has come, visible as bands
#   of colour along the path, but how cleanly depends on the scene and the layer. On this
#   scene the second layer's leading component follows the scan step closely
#   (|correlation| 0.95), the first layer's less so (0.67). Over 16 scenes the median is
#   about 0.7 in both layers (0.70 and 0.68), and single scenes range from near 0.2 to
#   near 1. The previous checkpoint had the clock tightest in the first layer (0.96 on
#   this scene); this one does not.
# * Objects raise the state's norm. Pooled over 16 scenes, the norm after an object
#   patch is 15 % (layer 0) and 22 % (layer 1) above its norm after background. That is
#   not the norm's growth along the scan: at matched scan steps the excess is 14 % and
#   19 %. It is not reliable scene by scene, though: object patches win in 14 and 13 of
#   the 16 scenes. This flips the previous checkpoint's finding (ratios 1.01 and 1.04,
#   "direction, not size"). A norm map of the state is a weak object detector, not none.
# * Memory is short. The half-lives computed from Δ and A put the median state slot at
#   about a grid row of steps (10.5 and 10.4), with only a small share of slots (11 % and
#   14 %) outliving a whole image. The intervention agrees and is stricter: a row later
#   (8 steps, the patch directly below in a raster scan) the effect of an erased patch
#   has fallen to well under half of its size when read (18 % and 25 % of it), and by
#   the end of the scan little is left. The final state is
#   a summary of the last patches it read, not of the image: in the final-state maps the
#   end of each direction's path dominates, and erasing a patch from the second half of
#   the scan moves it about three times more than erasing one from the first half (more
#   than twice, in each layer).
# * That is why the bridge hands the decoder *all* of its outputs, one per token, rather
#   than the last state, and why scan orders with several directions exist: each
#   direction's outputs remember a different neighbourhood. What each output token
#   gathers from the others is the subject of notebook 05 (the hidden attention); which
#   tokens the scan chooses to write into its state, through Δ, is notebook 03.
