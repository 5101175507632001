"""Batched /caption (ssm_bridge/app/batching.py): a caption computed in a batch equals the
one a lone request gets, whatever shares its batch; settings never mix in one generate();
a bad request fails alone. Then the same through a launched app with 8 concurrent clients."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from ssm_bridge import load_pretrained
from ssm_bridge.app import batching
from ssm_bridge.app.batching import CaptionBatcher, caption_batch
from ssm_bridge.app.support import Analyser, Decoding, UploadError
from ssm_bridge.data import make_scene

pytestmark = [pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]
N_SCENES = 16
GATHER_S = 0.5  # long enough that threads started together meet in one batch


@pytest.fixture(scope="module")
def analyser(one_thread):
    return Analyser(load_pretrained("shapes-tiny"), fit_ood=False)


@pytest.fixture(scope="module")
def scenes(analyser):
    return [make_scene("test", i, analyser.p.scene_config) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def alone(analyser, scenes):
    """Each scene's greedy caption, one request at a time (Analyser.caption, no batch)."""
    return [analyser.caption(s.image, Decoding()) for s in scenes]


def together(batcher: CaptionBatcher, jobs: list[tuple]) -> list:
    """batcher.caption(*job) of every job from its own thread, all started together:
    each caption, or the exception its call raised."""
    start = threading.Barrier(len(jobs), timeout=60)

    def call(job):
        start.wait()
        try:
            return batcher.caption(*job)
        except Exception as e:  # the test compares it
            return e

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(call, jobs))


def test_a_greedy_batch_writes_the_captions_of_lone_requests(analyser, scenes, alone):
    assert len({len(c.split()) for c in alone}) > 1  # rows end (EOS, padding) at different steps
    kw = Decoding().generate_kwargs(analyser.max_seq_length)
    assert caption_batch(analyser, [s.image for s in scenes], kw) == alone
    short = Decoding(max_length=5).generate_kwargs(analyser.max_seq_length)
    assert caption_batch(analyser, [s.image for s in scenes[:4]], short) == \
        [analyser.caption(s.image, Decoding(max_length=5)) for s in scenes[:4]]


def test_concurrent_callers_share_batches_and_get_their_own_captions(analyser, scenes, alone):
    batcher = CaptionBatcher(analyser, max_batch=8, gather_s=GATHER_S)
    got = together(batcher, [(s.image, Decoding()) for s in scenes])
    assert got == alone
    assert sum(batcher.batch_sizes) == N_SCENES and max(batcher.batch_sizes) > 1
    assert max(batcher.batch_sizes) <= 8


def test_a_mixed_batch_gives_each_request_its_own_settings(analyser, scenes, alone):
    hot = Decoding("sampling", temperature=2.0, seed=7)
    jobs = [(scenes[0].image, Decoding()), (scenes[1].image, Decoding(max_length=4)),
            (scenes[2].image, hot), (scenes[3].image, Decoding()),
            (scenes[2].image, Decoding("sampling", temperature=2.0, seed=8)),
            (scenes[4].image, Decoding(max_length=4))]
    batcher = CaptionBatcher(analyser, gather_s=GATHER_S)
    got = together(batcher, jobs)
    assert got == [analyser.caption(*job) for job in jobs]  # each as a lone request
    assert got[0] == alone[0] and len(got[1].split()) <= 3  # BOS + 3 tokens at most
    # greedy requests grouped by max_length; sampling ones ran alone, outside the batcher
    assert sorted(batcher.batch_sizes) == [2, 2]


def test_bad_settings_fail_in_the_callers_thread_and_batch_mates_are_unharmed(
        analyser, scenes, alone):
    batcher = CaptionBatcher(analyser, gather_s=GATHER_S)
    got = together(batcher, [(scenes[0].image, Decoding()),
                             (scenes[1].image, Decoding(max_length=1)),
                             (scenes[2].image, Decoding())])
    assert got[0] == alone[0] and got[2] == alone[2]
    assert isinstance(got[1], UploadError) and "max length" in str(got[1])
    assert list(batcher.batch_sizes) == [2]  # the bad one was never queued


def test_a_failing_batch_fails_only_its_own_requests(analyser, scenes, alone, monkeypatch):
    real = batching.caption_batch

    def flaky(an, pixels, kwargs):
        if kwargs["max_length"] == 6:
            raise RuntimeError("model broke")
        return real(an, pixels, kwargs)

    monkeypatch.setattr(batching, "caption_batch", flaky)
    batcher = CaptionBatcher(analyser, gather_s=GATHER_S)
    got = together(batcher, [(scenes[0].image, Decoding()),
                             (scenes[1].image, Decoding(max_length=6)),
                             (scenes[2].image, Decoding())])
    assert got[0] == alone[0] and got[2] == alone[2]
    assert isinstance(got[1], RuntimeError)


def test_an_idle_worker_ends_and_the_next_request_starts_another(analyser, scenes, alone):
    batcher = CaptionBatcher(analyser, idle_s=0.05)
    assert batcher.caption(scenes[0].image, Decoding()) == alone[0]
    worker = batcher._worker
    worker.join(timeout=10)
    assert not worker.is_alive() and batcher._worker is None
    assert batcher.caption(scenes[1].image, Decoding()) == alone[1]


def test_eight_concurrent_clients_of_the_launched_app(scenes, alone, tmp_path):
    """Through gradio's queue: 8 clients at once, one sending a broken file; it alone gets
    the one-line error, the others their captions."""
    gradio_client = pytest.importorskip("gradio_client")
    from apputil import launched

    files = []
    for i, scene in enumerate(scenes[:7]):
        Image.fromarray(scene.image).save(tmp_path / f"s{i}.png")
        files.append(str(tmp_path / f"s{i}.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    files.insert(3, str(tmp_path / "broken.png"))
    with launched(seed=0, n_examples=1) as url:
        clients = [gradio_client.Client(url, verbose=False) for _ in files]
        start = threading.Barrier(len(files), timeout=60)

        def call(k: int):
            start.wait()
            try:
                return clients[k].predict(gradio_client.handle_file(files[k]),
                                          api_name="/caption")
            except gradio_client.exceptions.AppError as e:
                return e

        with ThreadPoolExecutor(len(files)) as pool:
            got = list(pool.map(call, range(len(files))))
    assert [*got[:3], *got[4:]] == alone[:7]
    message = str(got[3])
    assert "broken.png is not an image" in message and len(message.splitlines()) == 1
