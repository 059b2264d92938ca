"""What git operation is under way, on disk, so that a SIGKILL in the middle can be repaired."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("supervisor.git")


class Journal:
    """What git operation is under way, on disk, so a SIGKILL mid-way can be repaired.

    Written (atomically) before a fetch or a move of the tree and removed after it;
    finding one at start-up means the last run died inside that operation.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self, op: str, **facts: object) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"op": op, "at": time.time(), **facts}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            # A full or read-only state dir must not stop deploys; only crash repair is lost.
            tmp.unlink(missing_ok=True)
            log.error("journal: cannot write %s (%s); a crash during this %s would need repair by hand",
                      self.path, exc.strerror or exc, op)

    def end(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("journal: cannot remove %s (%s)", self.path, exc.strerror or exc)

    def pending(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"op": "unknown"}  # torn write: treat as interrupted, repair conservatively
        return data if isinstance(data, dict) else {"op": "unknown"}
