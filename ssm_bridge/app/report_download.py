"""The app's "Download report" button: the file `ssm-bridge report` writes, of the
session's current image and model (ssm_bridge.interp.report does all the work).

    reports = ReportDownloads()                           # Handlers.reports
    path = reports.write(analyser, "shapes-tiny", source, max_length=32)  # report-....html

A generated scene goes in as its scene reference (`--scene test:N`), so the report has
its objects' masks and segmentation scores; an upload or a drawing goes in as the model
input the app keeps, named by its file name. The stamp's command is the `ssm-bridge
report` command line that makes the same report, not the app's own argv. The report
captions greedily (it has no sampling) up to the session's max length; the button's help
says so.

Each report is written in a fresh folder under gradio's upload cache, which the server
serves as it is (downloads.fresh_folder); folders older than MAX_AGE_S are removed
whenever a new report is written, so the disk holds at most that long's reports.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from ..data import SPLITS, make_scene
from ..data.scenes import SPLIT_SIZE
from ..interp import report
from .downloads import MAX_AGE_S, fresh_folder, safe_name

HELP = ("**Download report**: one HTML file of the current image and model, every caption "
        "word under every map kind with its faithfulness (and, for a generated scene, "
        "segmentation) scores and a reproducibility stamp; it takes a minute or more on a "
        "CPU. The report captions **greedily** (temperature 0) up to the max length set "
        "under decoding, whatever the sampling settings, so with sampling its caption may "
        "differ from the one above.")

# a handler's gr.Progress default: gradio hands the event's own tracker in its place, and
# track_tqdm makes it follow the report's tqdm bar (maps, then words)
PROGRESS = gr.Progress(track_tqdm=True)


def report_panel() -> dict:
    """The "Download report" button, the file it makes (a download link) and its help."""
    with gr.Group():
        button = gr.Button("Download report", elem_id="report-btn")
        file = gr.File(label="report (HTML, opens offline)", interactive=False,
                       elem_id="report-file", height=110)
    return {"report_btn": button, "report_file": file,
            "report_md": gr.Markdown(HELP, elem_id="report-help")}


@dataclass
class ReportInput:
    """What `report.collect` reads (scene reference or pixels) and how the command names it."""

    scene: str | None  # "split:index"
    pixels: np.ndarray | None  # (S, S, 3) uint8 when there is no scene reference
    name: str | None  # how the page names the pixels: the upload's file name
    args: list[str]  # the command line's input: ["--scene", ref] or [file name]
    note: str  # "" or why the file in args does not exist yet
    stem: str  # for the download's file name


def scene_ref(seed: int) -> str | None:
    """"split:index" of the app's scene `seed` (generate_scene(seed), drawn not
    compositional), or None: comp_test's scenes are drawn compositional, so its seeds
    (and seeds past the last split) are no `make_scene` of a reference."""
    k, index = divmod(int(seed), SPLIT_SIZE)
    if k >= len(SPLITS) or SPLITS[k] == "comp_test":
        return None
    return f"{SPLITS[k]}:{index}"


def report_input(p, source: dict) -> ReportInput:
    """The report's input for the session's source (ui.Handlers' source state): the scene
    reference when it regenerates the very pixels the app shows under this model's scene
    config (a scene picked under another model's config may not), else the pixels."""
    pixels, scene = p.transform.to_array(source["pixels"]), source.get("scene")
    ref = None if scene is None else scene_ref(scene.seed)
    if ref is not None:
        again = make_scene(*report.parse_scene_ref(ref), p.scene_config).image
        if np.array_equal(p.transform.to_array(again), pixels):
            return ReportInput(ref, None, None, ["--scene", ref], "", ref.replace(":", "-"))
    if source.get("name"):  # an upload: the CLI reads the same file
        name = source["name"]
        return ReportInput(None, pixels, name, [name], "", Path(name).stem)
    file = f"scene-seed-{scene.seed}.png" if scene is not None else "drawing.png"
    what = f"scene seed {scene.seed}" if scene is not None else "your drawing"
    return ReportInput(None, pixels, what, [file],
                       f" ({file}: the app's {'x'.join(map(str, pixels.shape[:2]))} model "
                       f"input of {what}, which the app does not save)", Path(file).stem)


class ReportDownloads:
    """Writes each report in its own folder under `root` (None: gradio's upload cache);
    `maps`: the kinds reported (None: every kind the model has, as the CLI's default)."""

    def __init__(self, root: str | Path | None = None, maps: list[str] | None = None,
                 max_age_s: float = MAX_AGE_S) -> None:
        self.root, self.maps, self.max_age_s = root, maps, max_age_s

    def _folder(self) -> Path:
        return fresh_folder("reports", self.root, self.max_age_s)

    def command(self, checkpoint: str, inp: ReportInput, out: str, max_length: int,
                limit: int) -> str:
        """The `ssm-bridge report` command line that makes the same report."""
        maps = ["--maps", ",".join(self.maps)] if self.maps else []
        length = ["--max-length", str(max_length)] if max_length != limit else []
        return shlex.join(["ssm-bridge", "report", *inp.args, "--checkpoint", checkpoint,
                           "--out", out, *maps, *length]) + inp.note

    def write(self, analyser, checkpoint: str, source: dict, max_length=None,
              progress=None) -> Path:
        """The report of `source` by `analyser`'s model (`checkpoint`: its name or folder
        in the app's selector) as report-<image>-<model>.html in a fresh folder.
        `progress`: a gr.Progress, which follows the report's own progress bar."""
        p, limit = analyser.p, analyser.max_seq_length
        if max_length is None:
            max_length = limit
        elif float(max_length).is_integer():  # a slider's 32.0; report checks the range
            max_length = int(max_length)
        inp = report_input(p, source)
        out = f"report-{safe_name(inp.stem)}-{safe_name(Path(checkpoint).name)}.html"
        if progress is not None:
            progress(0, desc="report: captioning")
        path = self._folder() / out
        with analyser.lock:  # the report switches the shared model's modes, like analyse
            report.write_report(path, p, inp.pixels, inp.scene, self.maps,
                                max_length=max_length, progress=progress is not None,
                                name=inp.name,
                                command=self.command(checkpoint, inp, out, max_length, limit))
        return path
