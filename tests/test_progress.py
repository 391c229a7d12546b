"""progress.Meter: what the final flush asks before it cancels uploads that cannot finish."""

import tracemalloc

from runsync import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_seconds_left_follows_the_recent_rate():
    clock = Clock()
    meter = progress.Meter(clock)
    assert meter.seconds_left() == 0.0  # nothing in flight
    big, MiB = object(), 1024 * 1024
    meter.started(big, 1000 * MiB)
    assert meter.seconds_left() is None  # no progress yet: cannot tell
    meter.sent(big, 100 * MiB)
    clock.now += 0.5
    assert meter.seconds_left() is None  # too short a span to tell
    clock.now += 0.5
    meter.sent(big, 100 * MiB)  # 200 MiB in 1 s; 800 left
    assert meter.seconds_left() == 800 / 200
    trickle = progress.Meter(clock)
    trickle.started(big, 1000 * MiB)
    trickle.sent(big, 10)
    clock.now += 2
    trickle.sent(big, 10)
    assert trickle.seconds_left() is None  # a trickle is no rate: no early cancel on a guess
    clock.now += progress.WINDOW + 1
    assert meter.seconds_left() is None  # stalled: the deadline decides, not a guess
    meter.done(big)
    assert meter.seconds_left() == 0.0


def test_a_meter_no_one_asks_keeps_only_the_recent_window():
    """`runsync sync` never asks how long is left, and a sidecar only at its end: the meter still
    holds only the last WINDOW seconds of progress, not a sample of every file it ever sent."""
    clock = Clock()
    meter = progress.Meter(clock)
    token = object()
    meter.started(token, 10**12)
    tracemalloc.start()
    try:
        for _ in range(20):
            meter.sent(token, 4097)
        recent, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):  # 100,000 files, 1,000 a second
            clock.now += 0.001
            meter.sent(token, 4097)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - recent < 1024 * 1024, f"the meter grew by {(held - recent) // 1024} KiB over 100,000 sends"
    meter.done(token)
    assert meter.seconds_left() == 0.0
