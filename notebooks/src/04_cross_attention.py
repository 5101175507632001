# %% [markdown]
# # 04 · Cross-attention: where each word looks, and whether it matters
#
# **Question.** The decoder has two ways to read the image. Its gated cross-attention
# layers let each text position attend to the bridge's 65 outputs, scaled by a learned
# tanh gate; and its causal self-attention runs over `[bridge outputs ; text]`, so every
# text position can also attend to the image *prefix*. For each word of a caption, where
# do these two attentions look, how open are the gates, do the maps point at the object
# the word names, and which of the two paths does the caption actually depend on?
#
# `ssm_bridge.interp.maps.analyse` captions an image and collects, per generated word, the
# cross-attention map (mean over heads and cross layers), the prefix-attention map (mean
# over heads and decoder blocks) and the cross-attention pushed through the bridge's
# hidden attention (notebook 05), all on the 8 × 8 patch grid.

# %%
# %matplotlib inline
import torch

from ssm_bridge.app.notebook import setup, show

# One CPU thread: models this small run fastest on it, and the float sums then run in
# one order, so the numbers below come out the same on every run (nbval compares them).
setup(seed=0, threads=1)


# %%
from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene
from ssm_bridge.interp.maps import analyse

p = load_pretrained("shapes-tiny")
model = p.model
scene = make_scene("test", 1, p.scene_config)
a = analyse(model, p.transform(scene.image), tokenizer=p.tokenizer)
print("truth:  ", scene.caption)
print("caption:", a.caption)
print("p(word):", " ".join(f"{w}({q:.2f})" for w, q in zip(a.words, a.logprobs.exp().tolist())))

# %% [markdown]
# ## Per-word maps
#
# One panel per generated word, all on one colour scale: a bright panel attends more
# there. First the gated cross-attention, then the decoder's attention to the image
# prefix.

# %%
from viz import word_attention_grid

show(word_attention_grid(scene.image, list(zip(a.words, a.cross_attention)), ncols=7))
show(word_attention_grid(scene.image, list(zip(a.words, a.prefix_attention)), ncols=7))

# %% [markdown]
# ## The tanh gates
#
# Each gated cross-attention block adds `tanh(attn_gate) · CrossAttention(text, media)`
# and then `tanh(ff_gate) · FeedForward(text)` to the text stream. Both gates start at 0
# (the block is inert at initialisation) and training opens them as far as it needs.

# %%
from viz import gate_values

for name, value in a.gates.items():
    print(f"{name:<14} tanh(gate) = {value:+.4f}")
show(gate_values(a.gates))

# %% [markdown]
# A gate is a multiplier, not the size of what it lets through: training can grow the
# cross-attention's output instead of its gate. So measure the gated update
# `tanh(attn_gate) · CrossAttention(text, media)` against the text stream it is added to,
# at every caption position of 64 test scenes (their greedy captions, teacher-forced):
# the hooks `hook_resid_pre` and `hook_attn_out` of each cross layer hold the two, and
# `ssm_bridge.interp.maps.gated_update` takes their ratio (the app shows it for the chosen word).

# %%
from ssm_bridge.interp.maps import gated_update

test = [make_scene("test", i, p.scene_config) for i in range(64)]
images = torch.stack([p.transform(s.image) for s in test])
ids = model.generate(images, max_length=model.config.max_seq_length, temperature=0)
names = ["decoder.cross_layers.0.hook_resid_pre",  # the text stream entering the block
         "decoder.cross_layers.0.hook_attn_out"]  # CrossAttention(text, media), before the gate
with torch.no_grad():
    _, cache = model.run_with_cache(images, ids[:, :-1], names_filter=names)
real = ids[:, :-1] != model.config.pad_token_id  # (64, T) positions that are not padding
text_norm = cache[names[0]].norm(dim=-1)[real]
cross_norm = cache[names[1]].norm(dim=-1)[real]
update = gated_update(model, images, ids[:, :-1])[:, 0][real]  # |tanh(g) · CA| / |text|
print(f"median over {int(real.sum())} positions: |CrossAttention| {cross_norm.median():.1f}, "
      f"|text stream| {text_norm.median():.2f}")
print(f"|gated update| / |text stream|: median {update.median():.2f}, "
      f"10-90 % {update.quantile(0.1):.2f}-{update.quantile(0.9):.2f}")

# %% [markdown]
# ## Which path carries the image?
#
# Neither a gate nor an update's size says whether the caption needs a path. Ablations on
# the same 64 test scenes, greedy captions, scored per attribute (colour and shape have
# 6 values each: chance is 0.17):
#
# * **cross-attention gate = 0**: the text no longer reads the bridge through
#   cross-attention;
# * **image prefix = 0**: the decoder's self-attention no longer sees the image
#   (cross-attention still does). `hook_image_prefix` holds the bridge outputs *plus* the
#   learned `prefix_embed` that marks image positions, so this also removes the marker;
# * **prefix blanked as in training**: the bridge outputs are zeroed but the marker
#   stays, which is what image-prefix dropout did to one training sample in five over the
#   last 5000 of the 15 000 steps;
# * **blanked and gate = 0**: both paths cut.

# %%
from ssm_bridge.training.evaluate import caption_metrics


def zero(t, name):
    return torch.zeros_like(t)


def marker_only(t, name):
    return model.decoder.prefix_embed.expand_as(t)


def metrics(fwd_hooks):
    with model.hooks(fwd_hooks):
        ids = model.generate(images, max_length=model.config.max_seq_length, temperature=0)
    return caption_metrics([p.tokenizer.decode(r.tolist()) for r in ids], test)


gate_off = ("decoder.cross_layers.*.hook_attn_gate", zero)
paths = {"clean": [],
         "cross-attention gate = 0": [gate_off],
         "image prefix = 0": [("decoder.hook_image_prefix", zero)],
         "prefix blanked as in training": [("decoder.hook_image_prefix", marker_only)],
         "blanked and gate = 0": [("decoder.hook_image_prefix", marker_only), gate_off]}
results = {name: metrics(h) for name, h in paths.items()}
ablation = {name: m["exact_match"] for name, m in results.items()}
print(f"{'':<30} exact  colour  shape  size  relation")
for name, m in results.items():
    print(f"{name:<30} {m['exact_match']:5.2f}  {m['colour']:6.2f}  {m['shape']:5.2f}  "
          f"{m['size']:4.2f}  {m['relation']:8.2f}")

# %% [markdown]
# ## Do the maps point at the object?
#
# `ssm_bridge.interp.interpret.localisation_table` captions the first 50 test scenes, keeps the
# captions whose objects match the truth, and scores each object's word against the
# object's pixel mask: the **pointing game** (does the map's brightest patch touch the
# object?) and **energy in mask** (the share of the map's mass on the object). A seeded
# random map per word, scored the same way, is the baseline; the ratio columns divide by
# it. We score the shape nouns, then the colour adjectives.
#
# One seeded draw over about 100 words is a noisy baseline. A random map's top patch is
# uniform over the 64, so its exact pointing rate is the mean share of patches that touch
# the object; we print it after the tables, with each map's pointing rate divided by it.

# %%
from ssm_bridge.interp.interpret import format_table, localisation_table

kinds = ["cross_attention", "prefix_attention", "implicit"]
tables = {role: localisation_table(p, n=50, maps=kinds, progress=False, role=role)
          for role in ("shape", "colour")}
for role, rows in tables.items():
    print(f"{role} words\n{format_table(rows)}\n")

P = model.config.patch_size
g = model.config.img_size // P
touch = [torch.as_tensor(o.mask).reshape(g, P, g, P).any(3).any(1).float().mean().item()
         for s in test[:50] for o in s.objects]  # share of patches touching each object
assert all(rows[0]["n"] == len(touch) for rows in tables.values()), "not every object scored"
chance = sum(touch) / len(touch)
print(f"exact chance of the pointing game: {chance:.3f} (the seeded draw: "
      f"{tables['shape'][0]['random_pointing_game']:.3f})")
for role, rows in tables.items():
    print(f"{role:<7}" + "".join(f"  {r['map']} {r['pointing_game'] / chance:.1f}x" for r in rows))

# %%
from viz import localisation_bars
from viz import localisation_table as table_figure

keep = ("map", "pointing_game", "random_pointing_game", "energy_in_mask", "random_energy", "n")
show(table_figure([{k: r[k] for k in keep} for r in tables["shape"]],
                  title="shape words, 50 test scenes"))
show(localisation_bars(tables["shape"], metric="pointing_game"))

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if a new checkpoint
# changes them, so the text never silently goes stale.

# %%
score = {(role, r["map"]): r for role, rows in tables.items() for r in rows}
clean = ablation["clean"]
blanked, both = results["prefix blanked as in training"], results["blanked and gate = 0"]
assert abs(a.gates["cross 0 attn"]) < 0.1, "revise 'the gate value is small'"
assert update.median() > 0.3, "revise 'the gated update is a large share of the stream'"
assert ablation["cross-attention gate = 0"] >= clean - 0.05, "revise 'redundant with the prefix'"
assert ablation["image prefix = 0"] < 0.2, "revise 'zeroing the prefix breaks most captions'"
assert results["image prefix = 0"]["colour"] > 0.8, "revise 'colours survive the zeroed prefix'"
assert 0.3 < blanked["exact_match"] < clean - 0.2, "revise 'about half the captions'"
assert blanked["colour"] > 0.9 and blanked["shape"] > 0.6, "revise 'cross-attention carries'"
assert both["exact_match"] < 0.05 and both["colour"] < 0.35, "revise 'both cut: chance'"
for role in ("shape", "colour"):
    prefix, cross = score[role, "prefix_attention"], score[role, "cross_attention"]
    implicit = score[role, "implicit"]
    assert prefix["pointing_game"] > 4 * chance, f"revise 'prefix attention points well' ({role})"
    assert prefix["energy_ratio"] > 2.5, f"revise 'several times the random share' ({role})"
    assert cross["pointing_game"] > 2 * chance, f"revise 'cross-attention above chance' ({role})"
    assert prefix["pointing_game"] > cross["pointing_game"] + 0.3, f"revise the gap ({role})"
    assert abs(implicit["pointing_game"] - cross["pointing_game"]) < 0.1, "revise 'implicit'"
shape_cross, shape_prefix = score["shape", "cross_attention"], score["shape", "prefix_attention"]
assert abs(shape_cross["energy_in_mask"] - shape_prefix["energy_in_mask"]) < 0.03, \
    "revise 'as much mass on the object (shape nouns)'"
assert score["colour", "cross_attention"]["energy_ratio"] < 1.5, "revise 'colour: near random'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * **The gate value is small; the branch it scales is not.** tanh(attn_gate) is -0.037,
#   barely off its initial 0. But the cross-attention output it multiplies has a median
#   norm of 54 against 2.25 for the text stream it joins, so the gated update is 0.85 of
#   the stream's norm (median; 0.53-1.23 from the 10th to the 90th percentile). Training
#   grew the branch's output instead of its gate. Read the update, not the gate.
# * **With the prefix present, cross-attention is redundant.** Setting its gate to 0 costs
#   one caption of 64 (exact match 1.00 to 0.98). Self-attention over the
#   `[bridge outputs ; text]` sequence carries all the caption needs.
# * **Without the prefix, cross-attention carries much of the image on its own.** Blank
#   the prefix as training did (bridge outputs zeroed, marker kept) and 0.53 of the
#   captions are still exact; colour is almost intact (0.98), shape (0.81), size (0.85)
#   and relation (0.87) lose more. Cut cross-attention as well and every attribute falls to
#   about chance (colour 0.18, shape 0.13), exact match to 0.00. Zeroing the whole prefix,
#   marker included, is harsher (exact match 0.03), since training never showed the
#   decoder image positions without their marker; even so colour survives (0.93).
# * **That is the training recipe at work.** Over the last 5000 of 15 000 steps,
#   image-prefix dropout left cross-attention as the only route to the image for one
#   sample in five, so it learned to carry the image. It did so as a backup: with the
#   prefix there, the decoder still reads the image through the prefix. The checkpoint
#   shipped before this one, trained without prefix dropout, had a gated update of about
#   0.01 of the stream and, with the prefix blanked, wrote two distinct captions for these
#   64 images (measured when it was replaced; `docs/training-notes.md` has the runs).
# * **The maps show the same split.** Against the exact chance of the pointing game
#   (0.131), prefix attention points at the named object 5.1x chance for shape nouns and
#   7.4x for colour adjectives (0.67 and 0.97 of words). Cross-attention points well
#   above chance too, 2.4x and 2.8x (0.32 and 0.37), but far less often than the prefix
#   attention. For shape nouns it puts as much of its mass on the object as the prefix
#   attention does (energy 0.154 against 0.161, three times random); for colour
#   adjectives its mass is spread (0.060 against 0.051 for a random map), even though its
#   top patch often lands on the object. Pushing the cross-attention through the bridge's
#   hidden attention ("implicit") changes its pointing rate little (+0.02, +0.04).
# * The practical lesson for this architecture: before reading a gated cross-attention
#   map as "where the model looked", measure the gated update, not only the gate, and
#   ablate the path both with and without the other one. Here cross-attention is a
#   working backup whose maps point above chance, but the maps that go with the clean
#   captions are the decoder's prefix attention. Notebook 06 checks both against
#   gradient-based attributions.
