"""What went live, what was prepared, and the attempt under way: on disk, so any stop can be resolved.

The one road (:mod:`supervisor.road`) writes here before it acts:

- ``intent``: the attempt under way (its kind, target, fallback and phase),
  written before the first step and removed when the attempt has ended. Found at
  start-up, it means the last run stopped inside an attempt (SIGTERM, SIGKILL,
  power loss): start-up then decides again from ``good`` and the work tree, so
  nothing that skipped a gate is ever started.
- ``good``: the release that last went live and passed probation; start-up puts
  it live, and it is the fallback of every new attempt.
- ``prepared``: the releases whose preparation (``before_restart``, the release
  task) succeeded, so it runs once per release, not once per restart.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ledger.json"
>>> ledger = Ledger.load(path)
>>> ledger.begin("deploy", Ref("b" * 40, "r2"), Ref("a" * 40, "r1"))
>>> ledger.prepared_ok(Ref("b" * 40, "r2"))
>>> again = Ledger.load(path)
>>> again.intent["kind"], again.intent["phase"], again.is_prepared(Ref("b" * 40, "r2"))
('deploy', 'prepare', True)
>>> again.went_live(Ref("b" * 40, "r2"), good=True)
>>> Ledger.load(path).good, Ledger.load(path).intent
(Ref(commit='bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', id='r2', dirty=False, config=''), None)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("supervisor.deploy")

PREPARED_KEPT = 200  # releases remembered as prepared; older ones are long pruned


class Startable(Protocol):
    commit: str
    id: str
    dirty: bool
    config: str


@dataclass(frozen=True)
class Ref:
    """A release by name: its commit, its folder's id ("" in place), whether it holds hand edits, the digest
    of its config vars."""

    commit: str
    id: str = ""
    dirty: bool = False
    config: str = ""

    @classmethod
    def of(cls, release: Startable) -> "Ref":
        return cls(release.commit, release.id, release.dirty, release.config)

    @property
    def key(self) -> str:
        """One release: a commit and its folder's content (the commit alone in place). A new commit with an
        old tree (a revert) is a new release: its preparation runs, as a deploy on Heroku does; so is a change
        of config vars (Heroku runs its release phase then too)."""
        key = f"{self.commit}/{self.id}" if self.id else self.commit
        return f"{key}+{self.config}" if self.config else key


class Ledger:
    def __init__(self, path: Path | None, good: Ref | None = None, prepared: list[str] | None = None,
                 intent: dict[str, Any] | None = None) -> None:
        self.path = path  # None: in memory only (tests of the worker's decisions)
        self.good = good
        self.prepared = list(prepared or [])
        self.intent = intent

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        try:
            data = json.loads(path.read_text())
            good = Ref(**data["good"]) if data.get("good") else None
            return cls(path, good, [str(k) for k in data.get("prepared", [])], data.get("intent"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # Unreadable: nothing is known good; start-up runs the work tree through every gate.
            log.error("ledger %s unreadable (%s); the work tree's release goes through every gate", path, exc)
            return cls(path)

    # -- the attempt under way ----------------------------------------------------------
    def begin(self, kind: str, target: Ref, fallback: Ref | None) -> None:
        self.intent = {"kind": kind, "target": asdict(target), "fallback": asdict(fallback) if fallback else None,
                       "phase": "prepare"}
        self._save()

    def phase(self, name: str) -> None:
        if self.intent is not None and self.intent.get("phase") != name:
            self.intent["phase"] = name
            self._save()

    def end(self) -> None:
        if self.intent is not None:
            self.intent = None
            self._save()

    # -- releases ---------------------------------------------------------------------------
    def is_prepared(self, ref: Ref) -> bool:
        return ref.key in self.prepared

    def prepared_ok(self, ref: Ref) -> None:
        self.prepared = [k for k in self.prepared if k != ref.key][-(PREPARED_KEPT - 1):] + [ref.key]
        self._save()

    def went_live(self, ref: Ref, good: bool) -> None:
        """``ref`` serves; ``good``: it passed (or needs no) probation, so it is the fallback from now on."""
        if good:
            self.good = ref
            self.intent = None
        else:
            self.phase("probation")
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        data = {"good": asdict(self.good) if self.good else None, "prepared": self.prepared, "intent": self.intent}
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            # A full state disk must not stop deploys; what is lost is the repair of an interrupted one.
            tmp.unlink(missing_ok=True)
            log.error("ledger: cannot write %s (%s); a stop during this attempt would be resolved from the "
                      "work tree alone", self.path, exc.strerror or exc)
