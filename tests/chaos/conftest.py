"""The chaos suite's knobs and its tally.

- `RUNSYNC_CHAOS=full` runs the full counts (`scripts/chaos`); otherwise a few trials of each
  scenario run with the rest of `.ci/run`.
- `RUNSYNC_CHAOS_SEED` (default below) seeds every trial: trial i of scenario s draws from
  `random.Random(f"{seed}:{s}:{i}")`, so a failure message's seed and trial replay it exactly;
  `RUNSYNC_CHAOS_TRIAL=i` runs only that trial.
- Every scenario records (trials, failures) in the tally; the session ends with the table, also
  written to `$RUNSYNC_CHAOS_REPORT` when set.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

FULL = os.environ.get("RUNSYNC_CHAOS") == "full"
SEED = int(os.environ.get("RUNSYNC_CHAOS_SEED", "20261125"))
ONLY = os.environ.get("RUNSYNC_CHAOS_TRIAL")

# scenario: (full count, short count)
COUNTS = {
    "preemption, one replica": (80, 4),
    "preemption, two replicas": (20, 2),
    "preemption, PyTorch DDP trainer": (27, 3),  # 3 kill styles x 3 moments (anytime, in a save, in a rotation)
    "sidecar kill -9": (20, 3),
    "S3 server stopped 5-60 s": (10, 1),
    "S3 faults at 5% (503/500/reset/latency)": (3, 1),
    "old and new pod overlap": (5, 1),
    "generated annotation sets": (10_000, 1_000),
}


def count(scenario: str) -> int:
    return COUNTS[scenario][0 if FULL else 1]


def trials(scenario: str) -> list[tuple[int, random.Random]]:
    """(index, its own seeded rng) for each trial of a scenario."""
    indices = [int(ONLY)] if ONLY is not None else range(count(scenario))
    return [(i, random.Random(f"{SEED}:{scenario}:{i}")) for i in indices]


def replay(scenario: str, i: int) -> str:
    return f"replay: RUNSYNC_CHAOS_SEED={SEED} RUNSYNC_CHAOS_TRIAL={i} (scenario {scenario!r})"


def run_trials(scenario: str, one) -> tuple[int, list[str]]:
    """`one(i, rng)` for every trial of a scenario; (trials run, failures with their replay line)."""
    chosen = trials(scenario)
    failures = []
    for i, rng in chosen:
        try:
            one(i, rng)
        except (AssertionError, TimeoutError) as err:
            failures.append(f"{replay(scenario, i)}: {err}")
    return len(chosen), failures


@dataclasses.dataclass
class Row:
    trials: int = 0
    failures: int = 0
    promise: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


class Tally:
    def __init__(self):
        self.rows: dict[str, Row] = {}

    def record(self, scenario: str, promise: str, trials: int, failures: int, note: str = "") -> None:
        row = self.rows.setdefault(scenario, Row(promise=promise))
        row.trials += trials
        row.failures += failures
        if note:
            row.notes.append(note)

    def table(self) -> str:
        lines = [f"chaos suite: seed {SEED}, {'full' if FULL else 'short'} counts",
                 "| scenario | trials | failures | promise checked |", "|---|---|---|---|"]
        for name, r in self.rows.items():
            lines.append(f"| {name} | {r.trials} | {r.failures} | {r.promise}"
                         + (f" ({'; '.join(r.notes)})" if r.notes else "") + " |")
        return "\n".join(lines)


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_terminal_summary(terminalreporter):
    if _TALLY.rows:
        terminalreporter.write_sep("=", "chaos tally")
        terminalreporter.write_line(_TALLY.table())
        report = os.environ.get("RUNSYNC_CHAOS_REPORT")
        if report:
            Path(report).write_text(_TALLY.table() + "\n")


def pytest_collection_modifyitems(items):
    for item in items:
        if "chaos" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.chaos)
