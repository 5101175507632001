"""Benchmarks of the Gradio app (app.py), in the format of benchmarks/run.py.

    app_latency_s(quick)      caption + the default maps for one image on CPU, in-process
                              (what the app computes after an upload), median of 20
    app_rss_growth_mb(quick)  resident memory growth of a launched app over 200 UI requests
                              (load a scene, analyse it, draw the open tab) from gradio_client
    app_caption_throughput(quick)  /caption requests per second of a launched app under 32
                              concurrent gradio_client clients x 4 requests (16 x 2 with
                              quick), each caption checked against an unbatched one; adds
                              app_caption_p95_s, the 95th percentile latency
    app_rss_per_session_mb(quick)  server RSS growth per browser-like session (64 sessions,
                              16 with quick) that loads a scene and analyses it

Each returns {name: {"value": float, "unit": str, "target": float}} (app_latency_s adds
app_latency_cpu_s, its CPU time, without a target).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssm_bridge import load_pretrained  # noqa: E402
from ssm_bridge.app.support import (  # noqa: E402
    Analyser,
    Decoding,
    default_word,
    read_upload,
    tab_figure,
    truth_markdown,
)
from ssm_bridge.core.addressing import SSMStack  # noqa: E402
from ssm_bridge.data import make_scene, split_seeds  # noqa: E402


def _entry(value: float, unit: str, target: float | None) -> dict:
    return {"value": float(value), "unit": unit, "target": target}


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size of process `pid` (default: this one) in MB (Linux
    /proc, else psutil)."""
    statm = Path(f"/proc/{pid}/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    import psutil

    return psutil.Process(None if pid == "self" else int(pid)).memory_info().rss / 2**20


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
            # layer, direction, step, attribution method, cross-attention view
            client.predict(0, direction, 0, "ig", "mean", api_name="/render")

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


# ---------------------------------------------------------------- a served app
START_S = 300  # the served app's start (checkpoint, scan kernel) may take minutes cold


@contextlib.contextmanager
def _server_process():
    """`python app.py` on a free port in its own process (its RSS is the server's
    alone, not this process's clients'): yields (pid, url), then stops it."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--seed", "0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app.py did not answer within {START_S} s") from None
                time.sleep(0.5)
        yield proc.pid, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- many clients
# gradio_client makes a new httpx client per call, and each loads the CA bundle into a new
# SSL context (~40 ms of CPU): on a 2-core machine 32 such clients would measure
# themselves, not the server. One shared context (unused on plain-http loopback) costs ~4 ms.
_SSL = ssl.create_default_context()
GIVE_UP_S = 120  # a stuck request fails the benchmark instead of hanging it


def _client(url: str):
    """A gradio_client Client (its own session) that does not reload the CA bundle."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=_SSL)


def _scene_pngs(analyser: Analyser, folder: Path, n: int = 16) -> tuple[list[str], list[str]]:
    """n test scenes as PNG files, and the caption of each computed in this process one at
    a time (no batching): what /caption must answer."""
    from PIL import Image

    files, captions = [], []
    for i in range(n):
        path = folder / f"scene{i}.png"
        Image.fromarray(make_scene("test", i, analyser.p.scene_config).image).save(path)
        files.append(str(path))
        captions.append(analyser.caption(analyser.prepare(read_upload(path)), Decoding()))
    return files, captions


def _load(clients: list, files: list[str], requests: int) -> tuple[list, float]:
    """One thread per client (each its own session); they fire together and each sends
    `requests` /caption calls one after another (client c's r-th call sends file
    (c + r) % len(files)). Returns ([(file index, caption, seconds)], wall seconds)."""
    from gradio_client import handle_file

    start = threading.Barrier(len(clients) + 1, timeout=GIVE_UP_S)

    def run(c: int) -> list[tuple[int, str, float]]:
        start.wait()
        out = []
        for r in range(requests):
            k = (c + r) % len(files)
            t0 = time.perf_counter()
            job = clients[c].submit(handle_file(files[k]), api_name="/caption")
            out.append((k, job.result(timeout=GIVE_UP_S), time.perf_counter() - t0))
        return out

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(run, c) for c in range(len(clients))]
        start.wait()
        t0 = time.perf_counter()
        results = [r for f in futures for r in f.result()]
        wall = time.perf_counter() - t0
    return results, wall


def app_caption_throughput(quick: bool = False) -> dict:
    """/caption requests per second and their 95th percentile latency under 32 concurrent
    clients x 4 requests (16 x 2 with quick) on 16 test scenes, after one warm-up round.
    The server runs in its own process (`_server_process`), as it would serve clients on
    other machines: the clients' threads do not share its interpreter lock. Raises
    AssertionError if any caption differs from the unbatched in-process one."""
    clients, requests = (16, 2) if quick else (32, 4)
    load = os.getloadavg()[0]  # the machine's other work, for the note
    analyser = Analyser(load_pretrained("shapes-tiny", device="cpu"), fit_ood=False)
    with tempfile.TemporaryDirectory() as tmp, _server_process() as (_, url):
        files, expected = _scene_pngs(analyser, Path(tmp))
        # warm-up, untimed: threads, caches, allocator pools, and the OOD fit the server
        # starts with (it holds the model for seconds)
        made = [_client(url) for _ in range(clients)]
        _load(made, files, 1)
        results, wall = _load(made, files, requests)
    wrong = [(files[k], got, expected[k]) for k, got, _ in results if got != expected[k]]
    if wrong:
        raise AssertionError(f"{len(wrong)} of {len(results)} /caption answers differ from "
                             f"the unbatched caption, e.g. {wrong[0]}")
    times = sorted(dt for *_, dt in results)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    note = f"{clients} clients x {requests}; load average {load:.1f} before"
    return {"app_caption_throughput": _entry(len(results) / wall, "req/s", 20.0)
            | {"note": note},
            "app_caption_p95_s": _entry(p95, "s", 2.0) | {"lower_is_better": True,
                                                           "note": note}}


# ---------------------------------------------------------------- memory per session
def _browser_session(url: str, seed: int, direction: str) -> None:
    """What a visitor's first minute does, in a session of its own: load a test scene,
    analyse it, draw the open tab."""
    client = _client(url)
    client.predict(seed, api_name="/from_seed")
    client.predict("greedy", 1.0, 0, 1.0, 32, 0, api_name="/analyse")
    # layer, direction, step, attribution method, cross-attention view
    client.predict(0, direction, 0, "ig", "mean", api_name="/render")


def app_rss_per_session_mb(quick: bool = False) -> dict:
    """MB the served app grows per browser session kept: (RSS after - RSS before) / n over
    n = 64 sessions (16 with quick), each loading and analysing a different test scene;
    before: after 8 warm-up sessions (caches and allocator pools fill)."""
    n = 16 if quick else 64
    seeds = iter(split_seeds("test", 8 + n, start=200))
    direction = SSMStack.of(load_pretrained("shapes-tiny").model)[0].direction_names[0]
    with _server_process() as (pid, url):
        for _ in range(8):
            _browser_session(url, next(seeds), direction)
        before = rss_mb(pid)
        for _ in range(n):
            _browser_session(url, next(seeds), direction)
        growth = (rss_mb(pid) - before) / n
    return {"app_rss_per_session_mb": _entry(growth, "MB", 5.0) | {"lower_is_better": True,
                                                                    "note": f"{n} sessions"}}


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for fn in (app_latency_s, app_rss_growth_mb, app_caption_throughput,
               app_rss_per_session_mb):
        print(fn(quick))
