"""The app's Intervene tab, and the notebook explorer's intervention control: act on the
model and see what the caption does.

    grid = patch_grid(view.pixels, {9, 10}, g=8)          # the image, chosen patches tinted
    p = clicked_patch((x, y), g=8)                        # a click on that image -> patch
    res = run_action(analyser, view, Action("zero state", patches=(9, 10)))
    caption_change(res)                                   # markdown: both captions, Δ log p
    word_changes(res)                                     # HighlightedText spans

Every model call goes through `ssm_bridge.interp.interventions.intervene`, the function the
notebooks' explorer and the library use, so the three show the same numbers. The captions
are greedy; the log-probs are of the caption shown above the tabs (teacher-forced), so a
sampled caption is scored as it was written.
"""

from __future__ import annotations

import html

import numpy as np

from ..core.addressing import ssm_stacks
from ..interp.interventions import ACTIONS, STATE_STACKS, Action, available_actions, intervene
from ..interp.localization import cell_index
from .support import layer_direction_choices, scene_pixels

MIN_COVER = 0.1  # a patch belongs to an object when the object covers this share of it
DISPLAY = 256  # px: the model input shown 4x (64 px) so that a patch is easy to click
CHANGED = 0.5  # nats: a word whose log p moved more than this is marked as affected
TINT = np.array([245, 158, 11], np.float32)  # the caption's "selected" orange
HELP = ("**Intervene**: click patches on the image (click again to unselect), pick an "
        "action, and apply it. The page then shows the greedy caption without and with the "
        "action, and how the log-probability of each word of the caption above changed "
        "(words that moved by more than 0.5 nats are highlighted). The action applies to "
        "the chosen layers and scan directions of the chosen SSM stack.")


# ---------------------------------------------------------------- patches
def clicked_patch(xy, g: int, size: int = DISPLAY) -> int:
    """A click (x, y) in pixels on the DISPLAY-px grid image -> patch index (row-major)."""
    x, y = (min(max(int(v), 0), size - 1) for v in xy)
    cell = size / g
    return int(y // cell) * g + int(x // cell)


def patch_grid(pixels: np.ndarray, patches, g: int, size: int = DISPLAY) -> np.ndarray:
    """The (S, S, 3) model input shown at size x size with the g x g patch grid drawn and
    the chosen patches tinted: (size, size, 3) uint8."""
    f = size // pixels.shape[0]
    img = pixels.repeat(f, 0).repeat(f, 1).astype(np.float32)  # (size, size, 3)
    cell = size // g
    for p in patches:
        r, c = divmod(int(p), g)
        block = img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]  # (cell, cell, 3)
        block[:] = 0.45 * block + 0.55 * TINT
    img[::cell, :] = img[:, ::cell] = 128  # grid lines, one pixel wide
    return img.clip(0, 255).astype(np.uint8)


def object_patches(mask: np.ndarray, grid: int, min_cover: float = MIN_COVER) -> tuple[int, ...]:
    """The patches (row-major on the grid x grid patch grid) that a (H, W) bool mask covers
    by at least `min_cover` of their area (any H, W: pixels go to patches as the
    localisation scores assign them)."""
    cells = cell_index((grid, grid), mask.shape).flatten().numpy()  # (H * W,) patch per pixel
    area = np.bincount(cells, minlength=grid * grid)
    covered = np.bincount(cells, weights=np.asarray(mask, dtype=float).flatten(),
                          minlength=grid * grid)
    return tuple(int(i) for i in np.flatnonzero(covered >= min_cover * np.maximum(area, 1)))


# ---------------------------------------------------------------- choices
def stack_choices(model) -> list[str]:
    """The SSM stacks whose state the tab can edit at image tokens."""
    stacks = ssm_stacks(model)
    return [s for s in STATE_STACKS if s in stacks]


def action_text(kind: str) -> str:
    return f"*{kind}*: {ACTIONS[kind]}" if kind in ACTIONS else ""


# ---------------------------------------------------------------- acting
def make_action(analyser, kind: str, patches, layers, direction: str | None,
                stack: str | None, source_seed) -> Action:
    """The Action the tab's controls describe (ValueError names a missing choice); the
    source of "patch from scene" is the generated scene of `source_seed`."""
    model = analyser.model
    if kind not in available_actions(model):
        raise ValueError(f"action {kind!r} is not available for this model; choose one of "
                         f"{available_actions(model)}")
    if kind != "zero cross-attention" and not layers:
        raise ValueError("tick at least one layer for the action to act on")
    source = None
    if kind == "patch from scene":
        if source_seed is None or not float(source_seed).is_integer() or source_seed < 0:
            raise ValueError("source scene: type a scene seed (an integer >= 0) to take the "
                             "state from")
        pixels = scene_pixels(int(source_seed), analyser.p.scene_config)[0]  # (S, S, 3)
        source = analyser.p.transform(analyser.prepare(pixels))  # (3, S, S)
    return Action(kind, tuple(sorted(int(p) for p in patches)),
                  tuple(int(i) for i in layers) if layers else None,
                  None if direction in (None, "all") else (direction,), stack or "bridge",
                  source)


def run_action(analyser, view, action: Action):
    """`intervene` on the view's image, scoring the view's caption; InterventionResult."""
    a = view.analysis
    with analyser.lock:
        return intervene(analyser.model, analyser.p.tokenizer, a.image, action,
                         caption_ids=a.ids, max_length=analyser.max_seq_length)


def caption_change(res) -> str:
    """Markdown: the greedy caption without and with the action (changed words in bold),
    the total change of log p and a per-word table."""
    before, after = res.caption_before.split(), res.caption_after.split()
    marked = " ".join(f"**{html.escape(w)}**" if i >= len(before) or w != before[i]
                      else html.escape(w) for i, w in enumerate(after))
    verdict = "the caption **changed**" if res.caption_changed else "the caption is unchanged"
    lines = [f"before: {html.escape(res.caption_before)}  ", f"after: {marked}  ",
             f"{verdict}; log p of the caption above: {res.total_delta:+.2f} nats", "",
             "| word | log p before | log p after | Δ |", "|---|---|---|---|"]
    for r in res.to_rows():
        flag = " ◀" if abs(r["delta"]) > CHANGED else ""
        lines.append(f"| {html.escape(r['word'])} | {_num(r['logprob_before'])} | "
                     f"{_num(r['logprob_after'])} | {_num(r['delta'], '+')}{flag} |")
    return "\n".join(lines)


def _num(x: float, sign: str = "") -> str:
    """x to 2 decimals, without the '-0.00' of a tiny negative (it reads as a change)."""
    text = f"{x:{sign}.2f}"
    return text.replace("-", "" if not sign else "+", 1) if float(text) == 0 else text


def word_changes(res) -> list[tuple[str, str | None]]:
    """HighlightedText spans of the scored caption: words whose log p fell or rose by more
    than CHANGED nats are labelled "hurt" / "helped"."""
    spans = []
    for r in res.to_rows():
        d = r["delta"]
        spans.append((r["word"] + " ", "hurt" if d < -CHANGED else "helped" if d > CHANGED
                      else None))
    return spans


# ---------------------------------------------------------------- the tab
def intervene_tab(model) -> dict:
    """The Intervene tab's components (call inside a gr.Tabs): the clickable patch grid,
    the action and where it applies, the buttons, and the result. (gradio is imported
    here: the rest of this module serves the notebook explorer too, without it.)"""
    import gradio as gr

    acts = available_actions(model)
    stacks = stack_choices(model)
    layers, directions = layer_direction_choices(model, stacks[0] if stacks else None)
    with gr.Tab("Intervene", id="intervene", elem_id="tab-intervene"):
        gr.Markdown(HELP)
        with gr.Row():
            grid = gr.Image(label="click patches (model input, 8 x 8 patches)",
                            interactive=False, height=DISPLAY, width=DISPLAY,
                            elem_id="iv-grid", buttons=[])
            with gr.Column():
                kind = gr.Dropdown(acts, value=acts[0] if acts else None, label="action",
                                   elem_id="iv-action")
                kind_md = gr.Markdown(action_text(acts[0]) if acts else "")
                stack = gr.Radio(stacks, value=stacks[0] if stacks else None,
                                 label="SSM stack", visible=len(stacks) > 1)
                layer = gr.CheckboxGroup(layers, value=layers, label="layers",
                                         elem_id="iv-layers")
                direction = gr.Dropdown(["all", *directions], value="all",
                                        label="scan direction", visible=len(directions) > 1)
                source = gr.Number(None, precision=0, minimum=0, label="source scene seed",
                                   visible=False, elem_id="iv-source")
        with gr.Row():
            obj_btn = gr.Button("the selected word's object", elem_id="iv-object")
            all_btn = gr.Button("all patches")
            clear_btn = gr.Button("clear")
            apply_btn = gr.Button("apply", variant="primary", elem_id="iv-apply")
        changes = gr.HighlightedText(label="log p change per word of the caption",
                                     color_map={"hurt": "#ef4444", "helped": "#22c55e"},
                                     elem_id="iv-words")
        result = gr.Markdown(elem_id="iv-result")
    return {"iv_grid": grid, "iv_kind": kind, "iv_kind_md": kind_md, "iv_stack": stack,
            "iv_layer": layer, "iv_direction": direction, "iv_source": source,
            "iv_obj_btn": obj_btn, "iv_all_btn": all_btn, "iv_clear_btn": clear_btn,
            "iv_apply_btn": apply_btn, "iv_changes": changes, "iv_result": result,
            "iv_patches": gr.State([])}
