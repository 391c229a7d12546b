"""Give the C heap's free pages back to the OS after a big transient: a rescan's listing of
100,000 files, a manifest of 100,000 entries read. CPython frees the objects, but glibc keeps
the pages they were in, so the idle sidecar's RSS stayed at its start-up peak."""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to give back this way
        return None


_TRIM = _malloc_trim()


def trim() -> None:
    """A few ms at 100,000 entries; a no-op where the C library has no malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)
