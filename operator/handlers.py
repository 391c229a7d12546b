"""Everything `runsync operator` runs: importing this module registers every kopf handler."""

from . import gcschedule, images, startup, stores, webhook  # noqa: F401 - imported for their handlers
