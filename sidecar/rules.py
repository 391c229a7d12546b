"""The run's save rules as the sidecar sees them now: the pod's annotations (the downward-API
file, reloaded when it changes) and the rules added through the API (kept in the state dir,
so they survive a sidecar restart); and the directories they make checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path

from . import config, manifest, plan, statedir
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
            self.checkpoint_dirs |= plan.marked_dirs(m.files, self.cfg.complete_markers)

    def add(self, payload: dict) -> None:
        """A rule from the API (`{glob, policy?, base_path?}`), kept in the state dir;
        `ConfigError` if it is not one."""
        item = {"glob": payload.get("glob"), "policy": payload.get("policy") or "live"}
        if payload.get("base_path"):
            item["base_path"] = payload["base_path"]
        (rule,) = config.parse_save("- " + json.dumps(item), "save")  # JSON is YAML
        if rule not in self.extra:
            self.extra += (rule,)
            self.state.store_rules([doc(r) for r in self.extra])


def doc(rule: config.SaveRule) -> dict:
    """A rule as the API's replies and the state dir's rules.json spell it."""
    found = {"glob": rule.glob.pattern, "policy": rule.policy.value}
    if rule.base_path:
        found["base_path"] = rule.base_path
    return found
