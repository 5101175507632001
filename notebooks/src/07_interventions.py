# %% [markdown]
# # 07 · Interventions: reset the state, ablate the gate, patch one image into another
#
# **Question.** Maps and attributions are correlational. What does the caption do when we
# *change* the bridge: wipe its state at chosen patches, close or flatten its gate, or
# transplant its activations from one image into another? Which of the bridge's
# quantities does the caption causally depend on?
#
# `ssm_bridge.interp.interventions` builds the edits as hook lists for `model.hooks`:
# `reset_state` (Ā_t = 0 at some patches: the state forgets its past there),
# `zero_state` (Ā_t = 0 and Δ·B·x_t = 0: the state is emptied), `ablate_gate` (the gate
# SiLU(z) set to 0, 1 or its mean over the image), `patch_state` (the state taken from a
# source image) and `patch_activation` (any hook's activation taken from a source
# image's cache). Positions are patch indices 0..63 on the 8 × 8 grid; the builders map
# them to each scan direction's order.

# %%
# %matplotlib inline
import torch
from einops import reduce

from ssm_bridge.app.notebook import setup, show

# One CPU thread: models this small run fastest on it, and the float sums then run in
# one order, so the numbers below come out the same on every run (nbval compares them).
setup(seed=0, threads=1)


def num(x, digits=2):
    """x rounded for printing, without a '-0.00' that a sign in the last bit would cause."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


# %%
from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene
from ssm_bridge.interp import interventions as iv

p = load_pretrained("shapes-tiny")
model, tok = p.model, p.tokenizer
g = model.config.grid_size
n_layers = len(model.bridge.layers)


def object_patches(scene, j=0, min_cover=0.1):
    """Patch indices (row-major on the g x g grid) that object j covers at least 10 %."""
    cover = reduce(torch.as_tensor(scene.objects[j].mask, dtype=torch.float32),
                   "(r h) (c w) -> (r c)", "mean", r=g, c=g)  # (g*g,)
    return torch.nonzero(cover >= min_cover)[:, 0].tolist()


scene = make_scene("test", 3, p.scene_config)
image = p.transform(scene.image)
on_objects = sorted({q for j in range(len(scene.objects)) for q in object_patches(scene, j)})
print("scene:", scene.caption)
print(f"{len(on_objects)} of {g * g} patches lie on its objects")

# %% [markdown]
# ## One scene, one edit at a time
#
# `compare` captions the image greedily without and with the edit, and scores the
# original caption teacher-forced both ways; we print both captions and the change of
# the caption's total log-probability (0: the edit changed nothing the caption needs).

# %%
edits = {
    "reset state on the objects": iv.reset_state(model, on_objects),
    "zero state on the objects": iv.zero_state(model, on_objects),
    "zero state everywhere": iv.zero_state(model, list(range(g * g))),
    "gate = 0, layer 0": iv.ablate_gate(model, layers=[0], mode="zero"),
    "gate = 1, layer 0": iv.ablate_gate(model, layers=[0], mode="one"),
    "gate = image mean, layer 0": iv.ablate_gate(model, layers=[0], mode="mean"),
}
single_scene = {}
for name, hooks in edits.items():
    r = iv.compare(model, tok, image, hooks)
    single_scene[name] = r
    print(f"{name:<28} Δ log p {num(r.total_delta):>7}   {r.caption_after}")

# %% [markdown]
# The same edits are a widget in `ssm_bridge.explore`: pick an action and the patches (or
# the selected word's object), click *apply*, and read both captions and each word's
# change of log p. It calls `iv.intervene`, which is `compare` for one `iv.Action`, so
# the numbers are the ones above; here the button is clicked from code.

# %%
from IPython.display import display

from ssm_bridge import explore

explorer = explore(p, scene)
explorer.action.value = "zero state"
explorer.patches.value = ", ".join(map(str, on_objects))
explorer.apply_button.click()  # what a click on "apply" does
clicked, direct = explorer.result, single_scene["zero state on the objects"]
print(f"{'explorer: ' + explorer.action.value:<28} Δ log p {num(clicked.total_delta):>7}   "
      f"{clicked.caption_after}")
assert explorer.message.value == "" and clicked.caption_after == direct.caption_after
assert torch.equal(clicked.logprob_after, direct.logprob_after)
display(explorer)

# %% [markdown]
# ## Over 64 scenes
#
# One scene can mislead. For the first 64 test scenes: the exact-match rate of the greedy
# captions under each edit, and the mean log-probability of the true caption
# (teacher-forced, summed over its words). Edits that depend on where the objects are
# run scene by scene; the others as one batch.

# %%
from ssm_bridge.training.evaluate import caption_metrics

test = [make_scene("test", i, p.scene_config) for i in range(64)]
images = torch.stack([p.transform(s.image) for s in test])  # (64, 3, 64, 64)
encoded = [tok.encode(s.caption) for s in test]  # BOS ... EOS
T = max(len(e) for e in encoded) - 1
tokens = torch.full((len(test), T), tok.pad_id)
targets = torch.full((len(test), T), -100)
for i, e in enumerate(encoded):
    tokens[i, : len(e) - 1] = torch.tensor(e[:-1])
    targets[i, : len(e) - 1] = torch.tensor(e[1:])


@torch.no_grad()
def evaluate(hooks_for, rows=None):
    """(caption metrics, mean true-caption log-prob) with hooks_for(i) -> hooks for scene
    i, or one hook list for the whole batch; over `rows` (default: every test scene)."""
    rows = range(len(test)) if rows is None else rows
    batches = [(list(rows), hooks_for)] if isinstance(hooks_for, list) else \
        [([i], hooks_for(i)) for i in rows]
    preds, logp = [], []
    for idx, hooks in batches:
        with model.hooks(hooks):
            ids = model.generate(images[idx], max_length=model.config.max_seq_length,
                                 temperature=0)
            logits = model(images[idx], tokens[idx])  # (b, T, V)
        lp = logits.log_softmax(-1).gather(-1, targets[idx].clamp_min(0)[..., None])[..., 0]
        logp += (lp * (targets[idx] >= 0)).sum(1).tolist()  # (b,) summed over words
        preds += [tok.decode(r.tolist()) for r in ids]
    return caption_metrics(preds, [test[i] for i in rows]), sum(logp) / len(logp)


all_patches = list(range(g * g))


def on_objects_of(i):
    """The patches that any object of test scene i covers."""
    return sorted({q for j in range(len(test[i].objects)) for q in object_patches(test[i], j)})


suite = {"clean": [],
         "reset state on the objects": lambda i: iv.reset_state(model, on_objects_of(i)),
         "zero state on the objects": lambda i: iv.zero_state(model, on_objects_of(i)),
         "reset state everywhere": iv.reset_state(model, all_patches),
         "zero state everywhere": iv.zero_state(model, all_patches)}
for layer in range(n_layers):
    for mode in ("zero", "one", "mean"):
        suite[f"gate = {mode}, layer {layer}"] = iv.ablate_gate(model, layers=[layer], mode=mode)
results = {name: evaluate(h) for name, h in suite.items()}
print(f"{'edit':<28} exact  colour  shape  size  relation   mean log p(true caption)")
for name, (m, lp) in results.items():
    print(f"{name:<28} {m['exact_match']:5.2f}  {m['colour']:6.2f}  {m['shape']:5.2f}  "
          f"{m['size']:4.2f}  {m['relation']:8.2f}   {num(lp):>24}")

# %% [markdown]
# ## Activation patching between two images
#
# Take two one-object scenes, a *target* and a *source*, and run the target while one
# quantity is copied from the source at the patches either object covers. If the caption
# now names the source's colour or shape, that quantity, at those patches, carries it.
# Sites, from the bridge's input to its output: the bridge input (`bridge.hook_in`), the
# SSM state of every layer (`patch_state`), the residual stream after each layer
# (`bridge.layers.{l}.hook_resid_post`), and, as a control, *all* 65 bridge outputs.

# %%
from ssm_bridge.core.addressing import SSMStack

single = [s for s in (make_scene("test", i, p.scene_config) for i in range(120))
          if len(s.objects) == 1][:16]
pairs = [(single[k], single[k + 1]) for k in range(0, len(single), 2)]  # (target, source)


def caption(img, hooks):
    with model.hooks(hooks):
        ids = model.generate(img[None], max_length=model.config.max_seq_length, temperature=0)
    return tok.decode(ids[0].tolist())


bridge = SSMStack.of(model)  # names the bridge's hooks (ssm_bridge/core/addressing.py)
sites = ["bridge input", "SSM state, all layers"]
sites += [f"residual after layer {i}" for i in range(n_layers)] + ["all bridge outputs"]
outcome = {site: [] for site in sites}  # per pair: (colour moved, shape moved, whole caption)
example = None
for target, source in pairs:
    t_img, s_img = p.transform(target.image), p.transform(source.image)
    where = sorted(set(object_patches(target)) | set(object_patches(source)))
    _, cache = model.run_with_cache(s_img[None], None, names_filter=[
        "bridge.hook_in", "bridge.hook_out", bridge.glob("hook_resid_post")])
    hooks = {"bridge input": iv.patch_activation("bridge.hook_in", cache, where),
             "SSM state, all layers": iv.patch_state(model, s_img[None], where)}
    for i in range(n_layers):
        hooks[f"residual after layer {i}"] = iv.patch_activation(
            bridge.hook("hook_resid_post", i), cache, where)
    hooks["all bridge outputs"] = iv.patch_activation("bridge.hook_out", cache)
    caps = {site: caption(t_img, h) for site, h in hooks.items()}
    src, tgt = source.objects[0], target.objects[0]
    own = caption(s_img, [])  # the model's caption of the source image
    for site, cap in caps.items():
        words = cap.split()
        # an attribute "moved" when the source's differs from the target's and is now named
        outcome[site].append((src.colour in words if src.colour != tgt.colour else None,
                              src.shape in words if src.shape != tgt.shape else None,
                              cap == own))
    if example is None:
        example = (target.caption, source.caption, caps)

print(f"target: {example[0]}\nsource: {example[1]}")
for site, cap in example[2].items():
    print(f"  {site:<24} -> {cap}")
n_colour = sum(s.objects[0].colour != t.objects[0].colour for t, s in pairs)
n_shape = sum(s.objects[0].shape != t.objects[0].shape for t, s in pairs)
print(f"\nshare of pairs whose caption takes the source's colour (of {n_colour} pairs where the "
      f"colours differ), shape (of {n_shape}) or its whole caption of the source (of "
      f"{len(pairs)}):")
print(f"{'patched site':<24}  colour  shape  caption")
transfer = {}
for site, rows in outcome.items():
    t = torch.tensor([sum(r[k] for r in rows if r[k] is not None) /
                      max(1, sum(r[k] is not None for r in rows)) for k in range(3)])
    transfer[site] = t
    print(f"{site:<24}  {t[0]:6.2f}  {t[1]:5.2f}  {t[2]:7.2f}")

# %%
from viz import new_figure

fig, axes = new_figure(size=(5.2, 3.0))
ax = axes[0, 0]
x = torch.arange(len(sites)).float()
for k, (label, offset) in enumerate((("source colour", -0.2), ("source shape", 0.2))):
    ax.bar((x + offset).numpy(), [transfer[s][k].item() for s in sites], width=0.4, label=label)
ax.set_xticks(x.numpy(), sites, rotation=25, ha="right")
ax.set_ylim(0, 1.05)
ax.set_ylabel("share of pairs")
ax.set_title("what moves the caption to the source image")
ax.legend(fontsize=7, loc="upper center")
show(fig)

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if a new checkpoint
# changes them, so the text never silently goes stale.

# %%
results = {name: (m["exact_match"], lp, m) for name, (m, lp) in results.items()}
clean_em, clean_lp, _ = results["clean"]
state_edits = ("reset state on the objects", "zero state on the objects", "reset state everywhere",
               "zero state everywhere")
assert clean_em >= 0.95, "revise 'all 64 clean captions right'"
for edit in state_edits:
    em, lp, m = results[edit]
    assert clean_em - 0.4 < em < clean_em - 0.15, \
        f"revise 'a quarter to a third of the captions' ({edit})"
    assert lp < clean_lp - 1, f"revise 'the true caption's log-probability drops' ({edit})"
    base = results["clean"][2]
    drop = {k: base[k] - m[k] for k in ("colour", "shape", "size", "relation")}
    assert drop["relation"] == max(drop.values()) > 0.15, f"revise 'the relations' ({edit})"
    assert min(m[k] for k in ("colour", "shape", "size")) >= 0.95, \
        f"revise 'attributes survive' ({edit})"
for kind in ("reset", "zero"):
    on_obj = results[f"{kind} state on the objects"][0]
    everywhere = results[f"{kind} state everywhere"][0]
    assert abs(on_obj - everywhere) < 0.1, \
        f"revise 'the object patches alone cost about as much' ({kind})"
for mode, drop in (("zero", 0.6), ("one", 0.4), ("mean", 0.2)):
    worst = max(results[f"gate = {mode}, layer {i}"][0] for i in range(n_layers))
    assert worst < clean_em - drop, f"revise the gate = {mode} sentence"
gate_mean = [results[f"gate = mean, layer {i}"][0] for i in range(n_layers)]
assert min(gate_mean) - 0.05 < results["zero state everywhere"][0] < max(gate_mean) + 0.05, \
    "revise 'the state costs about as much as a flattened gate'"
flip = single_scene["zero state on the objects"]
before, after = flip.caption_before.split(), flip.caption_after.split()
assert flip.caption_changed and len(before) == len(after), "revise the relation-flip example"
assert [(b, a) for b, a in zip(before, after) if b != a] == [("below", "above")], \
    "revise the example"
assert transfer["SSM state, all layers"].max() <= 0.25, "revise 'patching the state moves little'"
assert transfer["all bridge outputs"][2] >= 0.9, "revise the control"
assert max(transfer[f"residual after layer {i}"][0] for i in range(n_layers)) >= 0.5
assert transfer["bridge input"][0] >= 0.5, "revise 'the bridge input behaves alike'"
for site in sites[2:-1]:
    assert transfer[site][1] < transfer[site][0], f"revise 'shape moves less often' ({site})"
first_res = transfer["residual after layer 0"]
last_res = transfer[f"residual after layer {n_layers - 1}"]
assert (last_res[:2] < first_res[:2]).all(), "revise 'after the last layer, less moves'"
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * **The caption needs the SSM state, for its relations.** All 64 clean captions are
#   right. Emptying the state at the object patches costs 27 points of exact match
#   (0.73), emptying it at every patch of every layer 33 (0.67), and resetting it
#   (forgetting the past but keeping the current patch's input) costs about as much
#   (0.75 and 0.69). The object patches alone, 20 of 64 on the first scene, cost nearly
#   as much as all of them. The true caption's mean log-probability falls from -0.01 to
#   about -2. The damage is almost all in the relations: relation accuracy falls to
#   0.69-0.76 under every state edit, while colour, shape and size stay at 0.96 or more.
#   On the first scene the state edits turn its second relation, "below", into "above".
#   This flips the previous checkpoint's finding, where emptying the state everywhere
#   cost 6 points and the state "hardly mattered". Relations need context from other
#   rows, which is what a scan's state carries; the attributes are read off each
#   patch's own tokens, as the short memory found in notebook 02 suggests.
# * **The gate matters, though less than before.** Closing the gate of either layer
#   (gate = 0 removes the layer's mixer output) wrecks the captions (0.27 and 0.25).
#   Fixing it at 1 costs half or more of them (0.38 and 0.50). Replacing it with its
#   image mean costs 30 points in layer 0 and 44 in layer 1 (0.70 and 0.56), in line
#   with notebook 03. Emptying the state (0.67) costs about as much as flattening one
#   layer's gate: the token-wise gate and the recurrence are both needed.
# * **Activation patching locates the attributes, not the relations.** Transplanting the
#   SSM state from the source image at the objects' patches never moves the target's
#   caption to the source's colour or shape (0.00 in 8 pairs). The residual stream at
#   the same patches does: after layer 0 the caption takes the source object's colour
#   in 7 of 7 pairs where the colours differ and its shape in 4 of 6. Patching the
#   bridge input behaves alike (colour 0.86, shape 0.33). Shape moves less often than
#   colour at every residual site; plausibly it is spread over more patches and more of
#   the ViT's context, so a patch-local transplant moves it less. After layer 1 less
#   moves (colour 0.71, shape 0.33), as if the scan had already carried the target's
#   object into later patches that the patch leaves alone; 8 pairs are few, so take this
#   as a hint. Patching all bridge outputs reproduces the model's caption of the source,
#   the control that the decoder sees the image only through them.
# * Together with notebooks 02 and 03 the picture is consistent: in this checkpoint the
#   bridge's per-patch path (input projection, gate, skip term D·x and the residual
#   stream) carries what objects look like, and the selective scan's state carries much
#   of where they are relative to each other. The previous checkpoint leaned on the
#   per-patch path alone. Its training differed in several ways at once (length, weight
#   averaging, image-prefix dropout), so these notebooks cannot say which change made
#   the state matter.
