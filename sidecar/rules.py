"""The run's save rules as the sidecar sees them now: the pod's annotations (the downward-API
file, reloaded when it changes) and the rules added through the API (kept in the state dir,
so they survive a sidecar restart); and the directories they make checkpoint directories."""

from __future__ import annotations

import glob as globmod
import json
import os
from pathlib import Path

from . import config, durable, keys, manifest, plan, statedir, watch
from .errors import ConfigError
from .logs import log


class Rules:
    def __init__(self, annotations_file: str | None, state: statedir.StateDir, base: config.RunConfig | None = None):
        self.annotations_file = annotations_file
        self.state = state
        self.cfg = base or config.RunConfig()
        """The annotations' configuration; `base` until a file is read (the SDK's embedded mode
        has no file: its ignore globs come in `base`)."""
        self.extra: tuple[config.SaveRule, ...] = state.load_rules()
        """Added through the API (`runsync.save`)."""
        self._text: str | None = None
        self.checkpoint_dirs: set[str] = set()
        """Directories known to hold checkpoints: a durable marker (`mark`), or a marker seen."""

    @property
    def save(self) -> tuple[config.SaveRule, ...]:
        return self.cfg.save + self.extra

    def docs(self) -> list[dict]:
        return [doc(rule) for rule in self.save]

    def reload(self, first: bool = False) -> bool:
        """Read the annotations file again; True when the configuration changed. A bad file
        keeps the last good configuration."""
        if not self.annotations_file:
            return False
        try:
            text = Path(self.annotations_file).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            if first:
                log.warning("annotations file unreadable", extra={"fields": {"path": self.annotations_file,
                                                                             "error": str(err)}})
            return False
        if text == self._text:
            return False
        self._text = text
        try:
            cfg = config.parse(config.parse_annotations_file(text))
        except ConfigError as err:
            log.error("bad annotations; keeping the last good configuration",
                      extra={"fields": {"path": self.annotations_file, "error": str(err)}})
            return False
        changed, self.cfg = cfg != self.cfg, cfg
        if changed and not first:
            log.info("annotations reloaded", extra={"fields": {"rules": [doc(r) for r in cfg.save]}})
        return changed

    def mark(self, m: manifest.Manifest | None) -> None:
        """Directories with a durable marker are checkpoint directories (plan.decide)."""
        if m is not None:
            markers = self.cfg.complete_markers
            names = m.files.named_like(markers) if isinstance(m.files, durable.Index) else m.files
            self.checkpoint_dirs |= plan.marked_dirs(names, markers)

    def add(self, payload: dict, root: str, layout: keys.Layout) -> list[tuple[str, str]]:
        """A rule from the API (`{glob, policy?, base_path?}`), kept in the state dir. Returns
        the files it names now, (relpath, stored name): the call sends them at once, as W&B's
        `save` forces them. `ConfigError` if it is not a rule; `RunPathError` (and no rule
        added) if a file it names now has a name that would not stay in the run dir."""
        item = {"glob": payload.get("glob"), "policy": payload.get("policy") or "live"}
        if payload.get("base_path"):
            item["base_path"] = payload["base_path"]
        (rule,) = config.parse_save("- " + json.dumps(item), "save")  # JSON is YAML
        extra = self.extra if rule in self.extra else self.extra + (rule,)
        named = []
        for relpath in files_below(root, rule.glob.pattern):
            if rule.glob.matches(relpath):
                d = plan.decide(self.cfg, extra, relpath, self.checkpoint_dirs)
                if d.name is not None:
                    named.append((relpath, layout.check_storable(d.name)))
        if rule not in self.extra:
            self.extra = extra
            self.state.store_rules([doc(r) for r in self.extra])
        return named


def doc(rule: config.SaveRule) -> dict:
    """A rule as the API's replies and the state dir's rules.json spell it."""
    found = {"glob": rule.glob.pattern, "policy": rule.policy.value}
    if rule.base_path:
        found["base_path"] = rule.base_path
    return found


def files_below(root: str, pattern: str) -> list[str]:
    """The files of the run dir that `pattern` may name (relpaths), read below its leading
    literal directories only, never through a symlink: a save() call costs a scan of what it
    names, not of the whole run dir."""
    start = root
    literal = []
    for segment in pattern.split("/")[:-1]:
        if globmod.has_magic(segment):
            break
        start = os.path.join(start, segment)
        if os.path.islink(start) or not os.path.isdir(start):
            return []
        literal.append(segment)
    prefix = "".join(segment + "/" for segment in literal)
    return [prefix + f.relpath for f in watch.scan(start).files]
