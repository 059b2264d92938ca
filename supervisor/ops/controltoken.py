"""The control API's credential when ``[control] token_env`` is not set.

Every request that changes state needs ``Authorization: Bearer <token>``, even on
loopback: any web page in a browser on this machine (or behind an SSH tunnel)
can send a POST to 127.0.0.1. The token is generated at the first start and
kept in ``[state] dir``/control-token, readable by pushcd's own user only;
the CLI on the same box reads it there, so it needs no setup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE = "control-token"


def ensure(state_dir: Path) -> bytes:
    """The token, created (0600) on first use."""
    path = state_dir / FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read(state_dir) or _replace(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return read(state_dir) or b""


def _replace(path: Path) -> bytes:
    """An empty token file (a crash between create and write): write a fresh one."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    os.replace(tmp, path)
    return path.read_text().strip().encode()


def read(state_dir: Path) -> bytes | None:
    """The token as the CLI finds it; None when there is none or it cannot be read (another user)."""
    try:
        value = (state_dir / FILE).read_text().strip()
    except OSError:
        return None
    return value.encode() or None
