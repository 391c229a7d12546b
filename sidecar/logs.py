"""JSON-lines logging: one object per line, with `time`, `level`, `msg` and the event's fields.

Code logs through `log` with `extra={"fields": {...}}`; `setup()` is called once by an entry
point (CLI verb, sidecar), never at import.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO

log = logging.getLogger("runsync")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup(stream: IO[str] = sys.stdout, level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("runsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
