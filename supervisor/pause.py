"""Automatic deploys on hold (``pushcd pause``), kept in the state dir so a restart of pushcd stays paused.

While paused, webhook deliveries and polls are still verified, answered and recorded (verdict
``paused``) but deploy nothing; deploys, rollbacks and restarts a person asks for still run.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "paused.json"
>>> p = Pause.load(path)
>>> p.reason is None
True
>>> p.hold("pinned to abc123")
>>> Pause.load(path).reason
'pinned to abc123'
>>> p.lift()
>>> Pause.load(path).reason is None
True
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("supervisor.deploy")


@dataclass
class Pause:
    path: Path | None = None  # where it is kept; None: in memory only
    reason: str | None = None
    since: float | None = None

    @classmethod
    def load(cls, path: Path) -> "Pause":
        try:
            data = json.loads(path.read_text())
            return cls(path, str(data["reason"]), float(data["since"]))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("pause: cannot read %s (%s); staying paused until `pushcd resume`", path, exc)
            return cls(path, f"unreadable {path.name}", time.time())

    def hold(self, reason: str) -> None:
        self.reason, self.since = reason, time.time()
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"reason": reason, "since": self.since}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("pause: cannot write %s (%s); paused until pushcd restarts", self.path, exc)

    def lift(self) -> None:
        self.reason = self.since = None
        if self.path is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("pause: cannot remove %s (%s); pushcd would start paused", self.path, exc)

    def as_dict(self) -> dict[str, object] | None:
        return {"reason": self.reason, "since": self.since} if self.reason is not None else None
