"""Concurrent /caption requests captioned together: one `model.generate` per batch.

    batcher = batcher_of(analyser)              # one queue and worker thread per analyser
    batcher.caption(pixels, Decoding())         # from any thread: 'a small red circle ...'

Why: one greedy caption of a 64 x 64 scene costs 15-40 ms of model time on a busy 2-core
CPU, a batch of 16 ~150 ms (~10 ms each): the encoder and every decoder step are one
matmul over the batch instead of 16 small ones. Under load the app's event threads hand their images
to one worker thread; while the model runs a batch the next requests queue up, and the
worker takes all of them (up to `max_batch`) as the next batch. A lone request waits at
most `gather_s` for company, so a quiet server answers about as fast as without batching.

Exactness: requests are grouped by their generate() settings, so a batch shares one
max_length. Greedy rows of a batch do not interact (each row attends to its own image and
text; a finished row is padded with <pad>, which `decode` drops), so each caption is the
one a lone request gets. (A batched matmul may round the last bits differently, which
could only flip a near-tie between two words: tests/test_app_batching.py checks 16 scenes
of different caption lengths, and benchmarks/bench_app.py every caption it is served.)
Sampling is not batched: generate() draws every row from one seeded generator, so a
request's sample would depend on its batch-mates; a sampling request runs alone, as
`Analyser.caption`, and equals a lone request with its seed.
Errors: bad input raises in the caller's thread before it is queued (read_upload, prepare,
Decoding.generate_kwargs), so it never reaches a batch; a failing batch raises its error in
each of its own requests only.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from .support import Analyser, Decoding

MAX_BATCH = 32  # ~10 ms per caption from 16 up on a 2-core CPU; larger only adds latency
GATHER_S = 0.003  # how long a request waits for others to join its batch
# /caption events gradio runs at once (their own concurrency_id): each waits in a thread
# for its batch, so a full batch needs MAX_BATCH of them; the page's events keep theirs
API_CONCURRENCY = MAX_BATCH
IDLE_S = 30.0  # an idle worker thread ends (the next request starts another)


@dataclass
class Request:
    """One caption to write: the model input (S, S, 3) uint8, its generate() settings and
    the future its caller waits on."""

    pixels: np.ndarray
    kwargs: dict
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Requests with equal keys may share a batch (same generate() settings)."""
        return tuple(sorted(self.kwargs.items()))


def caption_batch(analyser: Analyser, pixels: list[np.ndarray], kwargs: dict) -> list[str]:
    """Greedy captions of B images (each (S, S, 3) uint8) with one generate() over the
    (B, 3, S, S) batch, under the analyser's lock (generate switches the shared model to
    eval mode and back)."""
    images = torch.stack([analyser.p.transform(p) for p in pixels]).to(analyser.device)
    with analyser.lock, torch.no_grad():
        ids = analyser.model.generate(images, **kwargs)  # (B, T), rows padded after EOS
    return [analyser.p.tokenizer.decode(row.tolist()) for row in ids]


def group(requests: list[Request]) -> list[list[Request]]:
    """Requests split by generate() settings, each group in arrival order."""
    groups: dict[tuple, list[Request]] = {}
    for r in requests:
        groups.setdefault(r.key, []).append(r)
    return list(groups.values())


class CaptionBatcher:
    """Greedy captions of concurrent callers, computed in batches by one daemon thread
    (started on demand, ended after idle_s without requests); sampling captions run in
    the caller's thread. It holds its analyser weakly, so that an app that is closed and
    dropped frees its model (callers hold the analyser while they wait)."""

    def __init__(self, analyser: Analyser, max_batch: int = MAX_BATCH,
                 gather_s: float = GATHER_S, idle_s: float = IDLE_S) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._analyser = weakref.ref(analyser)
        self.max_batch, self.gather_s, self.idle_s = max_batch, gather_s, idle_s
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()  # starting and ending the worker
        self.batch_sizes = collections.deque(maxlen=4096)  # latest batches (tests, benchmarks)

    def caption(self, pixels: np.ndarray, decoding: Decoding) -> str:
        """The caption of one model input (S, S, 3) uint8, exactly as Analyser.caption
        writes it. Bad settings raise UploadError here, before anything is queued."""
        analyser = self._analyser()
        kwargs = decoding.generate_kwargs(analyser.max_seq_length)
        if kwargs["temperature"] != 0:  # sampling: alone (module docstring)
            return analyser.caption(pixels, decoding)
        request = Request(pixels, kwargs)
        self._queue.put(request)  # before the worker check: see _first
        with self._worker_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, daemon=True,
                                                name="caption-batcher")
                self._worker.start()
        return request.future.result()

    def _serve(self) -> None:
        """The worker: take the waiting requests and caption them, until idle."""
        while (first := self._first()) is not None:
            self._run(self._gather(first))

    def _first(self) -> Request | None:
        """The next request; None (and the worker ends) after idle_s without one. The
        queue is checked again under the lock a caller takes after queueing, so a request
        queued as the worker gives up finds it still running or finds none and starts one."""
        try:
            return self._queue.get(timeout=self.idle_s)
        except queue.Empty:
            with self._worker_lock:
                if self._queue.empty():
                    self._worker = None
                    return None
            return self._queue.get()

    def _gather(self, first: Request) -> list[Request]:
        """`first` and the requests that arrive within gather_s (those queued while the
        last batch ran are there at once), at most max_batch."""
        taken = [first]
        deadline = time.monotonic() + self.gather_s
        while len(taken) < self.max_batch:
            try:
                taken.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return taken

    def _run(self, requests: list[Request]) -> None:
        """Caption each group of equal settings with one generate(); a group's failure
        goes to its own requests only."""
        analyser = self._analyser()  # alive: its callers hold it while they wait
        for batch in group(requests):
            self.batch_sizes.append(len(batch))
            try:
                texts = caption_batch(analyser, [r.pixels for r in batch], batch[0].kwargs)
            except BaseException as e:  # raised again in each waiting caller
                for r in batch:
                    r.future.set_exception(e)
                continue
            for r, text in zip(batch, texts):
                r.future.set_result(text)


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # analyser -> batcher
_BATCHERS_LOCK = threading.Lock()


def batcher_of(analyser: Analyser) -> CaptionBatcher:
    """The analyser's one batcher (made on first use, dropped with the analyser): every
    /caption request on one model must meet in one queue to share batches."""
    with _BATCHERS_LOCK:
        if analyser not in _BATCHERS:
            _BATCHERS[analyser] = CaptionBatcher(analyser)
        return _BATCHERS[analyser]
