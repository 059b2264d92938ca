"""The client side of the control API: one call, with the credential the running pushcd expects."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .config import Settings
from .ops import controltoken


class ClientError(Exception):
    pass


class NotRunning(ClientError):
    """Nothing answers at [control] listen."""


def call(settings: Settings, method: str, path: str, timeout: float = 10.0, body: Any = None) -> Any:
    token = settings.control_token or controltoken.read(settings.state_dir)
    headers = {"Authorization": f"Bearer {token.decode()}"} if token else {}
    data = b"" if method == "POST" else None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    req = urllib.request.Request(settings.control_listen.url() + path, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        try:
            detail = json.loads(detail)["error"]  # the API's own words
        except (ValueError, KeyError, TypeError):
            pass
        if exc.code == 401 and not token:
            detail += (f" (no token: {settings.state_dir / controltoken.FILE} cannot be read; run this as the "
                       f"user pushcd runs as, or set [control] token_env)")
        raise ClientError(f"{method} {path} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NotRunning(f"no supervisor answers at {settings.control_listen.url()} ({exc}); is `pushcd run` running "
                          f"with this config?") from None
