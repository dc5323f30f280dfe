"""The muxing worker thread: with a batch interval it wakes a few times a second,
not once per frame, and still handles every item in order."""

from __future__ import annotations

import itertools
import time

from media.muxing import Worker


def test_a_batching_worker_wakes_per_batch_and_keeps_order() -> None:
    handled: list[tuple[int, float]] = []
    worker: Worker[int] = Worker("test", lambda i: handled.append((i, time.monotonic())), 1000, 0.1)
    for i in range(100):  # ~200 frames/s for half a second
        worker.submit(i)
        time.sleep(0.005)
    worker.join()
    assert [i for i, _ in handled] == list(range(100))
    wakeups = 1 + sum(1 for a, b in itertools.pairwise(handled) if b[1] - a[1] > 0.02)
    assert wakeups <= 10, f"{wakeups} wake-ups for 100 items"


def test_an_unbatched_worker_handles_each_item_as_it_comes() -> None:
    handled: list[int] = []
    worker: Worker[int] = Worker("test", handled.append, 1000)
    worker.submit(1)
    deadline = time.monotonic() + 2
    while not handled and time.monotonic() < deadline:
        time.sleep(0.001)
    assert handled == [1]
    worker.join()
