# %% [markdown]
# # 03 · Gates and selectivity: what the bridge writes, what it skips
#
# **Question.** A selective SSM chooses, token by token, how much of its input to write
# into its state: the step size Δ_t. A large Δ makes Ā = exp(Δ A) small, so the state
# forgets its past and takes in the current patch; a small Δ carries the state past the
# patch almost untouched. After the scan, each output is multiplied by a gate SiLU(z_t)
# computed from the same token. Which patches does the shipped bridge write, which does it
# skip, what does the gate let through, and does the caption depend on either choice?
#
# Hooks used: `bridge.layers.{l}.mixer.dirs.{k}.hook_delta` (B, L, D), in direction k's
# scan order, and `bridge.layers.{l}.mixer.hook_gate` (B, L, D), in patch order.

# %%
# %matplotlib inline
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
g = c.grid_size
L = c.num_image_tokens  # cls + patches
layers = model.bridge.layers
dirs = list(layers[0].mixer.direction_names)
scene = make_scene("test", 4, p.scene_config)
image = p.transform(scene.image)[None]  # (1, 3, 64, 64)
print("scene:", scene.caption)
print(f"{len(layers)} layers, directions {dirs}, Δ initialised in "
      f"[{c.ssm_dt_min}, {c.ssm_dt_max}]")

# %% [markdown]
# ## Δ and the gate on one scene
#
# `delta_map` puts Δ (mean over channels) back on the patch grid with the direction's
# scan permutation; `gate_map` does the same for the gate (already in patch order).

# %%
from ssm_bridge.core.addressing import SSMStack
from viz import delta_map, gate_map, grid_values, layer_maps

bridge = SSMStack.of(model)  # builds the hook names above: bridge.hook("hook_gate", layer)
filters = [bridge.glob("hook_delta"), bridge.glob("hook_gate")]
_, cache = model.run_with_cache(image, None, names_filter=filters)
perm0 = direction_perm(dirs[0], L)
delta0 = cache[bridge.hook("hook_delta", 0, 0)][0]  # (L, D) scan order
gate0 = cache[bridge.hook("hook_gate", 0)][0]  # (L, D) patch order
show(delta_map(delta0, grid_side=g, scan_perm=perm0, image=scene.image,
               title=f"layer 0 '{dirs[0]}': Δ"))
show(gate_map(gate0, grid_side=g, image=scene.image, title="layer 0: gate SiLU(z)"))

# %%
maps = {}
for layer, block in enumerate(layers):
    for k, name in enumerate(block.mixer.direction_names):
        d = cache[bridge.hook("hook_delta", layer, k)][0]
        maps[f"layer {layer} '{name}' Δ"] = grid_values(d, g, 1, direction_perm(name, L).numpy())
    maps[f"layer {layer} gate"] = grid_values(cache[bridge.hook("hook_gate", layer)][0], g)
show(layer_maps(maps, image=scene.image, ncols=len(dirs) + 1))

# %% [markdown]
# ## One step of the scan
#
# The scrubber frame shows the scan at the step where it first reads a patch of the
# first object: the patches still unread are dimmed, and the bars give Δ and the gate at
# this step as a share of their largest value over the scan.

# %%
from viz import scan_scrubber_frame

on_first = reduce(torch.as_tensor(scene.objects[0].mask, dtype=torch.float32),
                  "(r h) (c w) -> (r c)", "mean", r=g, c=g) >= 0.5  # (g*g,) patch order
step = int(torch.nonzero(on_first[perm0[1:] - 1])[0]) + 1  # first scan step on it
show(scan_scrubber_frame(scene.image, perm0, step, grid_side=g, delta=delta0,
                         gate=gate0[perm0]))  # the gate is in patch order: put it in scan order
print(f"step {step}: Δ {delta0[step].mean():.3f} (scan mean {delta0.mean():.3f}), "
      f"gate {gate0[perm0[step]].mean():.3f} (scan mean {gate0.mean():.3f})")

# %% [markdown]
# ## Objects against background, over 32 scenes
#
# A patch is *on an object* when objects cover at least 10 % of it. For each layer we
# compare Δ and the gate (means over channels, and directions for Δ) on object and on
# background patches, and give the AUC: the chance that a random object patch has a
# larger value than a random background patch (0.5: no preference; 1: objects always
# larger; 0: always smaller).

# %%
def object_patches(scene, g):
    """(1 + g*g,) bool: token is a patch at least 10 % covered by objects (cls: False)."""
    cover = torch.zeros(g, g)
    for o in scene.objects:
        share = reduce(torch.as_tensor(o.mask, dtype=torch.float32), "(r h) (c w) -> r c",
                       "mean", r=g, c=g)  # (g, g)
        cover = torch.maximum(cover, share)
    return torch.cat([torch.tensor([False]), cover.flatten() >= 0.1])  # (L,)


def auc(pos, neg):
    """P(a random pos > a random neg), ties counted half."""
    pos, neg = pos[:, None], neg[None, :]
    return ((pos > neg).float().mean() + 0.5 * (pos == neg).float().mean()).item()


pool = [make_scene("test", i, p.scene_config) for i in range(32)]
batch = torch.stack([p.transform(s.image) for s in pool])  # (32, 3, 64, 64)
obj = torch.stack([object_patches(s, g) for s in pool])  # (32, L)
bg = ~obj
bg[:, 0] = False  # the cls token is neither
_, pooled = model.run_with_cache(batch, None, names_filter=filters)

stats = {}
channel_share = {}
print("layer  value   on objects  on background   AUC")
for layer in range(len(layers)):
    per_dir = [bridge[layer].to_token_order(pooled[bridge.hook("hook_delta", layer, k)], k)
               for k in range(len(bridge[layer]))]  # each (32, L, D) patch order
    delta = torch.stack(per_dir).mean(0)  # (32, L, D)
    gate = pooled[bridge.hook("hook_gate", layer)]  # (32, L, D)
    for label, v in (("Δ", delta), ("gate", gate)):
        tokens = v.mean(-1)  # (32, L)
        stats[layer, label] = auc(tokens[obj], tokens[bg])
        print(f"{layer:5d}  {label:<5} {tokens[obj].mean():11.3f}  {tokens[bg].mean():13.3f}"
              f"  {stats[layer, label]:5.2f}")
    ratio = delta[obj].mean(0) / delta[bg].mean(0)  # (D,) per channel
    channel_share[layer] = ((ratio > 1.1).float().mean().item(),
                            (ratio < 1 / 1.1).float().mean().item())
    print(f"       per channel: {channel_share[layer][0]:.0%} write objects >10 % harder, "
          f"{channel_share[layer][1]:.0%} write background >10 % harder "
          f"(object/background Δ ratios {ratio.min():.2f} .. {ratio.max():.2f})")

# %% [markdown]
# ## Does the caption need the selection?
#
# Averages say what the bridge does, not whether it matters. Flatten one quantity per
# image, i.e. replace each token's value with its mean over the image's tokens (channel
# by channel), so the scan keeps its average behaviour but can no longer choose token by
# token, and caption 64 test scenes greedily. Flattening Δ, B and C together turns the
# selective scan into a fixed (time-invariant) convolution, as in S4 and in the original
# package's "SSM"; flattening B and C alone keeps Δ's choices and removes only what each
# token writes and reads. For calibration, the last rows remove the scan's memory
# altogether (the scan output becomes its skip term D·x), in every layer or in one, or
# the whole mixer output of a layer.

# %%
from ssm_bridge.training.evaluate import caption_metrics

test = [make_scene("test", i, p.scene_config) for i in range(64)]
test_images = torch.stack([p.transform(s.image) for s in test])


def flatten(t, name):
    return t.mean(1, keepdim=True).expand_as(t).clone()  # (B, L, D): each token gets the mean


def caption_with(fwd_hooks):
    with model.hooks(fwd_hooks):
        ids = model.generate(test_images, max_length=c.max_seq_length, temperature=0)
    return caption_metrics([p.tokenizer.decode(r.tolist()) for r in ids], test)


scan_inputs = {}


def keep_input(t, name):
    scan_inputs[name.replace("hook_conv", "hook_ssm_out")] = t


def skip_only(t, name):
    """The scan output without its recurrence: y = D * x."""
    path = name.rsplit(".", 1)[0]
    return scan_inputs[name] * model.get_submodule(path).D


def zero(t, name):
    return torch.zeros_like(t)


glob = bridge.glob  # glob(hook): every layer and direction; glob(hook, layer): one layer
variants = {"clean": []}
for layer in range(len(layers)):
    variants[f"flat Δ, layer {layer}"] = [(glob("hook_delta", layer), flatten)]
variants["flat Δ, all layers"] = [(glob("hook_delta"), flatten)]
variants["flat B, C, all layers"] = [(glob(h), flatten) for h in ("hook_B", "hook_C")]
variants["flat Δ, B, C, all layers"] = [(glob(h), flatten)
                                        for h in ("hook_delta", "hook_B", "hook_C")]
for layer in range(len(layers)):
    variants[f"flat gate, layer {layer}"] = [(glob("hook_gate", layer), flatten)]
variants["no scan memory, all layers"] = [(glob("hook_conv"), keep_input),
                                          (glob("hook_ssm_out"), skip_only)]
for layer in range(len(layers)):
    variants[f"no scan memory, layer {layer}"] = [(glob("hook_conv", layer), keep_input),
                                                 (glob("hook_ssm_out", layer), skip_only)]
for layer in range(len(layers)):
    variants[f"no mixer output, layer {layer}"] = [(bridge.hook("hook_y", layer), zero)]

results = {name: caption_with(h) for name, h in variants.items()}
print(f"{'variant':<28} exact  colour  shape  size  relation")
for name, m in results.items():
    print(f"{name:<28} {m['exact_match']:5.2f}  {m['colour']:6.2f}  {m['shape']:5.2f}  "
          f"{m['size']:4.2f}  {m['relation']:8.2f}")

# %%
from viz import new_figure

fig, axes = new_figure(size=(5.0, 3.2))
ax = axes[0, 0]
names = list(results)
ax.barh(names, [results[n]["exact_match"] for n in names])
ax.axvline(results["clean"]["exact_match"], color="black", linestyle="--", linewidth=1)
ax.invert_yaxis()
ax.set_xlim(0, 1)
ax.set_xlabel("exact-match on 64 test scenes")
ax.set_title("what the caption needs from the bridge")
show(fig)

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if a new checkpoint
# changes them, so the text never silently goes stale.

# %%
clean = results["clean"]["exact_match"]
exact = {name: m["exact_match"] for name, m in results.items()}
lti = exact["flat Δ, B, C, all layers"]
gates = [exact[f"flat gate, layer {i}"] for i in range(len(layers))]
last = len(layers) - 1
assert stats[0, "gate"] < 0.25 and 0.3 < stats[last, "gate"] < 0.5, "revise the gate AUCs"
assert abs(stats[0, "gate"] - 0.5) > abs(stats[0, "Δ"] - 0.5), \
    "revise 'layer 0: the gate separates more'"
assert abs(stats[last, "Δ"] - 0.5) > abs(stats[last, "gate"] - 0.5), \
    "revise 'layer 1: Δ separates more'"
assert all(a > 1.5 * b and b > 0.15 for a, b in channel_share.values()), \
    "revise 'about twice as many channels favour objects; a fifth to a quarter the opposite'"
assert 0.55 < stats[0, "Δ"] < 0.7 and stats[last, "Δ"] > 0.75, "revise the Δ AUCs"
assert clean >= 0.95, "revise 'all 64 captions right'"
assert all(exact[n] >= clean - 0.05 for n in exact if n.startswith("flat Δ, ") and "B" not in n), \
    "revise 'flattening Δ costs nothing'"
assert clean - 0.35 < exact["flat B, C, all layers"] < clean - 0.1, \
    "revise 'flat B, C costs about 23 points'"
assert clean - 0.4 < lti < clean - 0.15, "revise 'a time-invariant scan costs about a quarter'"
assert exact["no scan memory, all layers"] < clean - 0.2, "revise 'no memory costs a third'"
assert exact["no scan memory, layer 0"] >= clean - 0.05, "revise 'layer 0's memory is not needed'"
assert exact[f"no scan memory, layer {last}"] < clean - 0.15, "revise 'layer 1's memory is'"
no_mem = results["no scan memory, all layers"]
assert no_mem["relation"] < min(no_mem["colour"], no_mem["shape"]) - 0.15, \
    "revise 'relations suffer'"
assert max(gates) < clean - 0.2 and gates[last] < gates[0], \
    "revise 'flattening the gate costs 30-44 points'"
mixer = [exact[f"no mixer output, layer {i}"] for i in range(len(layers))]
assert max(mixer) < clean - 0.5, "revise 'removing the mixer output wrecks the captions'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * **Δ leans towards objects, channel by channel and on average.** In both layers about
#   twice as many channels write object patches >10 % harder than background as the
#   other way round (48 % against 21 % in layer 0, 55 % against 27 % in layer 1), though
#   a fifth to a quarter do the opposite. Averaged over channels, Δ's AUC is 0.62 in the
#   first layer and 0.82 in the second. This is a change: the previous checkpoint's
#   deeper layer had no preference (0.46) and its channels split about evenly.
# * **The gate is lower on object patches than on background in both layers, sharply
#   in the first (AUC 0.11) and only mildly in the second (0.41).** So the clearest
#   object/background switch is the gate in layer 0 and Δ in layer 1. In the previous
#   checkpoint it was the gate in every layer.
# * **The caption does not need Δ's choices, but it needs the recurrence.** Flattening Δ,
#   in one layer or in all, leaves all 64 captions right. Flattening B and C, what each
#   token writes and reads, costs 23 points of exact match; flattening Δ, B and C
#   together (a fixed convolution) costs 27. Removing the scan's memory costs 33 points,
#   and all of it comes from the second layer: without layer 0's memory every caption is
#   still right, without layer 1's the exact match falls to 0.75. The loss lands on
#   relations (0.71 with no memory anywhere) while colour and shape stay at 0.97 or
#   more. Flattening one layer's gate costs 30 points (layer 0) and 44 (layer 1), and
#   removing a layer's mixer output wrecks the captions (0.27 and 0.25).
# * This reverses the previous checkpoint's conclusion. There a time-invariant scan or a
#   scan without memory cost 5 to 6 points, and we wrote that the recurrence adds little
#   the captions depend on. Here the second layer's recurrence, with input-dependent B
#   and C, carries most of what the decoder needs for relations. That fits a scan that
#   gathers context across patches, though these ablations do not show what it gathers.
#   Δ's token-by-token step size is still not what matters: a Δ map is a faithful picture
#   of what the scan writes, not of what the caption needs. Notebook 07 tests the state
#   directly with resets and patching.
