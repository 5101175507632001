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
# `ssm_bridge.maps.analyse` captions an image and collects, per generated word, the
# cross-attention map (mean over heads and cross layers), the prefix-attention map (mean
# over heads and decoder blocks) and the cross-attention pushed through the bridge's
# hidden attention (notebook 05), all on the 8 × 8 patch grid.

# %%
# %matplotlib inline
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
# ## Which path carries the image?
#
# A gate says how strongly a path is scaled, not whether the caption needs it. Two
# ablations on 64 test scenes, greedy captions: set the cross-attention gate to 0 (the
# text no longer reads the bridge through cross-attention), or set the image prefix to 0
# (the decoder's self-attention no longer sees the image; cross-attention still does).

# %%
from ssm_bridge.evaluate import caption_metrics

test = [make_scene("test", i, p.scene_config) for i in range(64)]
images = torch.stack([p.transform(s.image) for s in test])


def zero(t, name):
    return torch.zeros_like(t)


def exact_match(fwd_hooks):
    with model.hooks(fwd_hooks):
        ids = model.generate(images, max_length=model.config.max_seq_length, temperature=0)
    return caption_metrics([p.tokenizer.decode(r.tolist()) for r in ids], test)["exact_match"]


paths = {"clean": [],
         "cross-attention gate = 0": [("decoder.cross_layers.*.hook_attn_gate", zero)],
         "image prefix = 0": [("decoder.hook_image_prefix", zero)]}
ablation = {name: exact_match(h) for name, h in paths.items()}
for name, value in ablation.items():
    print(f"{name:<26} exact match {value:.2f}")

# %% [markdown]
# ## Do the maps point at the object?
#
# `ssm_bridge.interpret.localisation_table` captions the first 50 test scenes, keeps the
# captions whose objects match the truth, and scores each object's word against the
# object's pixel mask: the **pointing game** (does the map's brightest patch touch the
# object?) and **energy in mask** (the share of the map's mass on the object). A seeded
# random map per word, scored the same way, is the baseline; the ratio columns divide by
# it. We score the shape nouns, then the colour adjectives.

# %%
from ssm_bridge.interpret import format_table, localisation_table

kinds = ["cross_attention", "prefix_attention", "implicit"]
tables = {role: localisation_table(p, n=50, maps=kinds, progress=False, role=role)
          for role in ("shape", "colour")}
for role, rows in tables.items():
    print(f"{role} words\n{format_table(rows)}\n")

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
assert abs(a.gates["cross 0 attn"]) < 0.1, "revise 'the cross-attention gate is nearly shut'"
assert ablation["cross-attention gate = 0"] >= clean - 0.05, "revise 'cross-attention is not needed'"
assert ablation["image prefix = 0"] < 0.2, "revise 'without the prefix the captions fail'"
for role in ("shape", "colour"):
    prefix, cross = score[role, "prefix_attention"], score[role, "cross_attention"]
    implicit = score[role, "implicit"]
    assert prefix["pointing_ratio"] > 2.5, f"revise 'prefix attention points well' ({role})"
    assert prefix["energy_ratio"] > 2.5, f"revise 'several times the random share' ({role})"
    assert prefix["pointing_game"] > cross["pointing_game"] + 0.3, f"revise the gap ({role})"
    assert cross["pointing_ratio"] < 2.5, f"revise 'cross-attention points weakly' ({role})"
    assert implicit["pointing_game"] <= cross["pointing_game"] + 0.05, "revise 'implicit'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * **The cross-attention gate is nearly shut.** Training opened tanh(attn_gate) only a
#   hair from its initial 0 (printed above), so the cross-attention maps, whatever they
#   show, are multiplied by a small number before they reach the text.
# * **The caption does not need cross-attention, and cannot do without the prefix.**
#   Shutting the cross-attention gate completely leaves the exact-match rate about where
#   it was, while blanking the image prefix of the decoder's self-attention makes the
#   captions fail. This decoder reads the image through self-attention over the
#   `[bridge outputs ; text]` sequence, the route that needs no gate to open.
# * **The maps agree with the ablations.** The prefix-attention maps point at the object a
#   word names several times more often than a random map, for shape nouns and colour
#   adjectives alike, and carry several times the random share of their mass on it.
#   The cross-attention maps point at the named object at most about twice as often as a
#   random map, far less often than the prefix attention: they are the maps of a path the
#   model does not use. Pushing them through the bridge's hidden attention ("implicit")
#   does not rescue them.
# * The practical lesson for this architecture: before reading a gated cross-attention
#   map as "where the model looked", check the gate and ablate the path. Here the
#   faithful attention maps are the decoder's prefix attention; notebook 06 checks both
#   against gradient-based attributions.
