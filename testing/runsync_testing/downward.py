"""The downward-API annotations file as the kubelet writes it, for local pods and tests.

runsync only reads this file (`runsync.config.parse_annotations_file`); writing it is the
kubelet's job, so the writer lives here, beside the other stand-ins for a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def format_annotations_file(annotations: Mapping[str, str]) -> str:
    """Sorted `key="value"` lines, values quoted as Go's `strconv.Quote` does."""
    return "".join(f"{k}={go_quote(v)}\n" for k, v in sorted(annotations.items()))


def go_quote(value: str) -> str:
    """Go's `strconv.Quote`: printable characters as they are, the rest escaped."""
    out = ['"']
    for c in value:
        if c in _GO_ESCAPES:
            out.append(_GO_ESCAPES[c])
        elif c.isprintable() or c == " ":
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)
