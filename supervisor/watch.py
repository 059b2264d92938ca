"""Watch the work tree (watchfiles) and ask for a restart when a file changes.

The deploy itself writes files. Before it does, it announces what each path
will hold (:meth:`Expected.expect`, with the git blob id, or None for a
deletion); a change event whose file now holds exactly that is our own write
and is dropped. So one deploy causes exactly one restart (the deploy's), a
rollback's tree reset causes none, and a person's edit made right after a
deploy still restarts the app.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "app.py").write_text("v2")
>>> e = Expected(root)
>>> e.expect({"app.py": blob_id(root / "app.py"), "gone.txt": None})
>>> sorted(e.unexpected({"app.py", "gone.txt", "README.md"}))
['README.md']
>>> _ = (root / "app.py").write_text("edited by hand")
>>> sorted(e.unexpected({"app.py"}))
['app.py']
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import watchfiles

from .git.tree import blob_id

log = logging.getLogger("supervisor.watch")

ALWAYS_IGNORED_DIRS = {".git", "__pycache__", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".venv", "node_modules"}
ALWAYS_IGNORED_GLOBS = ("*.pyc", "*.pyo", "*.swp", "*.swx", "*~", ".#*")


class Expected:
    """What the supervisor is about to write, path by path; forgotten after ``ttl`` seconds.

    Every content announced within ``ttl`` counts as ours (a deploy and its
    rollback follow each other faster than a debounced batch may arrive).
    """

    def __init__(self, root: Path, ttl: float = 60.0) -> None:
        self.root = root
        self.ttl = ttl
        self._writes: dict[str, dict[str | None, float]] = {}
        self._dirs: dict[str, float] = {}
        self.batches = 0  # debounced batches seen
        self.dropped = 0  # of them, wholly our own writes
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a checkout: a file it is halfway through writing matches no blob id, so wait."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def settled(self, timeout: float = 600.0) -> None:
        """Return once no checkout is writing (or after ``timeout``: then judge what is there)."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: in 3.11 it can swallow a cancel
                await self._idle.wait()
        except asyncio.TimeoutError:
            log.warning("watch: a checkout has been writing for %ss; judging changes anyway", timeout)

    def expect(self, writes: Mapping[str, str | None]) -> None:
        until = time.monotonic() + self.ttl
        for path, blob in writes.items():
            self._writes.setdefault(path, {})[blob] = until
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                self._dirs["/".join(parts[:i])] = until

    def _ours(self, path: str) -> bool:
        full = self.root / path
        if path in self._dirs or full.is_dir():
            return True  # a folder appearing or going matters only through its files
        return blob_id(full) in self._writes.get(path, {})

    def unexpected(self, changed: set[str]) -> set[str]:
        now = time.monotonic()
        self._writes = {p: live for p, w in self._writes.items() if (live := {b: t for b, t in w.items() if t > now})}
        self._dirs = {p: t for p, t in self._dirs.items() if t > now}
        left = {p for p in changed if not self._ours(p)}
        self.batches += 1
        self.dropped += not left
        return left


def make_filter(root: Path, ignore: list[str], canary: Path | None = None
                ) -> Callable[[watchfiles.Change, str], bool]:
    def keep(_change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        if canary is not None and p.parent == canary:
            return True
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


class Armed:
    """Tells when the watcher is really watching: a file it must see, written until it does.

    watchfiles arms its watches inside ``awatch`` with no signal of its own; a change
    made before that is lost. So the watch also covers a private folder (under the
    state dir), and :meth:`wait` writes a file there until the watcher reports it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # made by the caller (it is watched from the start)
        self.event = asyncio.Event()

    def seen(self, paths: set[str]) -> set[str]:
        """Drop our own canary paths from a batch; note that the watcher is armed."""
        ours = {p for p in paths if Path(p).parent == self.folder}
        if ours:
            self.event.set()
        return paths - ours

    async def wait(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        n = 0
        while not self.event.is_set() and time.monotonic() < deadline:
            n += 1
            (self.folder / "canary").write_text(str(n))
            try:
                async with asyncio.timeout(0.25):
                    await self.event.wait()
            except asyncio.TimeoutError:
                pass
        if not self.event.is_set():
            log.warning("watch: not armed after %gs; changes made meanwhile may be missed", timeout)
        return self.event.is_set()


async def watch_tree(root: Path, paths: tuple[Path, ...], ignore: list[str], debounce_ms: int,
                     expected: Expected, on_change: Callable[[set[str]], None],
                     stop: asyncio.Event, armed: Armed | None = None) -> None:
    """Call ``on_change(relative paths)`` for each debounced batch we did not write ourselves."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        log.warning("watch: none of %s exist; not watching", ", ".join(map(str, paths)))
        if armed is not None:
            armed.event.set()  # nothing to arm: do not hold start-up
        return
    canary = armed.folder if armed is not None else None
    async for batch in watchfiles.awatch(*existing, *([str(canary)] if canary else []),
                                         watch_filter=make_filter(root, ignore, canary),
                                         # step is the quiet period that ends a batch; debounce caps its length.
                                         step=max(10, debounce_ms), debounce=max(1600, 4 * debounce_ms), stop_event=stop,
                                         rust_timeout=1000, yield_on_timeout=False):
        raw = {path for _change, path in batch}
        if armed is not None:
            raw = armed.seen(raw)
        rel = set()
        for path in raw:
            try:
                rel.add(Path(path).relative_to(root).as_posix())
            except ValueError:
                rel.add(path)
        if not rel:
            continue
        await expected.settled()
        changed = expected.unexpected(rel)
        if changed:
            log.info("watch: %d file(s) changed (%s); restart requested", len(changed), ", ".join(sorted(changed)[:5]))
            on_change(changed)
