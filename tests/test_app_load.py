"""Load on loopback: 16 concurrent gradio_client clients x 4 captions each against one
launched app; every request succeeds with the right caption and none takes over 10 s."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from apputil import launched  # noqa: E402

from ssm_bridge import load_pretrained  # noqa: E402
from ssm_bridge.data import make_scene  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]
CLIENTS, REQUESTS, MAX_SECONDS = 16, 4, 10.0
GIVE_UP_S = 120  # a stuck request fails the test instead of hanging it


@pytest.fixture(scope="module")
def server():
    with launched(seed=0, n_examples=1) as url:
        yield url


def test_sixteen_clients_four_requests_each(server, tmp_path):
    p = load_pretrained("shapes-tiny")
    scenes = [make_scene("test", i, p.scene_config) for i in range(4)]
    files = []
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(tmp_path / f"s{i}.png")
        files.append(str(tmp_path / f"s{i}.png"))
    expected = p.caption([s.image for s in scenes])  # greedy: the app must agree exactly
    start = threading.Barrier(CLIENTS, timeout=GIVE_UP_S)

    def one_client(c: int) -> list[tuple[int, str, float]]:
        try:
            client = gradio_client.Client(server, verbose=False)
        finally:
            start.wait()  # all clients fire together (a failed one breaks the barrier)
        out = []
        for r in range(REQUESTS):
            k = (c + r) % len(files)
            t0 = time.perf_counter()
            job = client.submit(gradio_client.handle_file(files[k]), api_name="/caption")
            text = job.result(timeout=GIVE_UP_S)
            out.append((k, text, time.perf_counter() - t0))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for rs in pool.map(one_client, range(CLIENTS)) for r in rs]
    assert len(results) == CLIENTS * REQUESTS
    assert all(text == expected[k] for k, text, _ in results)
    times = sorted(dt for *_, dt in results)
    slowest = times[-1]
    print(f"{len(times)} requests: median {times[len(times) // 2]:.2f} s, max {slowest:.2f} s")
    assert slowest < MAX_SECONDS, f"slowest request took {slowest:.1f} s"
