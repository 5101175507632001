"""Benchmarks of the Gradio app (app.py), in the format of benchmarks/run.py.

    app_latency_s(quick)      caption + the default maps for one image on CPU, in-process
                              (what the app computes after an upload), median of 20
    app_rss_growth_mb(quick)  resident memory growth of a launched app over 200 UI requests
                              (load a scene, analyse it, draw the open tab) from gradio_client

Each returns {name: {"value": float, "unit": str, "target": float}} (app_latency_s adds
app_latency_cpu_s, its CPU time, without a target).
"""

from __future__ import annotations

import gc
import io
import os
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssm_bridge import load_pretrained  # noqa: E402
from ssm_bridge.app.support import (  # noqa: E402
    Analyser,
    Decoding,
    default_word,
    tab_figure,
    truth_markdown,
)
from ssm_bridge.core.addressing import SSMStack  # noqa: E402
from ssm_bridge.data import make_scene, split_seeds  # noqa: E402


def _entry(value: float, unit: str, target: float | None) -> dict:
    return {"value": float(value), "unit": unit, "target": target}


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc, else psutil)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _caption_with_maps(analyser: Analyser, scene) -> None:
    """What the app does after an upload: analyse, draw the cross-attention tab for the
    default word to PNG (as gr.Plot sends it), write the ground-truth panel."""
    view = analyser.analyse(scene.image, Decoding(), scene)
    word = default_word(view.analysis.words)
    fig = tab_figure(analyser, view, "cross", word)
    with io.BytesIO() as buf:
        fig.savefig(buf, format="png")
    truth_markdown(view, word)


def app_latency_s(quick: bool = False) -> dict:
    """Median seconds of caption + default maps for one 64 x 64 scene (2 warm-up runs)."""
    analyser = Analyser(load_pretrained("shapes-tiny", device="cpu"))
    scenes = [make_scene("test", i, analyser.p.scene_config) for i in range(4)]
    for scene in scenes[:2]:
        _caption_with_maps(analyser, scene)
    times, cpu = [], []
    for i in range(5 if quick else 20):
        t0, c0 = time.perf_counter(), time.process_time()
        _caption_with_maps(analyser, scenes[i % len(scenes)])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"app_latency_s": _entry(statistics.median(times), "s", 0.5) | {"lower_is_better": True},
            # CPU seconds (all threads): a check on the wall time when the machine is busy
            "app_latency_cpu_s": _entry(statistics.median(cpu), "s", None)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_rss_growth_mb(quick: bool = False) -> dict:
    """MB the server process grows over 200 UI requests (50 with quick), after 30 warm-up
    ones (RSS climbs ~80 MB over the first ~20 as caches and allocator pools fill).
    A request: load a new scene, analyse it, render the open tab, through gradio's queue
    and session state, as the page does."""
    from gradio_client import Client

    import app

    demo = app.build_app(seed=0, n_examples=1)
    _, url, _ = app.launch(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        seeds = iter(split_seeds("test", 1000, start=100))
        direction = SSMStack.of(demo.analyser.model)[0].direction_names[0]

        def request() -> None:
            client.predict(next(seeds), api_name="/from_seed")
            client.predict("greedy", 1.0, 0, 1.0, 32, 0, api_name="/analyse")
            client.predict(0, direction, 0, "ig", api_name="/render")  # layer, dir, step, method

        for _ in range(30):
            request()
        gc.collect()
        start = rss_mb()
        for _ in range(50 if quick else 200):
            request()
        gc.collect()
        growth = rss_mb() - start
    finally:
        demo.close()
    return {"app_rss_growth_mb": _entry(growth, "MB", 50.0) | {"lower_is_better": True}}


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for fn in (app_latency_s, app_rss_growth_mb):
        print(fn(quick))
