"""The sidecar's timing knobs, in one documented place (the CLI and the SDK override a few)."""

from __future__ import annotations

import dataclasses

from . import contract


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sidecar's timing knobs (seconds)."""

    grace: float = contract.DEFAULT_GRACE_SECONDS
    """The pod's termination grace period: the final flush must end within it."""
    final_margin: float = 3.0
    """Kept free at the end of the grace period for the final manifest commit."""
    settle: float = 5.0
    """A file seen by a rescan (not by an event) counts as complete once it has been unchanged
    this long: events are the rule, the rescan only a safety net."""
    rescan: float = 300.0
    """Seconds between safety-net rescans of the whole run dir. Events are the rule (an inotify
    overflow rescans at once); a rescan of 100,000 files costs about 1.5 CPU-seconds."""
    commit_interval: float = 1.0
    """Durable files are batched into one manifest at most this often (unless a flush waits)."""
    reload: float = 2.0
    """How often the annotations file is checked for changes."""
    workers: int = 16
    """Files hashed and uploaded at once (each upload also runs parts in parallel); small files
    are decided by round trips, so many at once."""
    retry_base: float = 1.0
    retry_cap: float = 30.0
