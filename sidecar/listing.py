"""A commit's entries as a sorted stream, in memory bounded by one chunk and the delta chain
(issue 18: `ls` and restore of 1,000,000 files without loading the whole listing).

A format-2 commit (records.py) is a base, stored as sorted chunks (chunks.py), plus the deltas
since it, each small (at most max(base/4, 1,000) entries for the whole chain). `Listing` holds
the record's fields, its checkpoint units and the chain folded into one overlay (name → entry,
or None for a removal); `entries()` reads the base one chunk at a time and merges the overlay
in, so the caller sees the commit's entries in name order, each once.

A format-1 manifest is one JSON document: it is parsed whole (`whole`), as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

from .errors import StoreError
from .entries import FileEntry, Manifest


@dataclasses.dataclass(frozen=True)
class Listing:
    meta: Manifest
    """The commit's fields and checkpoint units; its `files` is empty (the entries stream)."""
    _base: Callable[[], Iterable[FileEntry]]
    _overlay: dict[str, FileEntry | None]
    _unreadable: Callable[[Exception], StoreError]

    @property
    def seq(self) -> int:
        return self.meta.seq

    def entries(self) -> Iterator[FileEntry]:
        """The commit's entries in name order; a damaged chunk raises StoreError when reached
        (the entries before it have been yielded)."""
        try:
            yield from merged(self._base(), self._overlay)
        except (ValueError, KeyError, TypeError) as err:
            raise self._unreadable(err) from None

    def manifest(self) -> Manifest:
        """The whole commit in memory (the writer and gc need its mapping)."""
        return dataclasses.replace(self.meta, files={e.name: e for e in self.entries()})


def whole(m: Manifest) -> Listing:
    """A manifest already in memory (format 1) as a listing."""
    files = m.files
    return Listing(dataclasses.replace(m, files={}), lambda: (files[n] for n in sorted(files)), {},
                   lambda err: StoreError(str(err)))


def merged(base: Iterable[FileEntry], overlay: dict[str, FileEntry | None]) -> Iterator[FileEntry]:
    """`base` (sorted by name, each name once) with `overlay` applied: its entries replace or
    join the base's, its Nones remove them; sorted, each name once. ValueError if `base` is not
    sorted (a damaged chunk: the merge would silently misplace entries)."""
    adds = sorted(((n, e) for n, e in overlay.items() if e is not None), key=lambda ne: ne[0])
    i, last = 0, None
    for entry in base:
        if last is not None and entry.name <= last:
            raise ValueError(f"base listing is not sorted at {entry.name!r}")
        last = entry.name
        while i < len(adds) and adds[i][0] < entry.name:
            yield adds[i][1]
            i += 1
        if entry.name in overlay:  # changed (its new entry comes from `adds`) or removed
            if i < len(adds) and adds[i][0] == entry.name:
                yield adds[i][1]
                i += 1
            continue
        yield entry
    for _, entry in adds[i:]:
        yield entry
