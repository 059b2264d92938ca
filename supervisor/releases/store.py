"""The kept releases: their directories under ``[state] dir/releases`` and what is known of each.

Each release directory ``<id>/`` has a small record ``<id>.json`` beside it
(commit, overlay, environment, build time, last use, whether it ever went live).
The record is written after the directory is complete, so a directory without one
is a leftover and is removed. Pruning keeps the ``keep`` most recently used releases
that went live; one that never did (it failed its preparation or its gates) is no
rollback target and goes first; never one it is told to protect (the live release,
the one a rollback goes to).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from .snapshot import Content, remove

log = logging.getLogger("supervisor.release")


@dataclass
class Kept:
    """One release on disk."""

    id: str
    commit: str  # the commit it was last deployed as (commits with the same tree share a release)
    tree: str
    overlay: dict[str, str | None] = field(default_factory=dict)
    env: str = ""  # the environment's key under [state] dir/envs ("" = none)
    built_at: float = 0.0
    build_seconds: float = 0.0
    used_at: float = 0.0  # last time it went live (or was built)
    commits: list[str] = field(default_factory=list)  # every commit deployed with this content, newest last
    good: bool | None = None  # went live; False: never did; None: a record from before this was kept (good)

    def deployed_as(self, commit: str) -> None:
        self.commit = commit
        self.commits = [c for c in self.commits if c != commit][-19:] + [commit]

    def holds(self, ref: str) -> bool:
        """``ref`` (7 or more digits) abbreviates one of the commits it was deployed as."""
        return any(c.startswith(ref) for c in self.commits or [self.commit])

    @property
    def content(self) -> Content:
        return Content(self.commit, self.tree, dict(self.overlay))

    @property
    def dirty(self) -> bool:
        return bool(self.overlay)


class Store:
    def __init__(self, root: Path, tidy: bool = True) -> None:
        """``tidy`` (the daemon, at start): drop unreadable records and unfinished folders. Off, the store is
        only read (`pushcd exec`, while the daemon may be building a folder)."""
        self.root = root
        if tidy:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._kept: dict[str, Kept] = {}
        self._load(tidy)

    def _load(self, tidy: bool) -> None:
        for record in self.root.glob("*.json"):
            try:
                kept = Kept(**json.loads(record.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                if tidy:
                    log.warning("release record %s unreadable (%s); that release is dropped", record, exc)
                    record.unlink(missing_ok=True)
                continue
            if (self.root / kept.id).is_dir():
                self._kept[kept.id] = kept
            elif tidy:
                record.unlink(missing_ok=True)
        if not tidy:
            return
        for entry in self.root.iterdir():  # half-built folders, or folders whose record never got written
            if entry.is_dir() and entry.name not in self._kept:
                log.info("removing unfinished release folder %s", entry)
                remove(entry)

    def path(self, release_id: str) -> Path:
        return self.root / release_id

    def get(self, release_id: str) -> Kept | None:
        return self._kept.get(release_id)

    def all(self) -> list[Kept]:
        """Newest use first."""
        return sorted(self._kept.values(), key=lambda k: k.used_at, reverse=True)

    def find(self, ref: str) -> Kept | None:
        """A release by its id or by a commit it was deployed as (no hand edits in it); either may be
        abbreviated to 7 or more digits."""
        if len(ref) < 7:
            return None
        return next((k for k in self.all() if k.id.startswith(ref)), None) or \
            next((k for k in self.all() if not k.dirty and k.holds(ref)), None)

    def save(self, kept: Kept) -> None:
        self._kept[kept.id] = kept
        record = self.root / f"{kept.id}.json"
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(kept)))
        os.replace(tmp, record)

    def used(self, release_id: str) -> None:
        """It went live (now)."""
        kept = self._kept.get(release_id)
        if kept is not None:
            kept.used_at, kept.good = time.time(), True
            self.save(kept)

    def doomed(self, keep: int, protect: Iterable[str]) -> list[Kept]:
        """The releases the next prune removes: those that never went live, then the good ones beyond the
        ``keep`` newest; never a protected one."""
        protected = set(protect)
        good = [k for k in self.all() if k.good is not False]
        never = [k for k in self.all() if k.good is False]
        return [k for k in never + good[keep:] if k.id not in protected]

    def prune(self, keep: int, protect: Iterable[str]) -> list[str]:
        gone = []
        for kept in self.doomed(keep, protect):
            (self.root / f"{kept.id}.json").unlink(missing_ok=True)  # first: a folder without a record is a leftover
            remove(self.root / kept.id)
            del self._kept[kept.id]
            gone.append(kept.id)
        return gone
