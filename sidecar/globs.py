"""Glob patterns over paths relative to the run dir: one semantics for save, ignore and restore.

- Paths and patterns use `/`; a pattern is relative to the run dir. `./` in front is dropped.
- `*` matches any characters but `/`; `?` one character but `/`; `[abc]`, `[a-z]`, `[!a]`
  a class (never `/`). An unclosed `[` is literal. There is no escape character.
- `**` as a whole segment matches zero or more directories: `**/x.pt`, `ckpt/**/shard-*`.
  Inside a segment (`a**`) it is the same as `*`.
- Wildcards match names starting with a dot (PyTorch DCP's `.metadata` must not be missed).
- A pattern that names a directory matches every file below it: `ckpt/step-*` saves whole
  checkpoint directories, as a `.gitignore` line does.
- Absolute patterns and `..` segments would reach outside the run dir: `GlobError`.
"""

from __future__ import annotations

import dataclasses
import functools
import re


class GlobError(ValueError):
    """A pattern that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Glob:
    pattern: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", normalize(self.pattern))
        _compile(self.pattern)  # fail at construction, never at match time

    def matches(self, relpath: str) -> bool:
        """True when the file at `relpath` (relative, `/`-separated) is named by the pattern."""
        return _compile(self.pattern).fullmatch(relpath) is not None

    def __str__(self) -> str:
        return self.pattern


@dataclasses.dataclass(frozen=True)
class Literal:
    """A stored name taken as it is (`restore('weights[1].pt')`, as W&B's `restore(name)`): that
    file, or every file below it when it names a directory. Used where a `Glob` is."""

    pattern: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", normalize(self.pattern))

    def matches(self, relpath: str) -> bool:
        return relpath == self.pattern or relpath.startswith(self.pattern + "/")

    def __str__(self) -> str:
        return self.pattern


def normalize(pattern: str) -> str:
    """The pattern without `./` and duplicate slashes; `GlobError` if it climbs out."""
    if not pattern or not pattern.strip():
        raise GlobError("empty pattern")
    if pattern != pattern.strip():
        raise GlobError("leading or trailing whitespace")
    if "\x00" in pattern:
        raise GlobError("NUL character")
    if pattern.startswith("/"):
        raise GlobError("absolute path; patterns are relative to the run dir")
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise GlobError("'..' would reach outside the run dir")
    if not segments:
        raise GlobError("names the run dir itself; use '**' for every file")
    return "/".join(segments)


def escape(path: str) -> str:
    """A pattern that names `path` literally (`weights[1].pt` → `weights[[]1].pt`), as
    `glob.escape` does: each wildcard becomes a class of itself."""
    return re.sub(r"([*?[])", r"[\1]", path)


def matches_any(globs: tuple[Glob, ...] | list[Glob], relpath: str) -> bool:
    """One regex for a tuple of globs (the run's ignore globs, markers, temp names: asked for
    each file of a rescan), compiled once per tuple."""
    if type(globs) is not tuple:
        return any(g.matches(relpath) for g in globs)
    cached = _unions.get(id(globs))
    if cached is None or cached[0] is not globs:  # the tuple is held there: its id is not reused
        if len(_unions) >= 256:
            _unions.clear()
        cached = _unions[id(globs)] = (globs, _union(globs))
    union = cached[1]
    return union.fullmatch(relpath) is not None if union else any(g.matches(relpath) for g in globs)


_unions: dict[int, tuple[tuple, re.Pattern[str] | None]] = {}


def _union(globs: tuple) -> re.Pattern[str] | None:
    """Globs as one alternation (None when a `Literal` is among them, or none is given)."""
    if not globs or any(type(g) is not Glob for g in globs):
        return None
    return re.compile("|".join(f"(?:{_compile(g.pattern).pattern})" for g in globs), re.DOTALL)


def sqlite_superset(pattern: str) -> str:
    """A sqlite GLOB matching every path the pattern matches, and maybe more: a first cut made
    in sqlite over many names, for `Glob.matches` to decide. sqlite's `*` and `?` also match
    `/`, so a `**` segment becomes `*` (with the `/` after it: `a/**/b` names `a/b`), a class
    `?` (one character either way: their syntaxes differ), a literal `[` `[[]`; a `*` at the
    end stands for what is below a directory the pattern names. Both are case-sensitive."""
    out: list[str] = []
    for segment in pattern.split("/"):
        if segment == "**":
            out.append("*")  # no `/` after it: zero directories too
            continue
        i, n = 0, len(segment)
        while i < n:
            c = segment[i]
            end = _class_end(segment, i) if c == "[" else -1
            out.append("?" if end >= 0 else "[[]" if c == "[" else c)
            i = end + 1 if end >= 0 else i + 1
        out.append("/")
    return "".join(out).rstrip("/") + "*"


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    segments = pattern.split("/")
    parts: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment(segment) + ("" if last else "/"))
    # `(?:/.*)?`: a pattern that names a directory names everything below it.
    try:
        return re.compile("".join(parts) + "(?:/.*)?", re.DOTALL)
    except re.error as err:  # e.g. a reversed range `[z-a]`
        raise GlobError(f"bad character class: {err.msg}") from None


def _segment(segment: str) -> str:
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        if c == "*":
            while i < n and segment[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            end = _class_end(segment, i)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = segment[i + 1 : end]
                negate = body[:1] == "!"
                if negate:
                    body = body[1:]
                # Escape what re treats specially in a set (and may one day treat as set ops).
                body = "".join("\\" + ch if ch in "\\^[&~|" else ch for ch in body).replace("--", "-\\-")
                out.append(f"(?!/)[^{body}]" if negate else f"(?!/)[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _class_end(segment: str, start: int) -> int:
    """Index of the `]` closing the class that opens at `start`, or -1 (then `[` is literal)."""
    j = start + 1
    if j < len(segment) and segment[j] == "!":
        j += 1
    if j < len(segment) and segment[j] == "]":  # `[]]` and `[!]]`: a literal `]` first
        j += 1
    end = segment.find("]", j)
    return end
