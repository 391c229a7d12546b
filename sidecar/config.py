"""Annotations → one frozen `RunConfig`. The only parser: the webhook, the sidecar and the CLI use it.

Every bad value raises `ConfigError`, whose message names the annotation, the value and what
is allowed. Nothing here does I/O but `read_annotations_file`.

The downward-API file (`RUNSYNC_ANNOTATIONS`) holds one `key="value"` line per annotation, the
value quoted as Go's `strconv.Quote` does (`\\n`, `\\"`, `\\xNN`, `\\uNNNN`...), sorted by key.
"""

from __future__ import annotations

import dataclasses
import enum
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path


from . import contract, globs
from .errors import ConfigError


class Policy(str, enum.Enum):
    LIVE = "live"
    """Upload now and again on every change (W&B's default)."""
    NOW = "now"
    """Upload once, when the file is first complete."""
    END = "end"
    """Upload only when the run ends."""


_POLICY_WORDS = "live, now or end"

# Checkpoint writers that rename or write a known file last: PyTorch DCP (`.metadata`),
# Hugging Face Trainer (`trainer_state.json`), Orbax (`commit_success.txt`).
DEFAULT_COMPLETE_MARKERS = (".metadata", "trainer_state.json", "commit_success.txt")

# Names a writer gives a file (or a directory) until it is complete; a writer killed mid-write
# leaves one behind, closed as if finished. Generic: `*.tmp`, `*.tmp.*` (tempfile-style
# suffixes), `*.part`, `*.partial`, editor swap and backup files. PyTorch DCP writes
# `.metadata.tmp` (`__RANK.metadata.tmp` per rank) and renames it (filesystem.py); Lightning 1.x
# wrote `CKPT.part` (2.x stages in the system temp dir through fsspec); Hugging Face Trainer
# 4.35 staged `tmp-checkpoint-N/` and renamed it, and huggingface_hub downloads to
# `*.incomplete`.
DEFAULT_TEMP_NAMES = ("*.tmp", "*.tmp.*", "*.part", "*.partial", ".*.swp", "*~", "*.incomplete", "tmp-checkpoint-*")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_RULE = "expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_LABEL_RULE = "expected a Kubernetes name: 1-63 lowercase letters, digits or '-'"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_POLICY_SUFFIX = re.compile(r"(.*):\s*([A-Za-z]*)\s*", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class SaveRule:
    """One `save` entry: files matching `glob` are uploaded under `policy`.

    `base_path` (relative to the run dir) is stripped from the stored name, as in W&B:
    `{glob: out/ckpt/*.pt, base_path: out}` stores `out/ckpt/a.pt` as `ckpt/a.pt`.
    """

    glob: globs.Glob
    policy: Policy = Policy.LIVE
    base_path: str | None = None

    def stored_name(self, relpath: str) -> str:
        if self.base_path is None:
            return relpath
        return relpath[len(self.base_path) + 1 :]


@dataclasses.dataclass(frozen=True)
class RestoreSpec:
    """`auto`: restore the run's files if it has any; `none`; or only files matching `globs`."""

    mode: str = "auto"
    globs: tuple[globs.Glob, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunRef:
    """`PROJECT/RUN` of another run in the same namespace (`restore-from`)."""

    project: str
    run: str

    def __str__(self) -> str:
        return f"{self.project}/{self.run}"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A pod's runsync configuration; defaults are SPEC.md's."""

    save: tuple[SaveRule, ...] = ()
    ignore: tuple[globs.Glob, ...] = ()
    run: str | None = None
    """None: the operator derives it from the pod's owner."""
    project: str = contract.DEFAULT_PROJECT
    restore: RestoreSpec = RestoreSpec()
    restore_from: RunRef | None = None
    restore_strict: bool = False
    restore_replicas: str = "own"
    store: str = contract.DEFAULT_STORE
    run_dir: str = contract.DEFAULT_RUN_DIR
    volume: str | None = None
    """None: a new emptyDir."""
    containers: tuple[str, ...] | None = None
    """None: every app container."""
    complete_markers: tuple[globs.Glob, ...] = tuple(globs.Glob(m) for m in DEFAULT_COMPLETE_MARKERS)
    temp_names: tuple[globs.Glob, ...] = tuple(globs.Glob(m) for m in DEFAULT_TEMP_NAMES)
    """A file whose name, or a directory above it, matches one is not uploaded unless a save
    rule names it explicitly (plan.names_temp); empty: no such rule."""
    replica: str | None = None
    """None: derived from the pod's owner (the operator) or `RUNSYNC_REPLICA`."""


# --------------------------------------------------------------------------- the entry point

def parse(annotations: Mapping[str, str]) -> RunConfig:
    """The pod's annotations (all of them; foreign keys are ignored) → `RunConfig`."""
    fields: dict[str, object] = {}
    for key, value in annotations.items():
        if not isinstance(key, str) or not key.startswith(contract.PREFIX):
            continue
        if not isinstance(value, str):
            raise ConfigError(key, f"value {value!r} is not a string", "annotation values are strings")
        reader = _READERS.get(key)
        if reader is None:
            if key in (contract.STATUS, contract.IMAGES):  # the operator's, not configuration
                continue
            import difflib

            close = difflib.get_close_matches(key, contract.ANNOTATIONS, n=1)
            hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(contract.ANNOTATIONS)
            raise ConfigError(key, "unknown runsync annotation", hint)
        field, parsed = reader(key, value)
        fields[field] = parsed
    return RunConfig(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------- one small reader per annotation

def parse_save(value: str, annotation: str = contract.SAVE) -> tuple[SaveRule, ...]:
    """`GLOB[:POLICY]` entries separated by commas or newlines, or a YAML block list.

    A YAML list starts with `- ` on its first non-blank line; its items are `GLOB[:POLICY]`
    strings or mappings `{glob, policy, base_path}`. A glob that contains a comma, or a colon
    followed only by letters, must use the YAML form.
    """
    if _is_yaml_list(value):
        return _parse_save_yaml(value, annotation)
    return tuple(_save_entry(entry, annotation) for entry in _split_list(value))


def parse_globs(value: str, annotation: str) -> tuple[globs.Glob, ...]:
    """Comma- or newline-separated globs (`ignore`, `complete-marker`, restore globs)."""
    return tuple(_glob(entry, annotation, value) for entry in _split_list(value))


def _save_entry(entry: str, annotation: str) -> SaveRule:
    match = _POLICY_SUFFIX.fullmatch(entry)
    if match is None:
        return SaveRule(_glob(entry, annotation, entry))
    pattern, word = match.group(1).strip(), match.group(2)
    return SaveRule(_glob(pattern, annotation, entry), _policy(word, annotation, entry))


def _parse_save_yaml(value: str, annotation: str) -> tuple[SaveRule, ...]:
    import yaml  # only here: restore-init and the sidecar start without it (~14 ms of CPU)

    try:
        items = yaml.safe_load(value)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(annotation, f"invalid YAML{at}: {getattr(err, 'problem', err)}",
                          "expected a list of GLOB[:POLICY] or {glob, policy, base_path}") from None
    if not isinstance(items, list):
        raise ConfigError(annotation, f"YAML value {value!r} is not a list",
                          "expected a list of GLOB[:POLICY] or {glob, policy, base_path}")
    rules = []
    for item in items:
        if isinstance(item, str):
            rules.append(_save_entry(item, annotation))
        elif isinstance(item, dict):
            rules.append(_save_mapping(item, annotation))
        else:
            raise ConfigError(annotation, f"list item {item!r} is neither a string nor a mapping",
                              "expected GLOB[:POLICY] or {glob, policy, base_path}")
    return tuple(rules)


def _save_mapping(item: dict, annotation: str) -> SaveRule:
    unknown = sorted(str(k) for k in item if k not in ("glob", "policy", "base_path"))
    if unknown:
        raise ConfigError(annotation, f"unknown key {unknown[0]!r} in {item!r}",
                          "expected the keys glob, policy and base_path")
    raw_glob = item.get("glob")
    if not isinstance(raw_glob, str):
        raise ConfigError(annotation, f"'glob' is missing or not a string in {item!r}",
                          "expected {glob: PATTERN, policy: live|now|end, base_path: DIR}")
    pattern = _glob(raw_glob, annotation, raw_glob)
    raw_policy = item.get("policy", Policy.LIVE.value)
    if not isinstance(raw_policy, str):
        raise ConfigError(annotation, f"policy {raw_policy!r} is not a word", f"expected {_POLICY_WORDS}")
    policy = _policy(raw_policy, annotation, raw_policy)
    base = item.get("base_path")
    if base is None:
        return SaveRule(pattern, policy)
    if not isinstance(base, str):
        raise ConfigError(annotation, f"base_path {base!r} is not a string",
                          "expected a directory relative to the run dir")
    try:
        base_norm = globs.normalize(base)
    except globs.GlobError as err:
        raise ConfigError(annotation, f"base_path {base!r}: {err}",
                          "expected a directory relative to the run dir") from None
    if any(c in base_norm for c in "*?["):
        raise ConfigError(annotation, f"base_path {base!r} has wildcards", "expected a plain directory")
    if not pattern.pattern.startswith(base_norm + "/"):
        raise ConfigError(annotation, f"glob {raw_glob!r} is not below base_path {base!r}",
                          "expected base_path to be a leading directory of the glob")
    return SaveRule(pattern, policy, base_norm)


def _policy(word: str, annotation: str, entry: str) -> Policy:
    try:
        return Policy(word)
    except ValueError:
        raise ConfigError(annotation, f"unknown policy {_q(word)} in {_q(entry)}",
                          f"expected {_POLICY_WORDS}") from None


def _glob(pattern: str, annotation: str, entry: str) -> globs.Glob:
    try:
        return globs.Glob(pattern)
    except globs.GlobError as err:
        where = "" if pattern == entry else f" in {_q(entry)}"
        raise ConfigError(annotation, f"bad glob {_q(pattern)}{where}: {err}",
                          "expected a pattern relative to the run dir (*, ?, [..], **)") from None


def _read_save(key: str, value: str):
    return "save", parse_save(value, key)


def _read_ignore(key: str, value: str):
    return "ignore", parse_globs(value, key)


def _name_globs(key: str, value: str, what: str, expected: str, noun: str = "") -> tuple[globs.Glob, ...]:
    """Comma-separated file-name globs (no `/`), at least one."""
    names = parse_globs(value, key)
    for name in names:
        if "/" in name.pattern:
            raise ConfigError(key, f"{what} {_q(name.pattern)} has a '/'", f"expected {expected}")
    if not names:
        raise ConfigError(key, f"no {noun or what} in {_q(value)}", f"expected {expected}")
    return names


def _read_markers(key: str, value: str):
    return "complete_markers", _name_globs(key, value, "marker", "file-name globs such as .metadata or *.done")


def _read_temp_names(key: str, value: str):
    if value.strip() == "none":
        return "temp_names", ()
    return "temp_names", _name_globs(key, value, "temp name",
                                     "file or directory name globs such as *.tmp, or none", noun="name")


def _read_name(field: str, limit: int = 128):
    def read(key: str, value: str):
        if not _NAME.fullmatch(value) or len(value) > limit:
            raise ConfigError(key, f"invalid name {_q(value)}", _NAME_RULE.replace("128", str(limit)))
        return field, value
    return read


def _read_restore(key: str, value: str):
    word = value.strip()
    if word in ("auto", "none"):
        return "restore", RestoreSpec(word)
    patterns = parse_globs(value, key)
    if not patterns:
        raise ConfigError(key, f"empty value {_q(value)}", "expected auto, none or comma-separated globs")
    return "restore", RestoreSpec("globs", patterns)


def _read_restore_from(key: str, value: str):
    parts = value.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise ConfigError(key, f"invalid run {_q(value)}",
                          "expected PROJECT/RUN of a run in the pod's own namespace")
    return "restore_from", RunRef(*parts)


def _read_bool(key: str, value: str):
    if value not in ("true", "false"):
        raise ConfigError(key, f"invalid value {_q(value)}", "expected true or false")
    return "restore_strict", value == "true"


def _read_replicas(key: str, value: str):
    if value not in ("own", "all"):
        raise ConfigError(key, f"invalid value {_q(value)}", "expected own or all")
    return "restore_replicas", value


def _read_store(key: str, value: str):
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ConfigError(key, f"invalid Store name {_q(value)}",
                          "expected the name of a Store in the pod's namespace (lowercase, digits, '-', '.')")
    return "store", value


def _read_run_dir(key: str, value: str):
    ok = (value.startswith("/") and value != "/" and ":" not in value and "\x00" not in value
          and posixpath.normpath(value) == value.rstrip("/") and value.rstrip("/") != "")
    if not ok:
        raise ConfigError(key, f"invalid mount path {_q(value)}",
                          "expected an absolute, normalized path other than / (no '..' or ':')")
    return "run_dir", value.rstrip("/")


def _read_volume(key: str, value: str):
    if not _DNS_LABEL.fullmatch(value):
        raise ConfigError(key, f"invalid volume name {_q(value)}",
                          f"{_DNS_LABEL_RULE}, naming a volume of the pod")
    return "volume", value


def _read_containers(key: str, value: str):
    names = tuple(_split_list(value))
    bad = [n for n in names if not _DNS_LABEL.fullmatch(n)]
    if bad or not names:
        raise ConfigError(key, f"invalid container name {_q(bad[0] if bad else value)}",
                          f"{_DNS_LABEL_RULE}, comma-separated")
    return "containers", names


_READERS = {
    contract.SAVE: _read_save,
    contract.IGNORE: _read_ignore,
    contract.RUN: _read_name("run"),
    contract.PROJECT: _read_name("project"),
    contract.REPLICA: _read_name("replica", 63),
    contract.RESTORE: _read_restore,
    contract.RESTORE_FROM: _read_restore_from,
    contract.RESTORE_STRICT: _read_bool,
    contract.RESTORE_REPLICAS: _read_replicas,
    contract.STORE: _read_store,
    contract.RUN_DIR: _read_run_dir,
    contract.VOLUME: _read_volume,
    contract.CONTAINERS: _read_containers,
    contract.COMPLETE_MARKER: _read_markers,
    contract.TEMP_NAMES: _read_temp_names,
}


def _split_list(value: str) -> list[str]:
    return [e.strip() for e in re.split(r"[,\n]", value) if e.strip()]


def _is_yaml_list(value: str) -> bool:
    first = next((line.strip() for line in value.splitlines() if line.strip()), "")
    return first == "-" or first.startswith("- ")


def _q(value: str) -> str:
    """A value quoted for a message, cut short so a huge annotation cannot flood a log."""
    text = value if len(value) <= 200 else value[:200] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ----------------------------------------------------- the downward-API annotations file

def read_annotations_file(path: str | Path) -> dict[str, str]:
    return parse_annotations_file(Path(path).read_text(encoding="utf-8", errors="surrogateescape"))


def parse_annotations_file(text: str) -> dict[str, str]:
    """`key="value"` lines, values quoted as Go's `strconv.Quote` does → a dict."""
    result: dict[str, str] = {}
    # Only "\n" ends a line: values are quoted, and str.splitlines() would also split on
    # characters such as U+001E or U+2028 that may appear unescaped in a value.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        if not sep or not quoted.startswith('"'):
            raise ConfigError(contract.ENV_ANNOTATIONS, f"line {number} is not key=\"value\": {_q(line)}",
                              "expected the kubelet's downward-API format")
        try:
            result[key] = go_unquote(quoted)
        except ValueError as err:
            raise ConfigError(contract.ENV_ANNOTATIONS, f"line {number}: {err}",
                              "expected a Go-quoted string") from None
    return result


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'"}


def go_unquote(quoted: str) -> str:
    """Go's `strconv.Unquote` for a double-quoted string; `ValueError` if malformed."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError(f"not a double-quoted string: {_q(quoted)}")
    body, out, i = quoted[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == '"':
            raise ValueError("unescaped '\"' inside the value")
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("a trailing backslash")
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e].encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"bad escape \\{e}{digits}")
            code = int(digits, 16)
            if e == "x":
                out.append(code)  # a raw byte: Quote writes invalid UTF-8 this way
            else:
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise ValueError(f"bad code point \\{e}{digits}")
                out += chr(code).encode()
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError(f"bad octal escape \\{digits}")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{e}")
    return out.decode("utf-8", errors="replace")
