"""Watch the work tree (watchfiles) and ask for a restart when a file changes.

The deploy itself writes files; those writes are announced beforehand with
:meth:`Expected.expect` and dropped here, so one deploy causes exactly one
restart (the deploy's), and a rollback's tree reset causes none.

>>> e = Expected(ttl=5.0)
>>> e.expect(["app.py"])
>>> e.unexpected({"app.py", "README.md"}, now=e._until["app.py"] - 1)
{'README.md'}
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import watchfiles

log = logging.getLogger("supervisor.watch")

ALWAYS_IGNORED_DIRS = {".git", "__pycache__", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".venv", "node_modules"}
ALWAYS_IGNORED_GLOBS = ("*.pyc", "*.pyo", "*.swp", "*.swx", "*~", ".#*")


class Expected:
    """Paths the supervisor is about to write, each forgotten after ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._until: dict[str, float] = {}
        self.batches = 0  # debounced batches seen
        self.dropped = 0  # of them, wholly our own writes

    def expect(self, paths: Iterable[str]) -> None:
        until = time.monotonic() + self.ttl
        for p in paths:
            self._until[p] = until
            # A checkout that adds a/b/c.txt also creates (or removes) a/ and a/b/.
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                self._until["/".join(parts[:i])] = until

    def unexpected(self, changed: set[str], now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        self._until = {p: t for p, t in self._until.items() if t > now}
        left = {p for p in changed if p not in self._until}
        self.batches += 1
        self.dropped += not left
        return left


def make_filter(root: Path, ignore: list[str]) -> Callable[[watchfiles.Change, str], bool]:
    def keep(_change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = p
        if any(part in ALWAYS_IGNORED_DIRS for part in rel.parts):
            return False
        name = p.name
        if any(fnmatch.fnmatch(name, g) for g in ALWAYS_IGNORED_GLOBS):
            return False
        text = rel.as_posix()
        return not any(fnmatch.fnmatch(text, g) or fnmatch.fnmatch(name, g) for g in ignore)

    return keep


async def watch_tree(root: Path, paths: tuple[Path, ...], ignore: list[str], debounce_ms: int,
                     expected: Expected, on_change: Callable[[set[str]], None],
                     stop: asyncio.Event) -> None:
    """Call ``on_change(relative paths)`` for each debounced batch we did not write ourselves."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        log.warning("watch: none of %s exist; not watching", ", ".join(map(str, paths)))
        return
    async for batch in watchfiles.awatch(*existing, watch_filter=make_filter(root, ignore),
                                         # step is the quiet period that ends a batch; debounce caps its length.
                                         step=max(10, debounce_ms), debounce=max(1600, 4 * debounce_ms), stop_event=stop,
                                         rust_timeout=1000, yield_on_timeout=False):
        rel = set()
        for _change, path in batch:
            try:
                rel.add(Path(path).relative_to(root).as_posix())
            except ValueError:
                rel.add(path)
        changed = expected.unexpected(rel)
        if changed:
            log.info("watch: %d file(s) changed (%s); restart requested", len(changed), ", ".join(sorted(changed)[:5]))
            on_change(changed)
