"""Log setup: one line per event on stderr, plain text or JSON lines.

Events carry their facts as ``extra`` fields (delivery, commit, duration, ...)
so the JSON form has them as keys, not only inside the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .redact import RedactFilter

FIELDS = ("app", "delivery", "commit", "duration", "peer", "verdict", "result", "trigger")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class AppName(logging.Filter):
    """Every line says which app it is about: several pushcds on one box log to one journal."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.app = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.app = self.app
        return True


def setup(fmt: str = "text", verbose: bool = False, app: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())  # no password of a remote URL in any line
    handler.addFilter(AppName(app))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s [%(app)s] %(name)s: %(message)s"
                                               if app else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log our own, filtered, line
