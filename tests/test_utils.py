"""Shared-memory flags, result buffer and counters the processes talk through; the moving average."""

import time

from utils import Counters, GameResults, StopFlag, moving_average


def test_test_results_ring_buffer_keeps_order_and_drops_only_what_overflowed():
    results = GameResults(capacity=4)
    for i in range(3):
        results.put(float(i), 10 + i)
    new, seen = results.since(0)
    assert new == [(0.0, 10), (1.0, 11), (2.0, 12)] and seen == 3
    for i in range(3, 9):
        results.put(float(i), 10 + i)
    new, seen = results.since(seen)
    assert [r for r, _ in new] == [5.0, 6.0, 7.0, 8.0] and seen == 9
    assert results.since(seen) == ([], 9)


def test_stop_flag_wait_returns_on_timeout_and_when_set():
    flag = StopFlag()
    start = time.monotonic()
    assert flag.wait(0.2) is False and time.monotonic() - start >= 0.2
    flag.set()
    assert flag.wait(10) is True and flag.is_set()


def test_counters_sum_worker_slots_and_the_resumed_base():
    counters = Counters(workers=2, frames=100, updates=5)
    counters.add(0, 40, updates=1)
    counters.add(1, 20, dropped=1)
    assert (counters.frames, counters.updates, counters.dropped) == (160, 6, 1)
    assert counters.table.is_shared()


def test_moving_average():
    assert moving_average([1, 3, 5, 7], 2) == [1, 2, 4, 6]
