# %% [markdown]
# # 08 · Train your own bridge
#
# **Question.** How do I train an SSM-bridge captioner of my own, on the kit's scene world
# and on a folder of my own captioned images, and what does a run of a few hundred steps
# on a laptop CPU already learn?
#
# Training goes through the same objects as the command line:
# `build_train_config(preset, overrides)` makes a `TrainConfig`, `build(cfg)` makes the
# data, tokenizer, model and `Trainer`, and `trainer.fit()` runs it, writing
# `metrics.jsonl`, `loss_curve.png` and checkpoints into `out_dir`. The equivalent shell
# command is `python -m ssm_bridge.training.train --preset=test-tiny --max_steps=400 ...`.
#
# To fit in a minute on a CPU the run is tiny: 32 × 32 images of one object, three
# shapes in three colours, on a plain background, and a model of ~50 k parameters.

# %%
# %matplotlib inline
import json
import tempfile
from pathlib import Path

from ssm_bridge.app.notebook import setup, show

# One CPU thread: tiny models train fastest on it, and the float sums then run in
# one order, so the run below gives the same numbers every time it runs.
setup(seed=0, threads=1)
workdir = tempfile.TemporaryDirectory()  # everything this notebook writes goes here
root = Path(workdir.name)


# %% [markdown]
# ## The run's configuration
#
# The `test-tiny` preset is the kit's smallest model; the overrides choose the scene
# world, the length of the run and a periodic evaluation (greedy captions of 100
# validation scenes every 100 steps, scored per attribute).

# %%
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import build_train_config

scenes = dict(img_size=32, max_objects=1, shapes=["circle", "square", "triangle"],
              colours=["red", "green", "blue"], holdout=[], backgrounds=["light"],
              small_extent=(0.3, 0.36), large_extent=(0.5, 0.6), rotation=0.0,
              hand_drawn_prob=0.0, shadow_prob=0.0, noise=0.0, colour_jitter=0.2)
cfg = build_train_config("test-tiny", dict(
    out_dir=str(root / "scenes-run"), seed=0, num_train=1000, batch_size=32,
    max_steps=400, lr=5e-3, warmup_steps=20, log_every=20, eval_every=100, eval_num=100,
    save_every=200, threads=1, progress=False,
    precision="fp32",  # not "auto": the same arithmetic on every CPU, so the same claims hold
    model=dict(patch_size=4), scenes=scenes))
for key in ("preset", "num_train", "batch_size", "max_steps", "lr", "eval_every", "eval_num"):
    print(f"{key:<12} {getattr(cfg, key)}")
shown = ("img_size", "patch_size", "vision_embed_dim", "ssm_hidden_dim", "ssm_state_dim",
         "ssm_num_layers")
print("model       ", {k: getattr(cfg.model, k) for k in shown})

# %%
trainer = build(cfg)
model = trainer.model
print(f"{model.num_parameters():,} parameters; {len(trainer.train_set)} training scenes; "
      f"vocabulary of {len(trainer.tokenizer)}: {' '.join(trainer.tokenizer.itos[4:])}")

# %% [markdown]
# ## Train
#
# 400 steps of 32 captions. The wall time depends on the machine, so it is the one
# output here that is not compared when the notebook is tested.

# %%
# NBVAL_IGNORE_OUTPUT
# (wall time)
import time

start = time.perf_counter()
final = trainer.fit()
print(f"{trainer.step} steps in {time.perf_counter() - start:.1f} s wall")

# %% [markdown]
# ## What the run recorded
#
# `metrics.jsonl` holds one record per logged step (loss, learning rate) and per
# evaluation (exact match and per-attribute accuracy); `plot_training_curves` draws both.

# %%
from viz import plot_training_curves

run = Path(cfg.out_dir)
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print("files in the run folder:", sorted(p.name for p in run.iterdir()))
print("checkpoints:", sorted(p.name for p in (run / "checkpoints").iterdir()))
show(plot_training_curves(records))

# %% [markdown]
# The numbers behind the curves. Training is deterministic for a seed on a given machine,
# but another CPU may differ in the last bits of a sum, which 400 steps can turn into a
# different borderline caption; so the exact values are shown, not compared, and the
# claims drawn from them are checked against thresholds in the cell after.

# %%
# NBVAL_IGNORE_OUTPUT
# (exact training values may differ in the last bits across CPUs)
train = [r for r in records if r["kind"] == "train"]
evals = [r for r in records if r["kind"] == "eval"]
print("loss at steps", {r["step"]: round(r["loss"], 3) for r in train[::4] + train[-1:]})
print("step  exact  colour  size  shape")
for r in evals:
    print(f"{r['step']:4d}  {r['exact_match']:5.2f}  {r['colour']:6.2f}  {r['size']:4.2f}  "
          f"{r['shape']:5.2f}")

# %%
first, last = evals[0], evals[-1]
print("loss fell to under a third of its first logged value:",
      train[-1]["loss"] < train[0]["loss"] / 3)
print("colour and size learned (>= 90 % at the end):",
      last["colour"] >= 0.9 and last["size"] >= 0.9)
print("shape lags behind colour at every evaluation:",
      all(r["shape"] <= r["colour"] for r in evals))
print("exact match improved from the first to the last evaluation:",
      last["exact_match"] > first["exact_match"])

# %% [markdown]
# ## Use the checkpoint
#
# A checkpoint folder holds the model, tokenizer, preprocessing and scene settings, so
# `load_pretrained` reads it exactly like the shipped one. Four validation scenes, with
# the new model's captions as titles:

# %%
from ssm_bridge import load_pretrained
from ssm_bridge.data import SceneConfig, make_scene
from viz import new_figure
from viz.style import set_title, show_image

mine = load_pretrained(run / "checkpoints" / (run / "checkpoints" / "latest").read_text())
print("reloaded:", type(mine.model).__name__, "with", mine.scene_config.shapes, "x",
      mine.scene_config.colours)
val = [make_scene("val", i, SceneConfig(**scenes)) for i in range(4)]
fig, axes = new_figure(ncols=4, size=(2.2, 2.4), grid=False)
for ax, s, cap in zip(axes[0], val, mine.caption([s.image for s in val])):
    show_image(ax, s.image)
    set_title(ax, f"{cap}\n(truth: {s.caption})")
show(fig)

# %% [markdown]
# ## Your own images: a COCO-format folder
#
# Any folder of images with a COCO caption file trains the same way (`data="coco"`). We
# write one here: 48 scene images saved as PNG files, each with its canonical caption and
# one paraphrase, in the official annotation format
# `{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`.

# %%
from PIL import Image

folder = root / "my-captions"
(folder / "images").mkdir(parents=True)
images, annotations = [], []
for i in range(48):
    s = make_scene("train", i, SceneConfig(**scenes))
    name = f"{i:03d}.png"
    Image.fromarray(s.image).save(folder / "images" / name)
    images.append({"id": i, "file_name": name})
    for text in (s.caption, s.paraphrases[0]):
        annotations.append({"id": len(annotations), "image_id": i, "caption": text})
(folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
print(f"{len(images)} images, {len(annotations)} captions; e.g.", annotations[:2])

# %% [markdown]
# The tokenizer is built from the captions themselves (`coco_min_count=1` keeps every
# word: there are few captions here), and 150 steps fit this small set.

# %%
coco_cfg = build_train_config("test-tiny", dict(
    out_dir=str(root / "coco-run"), seed=0, data="coco",
    coco_annotations=str(folder / "captions.json"), coco_images=str(folder / "images"),
    coco_min_count=1, batch_size=16, max_steps=150,
    lr=5e-3, warmup_steps=10, log_every=10, eval_every=0, save_every=150, threads=1,
    progress=False, model=dict(patch_size=4)))
coco_trainer = build(coco_cfg)
print(f"{len(coco_trainer.train_set)} (image, caption) pairs; vocabulary of "
      f"{len(coco_trainer.tokenizer)}: {' '.join(coco_trainer.tokenizer.itos[4:])}")

# %%
# NBVAL_IGNORE_OUTPUT
# (wall time)
start = time.perf_counter()
coco_trainer.fit()
print(f"{coco_trainer.step} steps in {time.perf_counter() - start:.1f} s wall")

# %%
coco_records = [json.loads(line)
                for line in (root / "coco-run" / "metrics.jsonl").read_text().splitlines()]
coco_loss = [r["loss"] for r in coco_records if r["kind"] == "train"]
print("loss fell to under half of its first logged value:", coco_loss[-1] < coco_loss[0] / 2)
show(plot_training_curves(coco_records))

# %% [markdown]
# The prose below rests on these numbers; the checks fail loudly if they change, so the
# text never silently goes stale.

# %%
assert 30_000 < model.num_parameters() < 70_000, "revise '~50 k parameters'"
assert train[-1]["loss"] < train[0]["loss"] / 3
assert next(r["loss"] for r in train if r["step"] == 100) < train[0]["loss"] / 3  # "steeply"
assert train[-1]["loss"] < next(r["loss"] for r in train if r["step"] == 100)  # "keeps falling"
assert last["colour"] >= 0.9 and last["size"] >= 0.9
assert last["shape"] < 0.9 and all(r["shape"] <= r["colour"] for r in evals)
assert coco_loss[-1] < coco_loss[0] / 2
workdir.cleanup()
print("claims checked")

# %% [markdown]
# ## What we learned
#
# * A training run is three calls (config, `build`, `fit`) and leaves a folder a
#   researcher can come back to: the metrics log, a loss-curve image, and checkpoints
#   that `load_pretrained` opens like the shipped model.
# * Four hundred steps on one CPU thread already teach a 32-pixel bridge most of a simple
#   world. The loss falls steeply in the first hundred steps and keeps falling; colour
#   and size are right for nearly every validation scene by the end, while shape lags
#   behind colour at every evaluation and is still far from solved. Shape needs the
#   spatial pattern across several patches, colour only one patch's pixels: the order
#   in which the attributes are learned follows how much of the image each needs. Finer
#   patches (`patch_size=4` here, an 8 × 8 grid) and longer runs are the levers; the
#   shipped `shapes-tiny` checkpoint is the same recipe at 64 pixels and thousands of
#   steps.
# * Bringing one's own images needs nothing but a COCO-format caption file: the tokenizer
#   is built from the captions and the same trainer fits them, with the loss falling to
#   well under half within 150 steps on 48 images. Such a small set is memorised, not
#   learned; a real study needs thousands of images and a held-out split
#   (`coco_karpathy=` takes Karpathy's split file).
