# %% [markdown]
# # 06 · Attributions: what the gradients say, against the attention maps
#
# **Question.** Attention maps say where the decoder *looked*; input attributions say
# which pixels the word's score *depends on*. For a caption word, do Integrated Gradients
# (IG), Saliency, SmoothGrad (NoiseTunnel) and GradCAM agree with each other and with the
# attention maps of notebook 04, and which of them points at the object the word names?
#
# `ssm_bridge.attribution.attribute(model, images, tokens, position, target_id, method)`
# explains the logit of `target_id` at `position` of the teacher-forced caption prefix,
# with captum's implementations. GradCAM works on the ViT's final patch grid
# (`vision.hook_grid`), the others on pixels (summed per 8 × 8 patch for scoring).

# %%
# %matplotlib inline
from collections import defaultdict

import torch
from IPython.display import display

torch.manual_seed(0)
torch.set_num_threads(1)  # small models run fastest on one thread; fixed for reproducibility


def show(fig):
    """Draw a viz Figure into the notebook's outputs, then free it."""
    display(fig)
    fig.clf()


# %%
from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene
from ssm_bridge.maps import analyse

p = load_pretrained("shapes-tiny")
model, tok = p.model, p.tokenizer
g = model.config.img_size // model.config.patch_size
scene = make_scene("test", 0, p.scene_config)
a = analyse(model, p.transform(scene.image), tokenizer=tok)
print("caption:", a.caption)
word = a.words.index(scene.objects[0].shape)  # the first object's shape noun
pos = a.word_index[word]  # its position in the generated ids
print(f"explaining word {word} {a.words[word]!r}: the logit of id {int(a.ids[pos])} after "
      f"{tok.decode(a.ids[:pos].tolist())!r}")

# %% [markdown]
# ## One word, five methods
#
# IG integrates the gradient along a straight path from a baseline image (here all zeros
# in the model's normalised input space, i.e. mid-grey) to the image. Its attributions
# must add up to f(image) - f(baseline) (completeness); the gap measures how well the
# path integral has converged, so first choose the number of steps with it.

# %%
from ssm_bridge.attribution import attribute

image = a.image[None]  # (1, 3, 64, 64)
tokens = a.ids[:pos][None]  # (1, pos): BOS + the caption before the word
target = int(a.ids[pos])
print("IG steps   completeness gap |sum(attr) - (f(x) - f(baseline))| / |f(x)|")
gaps = {}
for steps in (16, 32, 64, 128):
    r = attribute(model, image, tokens, pos - 1, target, "ig", steps=steps)
    gaps[steps] = abs(r.delta.item()) / abs(r.score.item())
    print(f"{steps:9d}   {gaps[steps]:.3f}")

# %% [markdown]
# 128 steps it is. Saliency is the absolute gradient; SmoothGrad (NoiseTunnel) averages
# it over 8 noisy copies (noise std 0.1, seeded); GradCAM weighs the ViT's final feature
# grid by its pooled gradient; "explain" is Gradient × Input under `explain_mode`, the
# MambaLRP rules for the bridge.

# %%
settings = {"ig": dict(steps=128), "saliency": {}, "noise_tunnel": dict(nt_base="saliency",
            nt_samples=8, stdevs=0.1, seed=0), "gradcam": {}, "explain": {}}
attrs = {m: attribute(model, image, tokens, pos - 1, target, m, **kw) for m, kw in settings.items()}
ig = attrs["ig"]
print(f"explained logit {ig.score.item():.3f}; with 128 steps the IG gap is "
      f"{abs(ig.delta.item()) / abs(ig.score.item()):.3f} of it")

# %%
from viz import attribution_overlay

show(attribution_overlay(scene.image, ig.raw[0], "integrated gradients (signed)"))

# %%
from viz import map_panels

panels = [(f"{m}", attrs[m].patches[0]) for m in settings]
panels += [("prefix attention", a.prefix_attention[word]),
           ("cross-attention", a.cross_attention[word])]
fig, _ = map_panels(panels, scene.image, ncols=4, shared_scale=False)
show(fig)

# %% [markdown]
# ## Explain mode: is relevance conserved through the bridge?
#
# Plain Gradient × Input need not add up to the explained score. `compare_explain` runs
# it with and without `explain_mode` and reports, among others, the ratio of relevance
# entering the bridge to relevance leaving it (1 = conserved) and the correlation of the
# two pixel maps. One word can mislead, so we also take every shape noun of the first
# 8 test scenes.

# %%
from ssm_bridge.attribution import compare_explain

cmp = compare_explain(model, image, tokens, pos - 1, target)
print(f"'{a.words[word]}': bridge in / out relevance plain {cmp.bridge_plain.item():.2f}, "
      f"explain mode {cmp.bridge_explain.item():.2f}; map correlation {cmp.correlation.item():.2f}")

off_plain, off_explain, corr = [], [], []
for i in range(8):
    s = make_scene("test", i, p.scene_config)
    an = analyse(model, p.transform(s.image), tokenizer=tok)
    for w, name in enumerate(an.words):
        if name in p.scene_config.shapes:
            q = an.word_index[w]
            c = compare_explain(model, an.image[None], an.ids[:q][None], q - 1, int(an.ids[q]))
            off_plain.append(abs(c.bridge_plain.item() - 1))
            off_explain.append(abs(c.bridge_explain.item() - 1))
            corr.append(c.correlation.item())
off_plain, off_explain, corr = map(torch.tensor, (off_plain, off_explain, corr))
print(f"{len(corr)} nouns: median |ratio - 1| plain {off_plain.median():.2f}, explain mode "
      f"{off_explain.median():.2f}; explain mode closer to 1 for "
      f"{(off_explain < off_plain).float().mean():.2f} of them; median map correlation "
      f"{corr.median():.2f}")

# %% [markdown]
# ## The pointing game over many scenes
#
# For the first 24 test scenes whose caption names the right objects, every shape noun
# is explained by each method and scored against its object's pixel mask (pointing game:
# the map's top patch touches the object; energy: the share of the map's positive mass on
# it), next to the attention maps and a seeded random map. `word_maps` computes IG,
# Saliency and GradCAM for all nouns of a caption as one batch; SmoothGrad goes through
# `attribute` the same way. To keep the minute, IG runs with `word_maps`' default of 16
# steps here: a coarse integral (see the gaps above), enough to rank patches.

# %%
from ssm_bridge import localization as loc
from ssm_bridge.maps import word_maps


def smoothgrad(a, words):
    """SmoothGrad patch maps (len(words), g, g) of the given word indices of an analysis."""
    positions = [a.word_index[w] for w in words]
    tokens = a.ids[: max(positions)].expand(len(words), -1)  # causal: one prefix serves all
    r = attribute(model, a.image.expand(len(words), -1, -1, -1), tokens,
                  torch.tensor([q - 1 for q in positions]), a.ids[positions], "noise_tunnel",
                  **settings["noise_tunnel"])
    return r.patches


kinds = ["prefix_attention", "cross_attention", "ig", "saliency", "gradcam"]
hits, energy, maps = defaultdict(list), defaultdict(list), defaultdict(list)
masks, skipped = [], 0
for i in range(24):
    s = make_scene("test", i, p.scene_config)
    an = analyse(model, p.transform(s.image), tokenizer=tok)
    pairs = loc.object_words(s, an.words, "shape")
    if pairs is None:
        skipped += 1
        continue
    nouns = [w for w, _ in pairs]
    per_kind = {k: word_maps(an, k, model, nouns) for k in kinds}
    per_kind["noise_tunnel"] = smoothgrad(an, nouns)
    for n, (_, j) in enumerate(pairs):
        masks.append(s.objects[j].mask)
        for k, m in per_kind.items():
            hits[k].append(loc.pointing_game(m[n], s.objects[j].mask))
            energy[k].append(loc.energy_in_mask(m[n], s.objects[j].mask))
            maps[k].append(m[n].flatten())

rand = loc.random_scores(masks, (g, g), seed=0)
rows = [{"map": k, "pointing_game": sum(hits[k]) / len(hits[k]),
         "energy_in_mask": sum(energy[k]) / len(energy[k]),
         "random_pointing_game": rand["pointing_game"], "random_energy": rand["energy_in_mask"],
         "n": len(hits[k])} for k in hits]
rows.sort(key=lambda r: -r["pointing_game"])
print(f"{24 - skipped} captions scored ({skipped} named other objects), {len(masks)} nouns")
print(f"{'map':<18} pointing  energy   (random: {rand['pointing_game']:.3f}, "
      f"{rand['energy_in_mask']:.3f})")
for r in rows:
    print(f"{r['map']:<18} {r['pointing_game']:8.3f}  {r['energy_in_mask']:6.3f}")

# %%
from viz import localisation_bars

show(localisation_bars(rows, metric="pointing_game"))
show(localisation_bars(rows, metric="energy_in_mask"))

# %% [markdown]
# ## Do the methods agree with each other?
#
# For two methods and one noun, the share of the 5 highest-scoring patches that both
# maps have in common (1: the same top 5), averaged over the nouns. Two random maps
# share 5/64 of them on average (0.08).

# %%
def top5_overlap(x, y):
    return len(set(x.topk(5).indices.tolist()) & set(y.topk(5).indices.tolist())) / 5


names = [r["map"] for r in rows]
agreement = {}
print(" " * 18 + "".join(f"{n[:9]:>10}" for n in names))
for u in names:
    line = f"{u:<18}"
    for v in names:
        agreement[u, v] = sum(top5_overlap(x, y) for x, y in zip(maps[u], maps[v])) / len(maps[u])
        line += f"{agreement[u, v]:10.2f}"
    print(line)

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if a new checkpoint
# changes them, so the text never silently goes stale.

# %%
score = {r["map"]: r for r in rows}
grads = ("ig", "saliency", "noise_tunnel")
assert min(gaps[16], gaps[32]) > 0.1 and max(gaps[64], gaps[128]) < 0.05, "revise the IG steps"
assert rows[0]["map"] == "ig", "revise 'IG ranks first'"
assert score["ig"]["energy_in_mask"] > 1.5 * max(r["energy_in_mask"] for r in rows[1:])
assert min(score[k]["pointing_game"] for k in grads) > 3 * rand["pointing_game"]
assert score["gradcam"]["pointing_game"] < min(score[k]["pointing_game"] for k in grads) - 0.3
prefix, cross = score["prefix_attention"], score["cross_attention"]
assert prefix["pointing_game"] > cross["pointing_game"] + 0.2, "revise 'far more often'"
assert prefix["pointing_game"] < min(score[k]["pointing_game"] for k in grads)
assert all(agreement["prefix_attention", k] > agreement["cross_attention", k] for k in grads)
assert corr.median() > 0.8, "revise 'highly correlated'"
assert off_explain.median() < 0.5 * off_plain.median(), "revise 'much closer to 1'"
assert (off_explain < off_plain).float().mean() > 0.5, "revise 'for most nouns'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * **IG needs more steps than its defaults suggest.** The completeness gap does not shrink
#   smoothly with the number of steps on this model: with 16 or 32 steps it is a large
#   fraction of the logit, and only from 64 steps on is it down to a few percent
#   (printed). Check the gap before trusting an IG map's magnitudes.
# * **The pixel gradients point at the object.** IG, Saliency and SmoothGrad put the top
#   patch of a shape noun's map on the named object most of the time, several times as
#   often as a random map; even the coarse 16-step IG of the table ranks first and
#   concentrates by far the most mass on the object (the energy column).
# * **GradCAM lags behind.** Computed on the ViT's last feature grid, before the SSM bridge
#   and the decoder, it scores far below the pixel methods: the gradient at that layer
#   is pooled per channel, and what the bridge and decoder do with the grid afterwards is
#   lost.
# * **Attributions side with the prefix attention, not with the cross-attention.** The
#   decoder's attention to the image prefix points at the named object far more often
#   than the cross-attention does, though less reliably than the pixel gradients, and
#   its maps share more of their top patches with every gradient map than the
#   cross-attention maps do. This is the verdict notebook 04 reached by ablation, now
#   from gradients: the cross-attention path is nearly unused, and its maps do not
#   explain the caption.
# * **Explain mode changes the bookkeeping, not the picture.** Its (MambaLRP) maps stay
#   highly correlated with plain Gradient × Input, while the ratio of relevance entering
#   and leaving the bridge, erratic for plain gradients, lands much closer to 1 for most
#   nouns, as its rules intend; single words can still be far off. For localisation IG
#   remains the method to use here; explain mode is for arguments that need relevance to
#   be (approximately) conserved.
