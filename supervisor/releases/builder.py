"""Where a release runs from: the one question [release] mode answers.

The deploy worker asks a builder for a :class:`Built` release (of a commit, or
of what the work tree holds after a hand edit) and starts that; it does not
know which mode it is in. :class:`Snapshots` makes (or finds) the release's own
read-only directory and Python environment; :class:`InPlace` answers with the
work tree itself, as pushcd did before releases existed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from ..config import Release as ReleaseConfig
from ..git.thread import GitThread
from ..git.tree import WorkTree
from ..ops.record import Phases
from ..process import procfile
from . import snapshot
from ..built import Built
from .pyenv import BuildFailed, Environments, dependencies
from .store import Kept, Store

log = logging.getLogger("supervisor.release")

__all__ = ["Built", "BuildFailed", "Builder", "InPlace", "Snapshots"]


@contextlib.contextmanager
def _explained(where: Path) -> Iterator[None]:
    """A full disk or a permission problem while building is a failed deploy that says where, not a crash."""
    try:
        yield
    except snapshot.LinkRefused as exc:
        raise BuildFailed(str(exc)) from None
    except OSError as exc:
        raise BuildFailed(f"cannot write {exc.filename or where}: {exc.strerror or exc} (building {where}); "
                          f"free space or fix permissions in [state] dir") from None


class Builder(Protocol):
    mode: str

    async def of_commit(self, commit: str, phases: Phases, base: Built | None) -> Built: ...

    async def of_work_tree(self, phases: Phases, base: Built | None) -> Built: ...

    def kept(self, ref: str) -> Built | None: ...

    def seal(self, built: Built) -> None: ...

    def discard(self, built: Built) -> None: ...

    def went_live(self, built: Built, protect: Sequence[Built | None]) -> None: ...

    def listing(self) -> list[Kept]: ...

    def never_live(self, built: Built) -> bool:
        """A kept release that never went live (it failed its preparation or its gates)."""

    async def idle(self, live: Built | None) -> None:
        """Nothing is deploying: prepare what makes the next release quick (from ``live``, the one serving)."""

    def doomed(self, protect: Sequence[Built | None]) -> set[str]: ...

    def configure(self, cfg: ReleaseConfig, procfile_name: str | None = None,
                  before_restart: Sequence[Sequence[str]] = ()) -> None:
        """[release], [app] procfile and [deploy] before_restart (at start, and reloaded on SIGHUP): used from
        the next release on."""


def read_procfile(root: Path, name: str | None) -> dict[str, list[str]] | None:
    """[app] procfile of the release at ``root``, parsed; BuildFailed names the line that does not parse."""
    if not name:
        return None
    try:
        return procfile.parse((root / name).read_text(), name)
    except FileNotFoundError:
        raise BuildFailed(f"[app] procfile = \"{name}\": the release has no such file; commit it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"[app] procfile = \"{name}\" cannot be read: {exc}") from None
    except procfile.ProcfileError as exc:
        raise BuildFailed(f"{exc}; fix it and push again") from None


class InPlace:
    """The app runs in the work tree: nothing to build, nothing kept."""

    mode = "in-place"

    def __init__(self, tree: WorkTree, git: GitThread, procfile_name: str | None = None) -> None:
        self.tree = tree
        self.git = git
        self.procfile = procfile_name

    async def of_commit(self, commit: str, phases: Phases, base: Built | None) -> Built:
        return Built(commit, self.tree.path, procfile=read_procfile(self.tree.path, self.procfile))

    async def of_work_tree(self, phases: Phases, base: Built | None) -> Built:
        return Built(await self.git.run(self.tree.head), self.tree.path,
                     procfile=read_procfile(self.tree.path, self.procfile))

    def kept(self, ref: str) -> Built | None:
        return None

    def seal(self, built: Built) -> None:
        pass

    def discard(self, built: Built) -> None:
        pass

    def went_live(self, built: Built, protect: Sequence[Built | None]) -> None:
        pass

    def listing(self) -> list[Kept]:
        return []

    def never_live(self, built: Built) -> bool:
        return False

    async def idle(self, live: Built | None) -> None:
        pass

    def doomed(self, protect: Sequence[Built | None]) -> set[str]:
        return set()

    def configure(self, cfg: ReleaseConfig, procfile_name: str | None = None,
                  before_restart: Sequence[Sequence[str]] = ()) -> None:
        self.procfile = procfile_name


class Snapshots:
    """Release directories (:mod:`.snapshot`) and environments (:mod:`.pyenv`), kept in a :class:`Store`."""

    mode = "snapshot"

    def __init__(self, tree: WorkTree, git: GitThread, store: Store, envs: Environments, cfg: ReleaseConfig, *,
                 spares: Path | None = None, procfile_name: str | None = None, pycache: Path | None = None,
                 before_restart: Sequence[Sequence[str]] = ()) -> None:
        self.pycache = pycache
        self.spares = spares or store.root.with_name("spare")  # the next release's link farm, made while idle
        self.tree = tree
        self.git = git
        self.store = store
        self.envs = envs
        self.configure(cfg, procfile_name, before_restart)  # links, requirements, keep; the environments' settings
        self._told_ignored = False
        self._pending: dict[str, Kept] = {}  # built, not sealed yet

    async def of_commit(self, commit: str, phases: Phases, base: Built | None) -> Built:
        content = await self.git.run(snapshot.of_commit, self.tree.repo, commit, self.shape)
        return await self._make(content, phases, base)

    async def of_work_tree(self, phases: Phases, base: Built | None) -> Built:
        content = await self.git.run(snapshot.of_work_tree, self.tree.repo, self.tree.path, self.links, self.shape)
        return await self._make(content, phases, base)

    async def _make(self, content: snapshot.Content, phases: Phases, base: Built | None) -> Built:
        if not self._told_ignored:
            self._told_ignored = True
            await self._tell_ignored()
        kept = self.store.get(content.id)
        root = self.store.path(content.id)
        fresh = kept is None
        if kept is None:
            started = time.monotonic()
            with phases("build"), _explained(root):
                base_dir = self._base(base)
                spare = self.spares / base_dir.root.name if base_dir is not None else None
                written = await self.git.run(lambda: snapshot.write(
                    self.tree.repo, content, root, workdir=self.tree.path, base=base_dir, links=self.links,
                    spare=spare))
            seconds = time.monotonic() - started
            log.info("release %s built for %s%s in %.2fs (%d files written, the rest shared with release %s)",
                     content.id, content.commit[:12], " with hand edits" if content.dirty else "", seconds,
                     written, base_dir.root.name if base_dir else "-")
            kept = Kept(content.id, content.commit, content.tree, dict(content.overlay), built_at=time.time(),
                        build_seconds=round(seconds, 3), good=False)
        try:
            procs = read_procfile(root, self.procfile)
            deps = dependencies(root, self.requirements)
            env: Path | None = None
            if deps is not None:
                kept.env = await self.envs.key(root, deps)
                env = self.envs.path(kept.env)
                if env is None:  # a new dependency set: built now, while the live release serves untouched
                    started = time.monotonic()
                    with phases("install"), _explained(self.envs.root / kept.env):
                        env = await self.envs.build(root, deps, kept.env)
                    log.info("environment %s built from %s in %.1fs", kept.env, deps.file,
                             time.monotonic() - started)
            else:
                kept.env = ""
        except BaseException:
            if fresh:
                snapshot.remove(root)  # never kept: its record was not written
            raise
        kept.used_at = time.time()
        kept.deployed_as(content.commit)
        self._pending[kept.id] = kept
        if not fresh:
            self.store.save(kept)
        return replace(self._built(kept, env), fresh=fresh, procfile=procs)

    def _built(self, kept: Kept, env: Path | None) -> Built:
        return Built(kept.commit, self.store.path(kept.id), kept.id, env, kept.env, kept.dirty, pycache=self.pycache)

    def seal(self, built: Built) -> None:
        """A fresh release is complete (before_restart ran in it): read-only from now on, and kept."""
        kept = self._pending.pop(built.id, None)
        if kept is None or not built.fresh:
            return
        snapshot.seal(built.root)
        self.store.save(kept)

    def discard(self, built: Built) -> None:
        """A fresh release whose before_restart failed: gone, so a retry builds it anew."""
        self._pending.pop(built.id, None)
        if built.fresh:
            snapshot.remove(built.root)

    def _base(self, base: Built | None) -> snapshot.Base | None:
        """The release to share unchanged files with: the one asked for, else the most recently used."""
        kept = (self.store.get(base.id) if base is not None and base.id else None) or next(iter(self.store.all()),
                                                                                               None)
        return snapshot.Base(self.store.path(kept.id), kept.content) if kept is not None else None

    async def _tell_ignored(self) -> None:
        missing = await self.git.run(snapshot.ignored_top_level, self.tree.repo, self.links)
        if missing:
            log.warning("releases do not hold ignored files; these are in the work tree and no [release] link "
                        "covers them, so the app will not find them: %s (add them to [release] link to share "
                        "them)", ", ".join(missing))

    def kept(self, ref: str) -> Built | None:
        """A kept release, by commit or release id, ready to start as it is (its environment complete)."""
        kept = self.store.find(ref)
        if kept is None:
            return None
        env = self.envs.path(kept.env) if kept.env else None
        if kept.env and env is None:
            return None  # its environment is gone: not startable as it is
        commit = next((c for c in reversed(kept.commits) if c.startswith(ref)), kept.commit)
        try:
            procs = read_procfile(self.store.path(kept.id), self.procfile)
        except BuildFailed:
            return None
        return replace(self._built(kept, env), commit=commit, procfile=procs)

    async def idle(self, live: Built | None) -> None:
        """Link the live release's files into a spare folder now, so the next build only writes what changed."""
        kept = self.store.get(live.id) if live is not None else None
        if kept is None or (self.spares / kept.id).is_dir():
            return
        base = snapshot.Base(self.store.path(kept.id), kept.content)

        def make() -> None:
            self.spares.mkdir(mode=0o700, exist_ok=True)
            for other in self.spares.iterdir():
                snapshot.remove(other)  # one spare: the live release's
            snapshot.make_spare(self.tree.repo, base, self.spares / kept.id, self.links)

        started = time.monotonic()
        await self.git.run(make)
        log.debug("spare of release %s made in %.2fs", kept.id, time.monotonic() - started)

    def went_live(self, built: Built, protect: Sequence[Built | None]) -> None:
        """``built`` serves now: remember that, then prune what no rollback can need."""
        self.store.used(built.id)
        ids = {b.id for b in (built, *protect) if b is not None}
        for gone in self.store.prune(self.keep, ids):
            log.info("release %s pruned ([release] keep = %d)", gone, self.keep)
            if self.pycache is not None:  # its bytecode, kept under the prefix by the release's full path
                snapshot.remove(Path(f"{self.pycache}{self.store.path(gone)}"))
        in_use = {k.env for k in self.store.all() if k.env} | {b.env_key for b in (built, *protect) if b and b.env_key}
        for gone in self.envs.prune(in_use):
            log.info("environment %s removed: no kept release uses it", gone)

    def listing(self) -> list[Kept]:
        return self.store.all()

    def never_live(self, built: Built) -> bool:
        kept = self.store.get(built.id)
        return kept is not None and kept.good is False

    def doomed(self, protect: Sequence[Built | None]) -> set[str]:
        return {k.id for k in self.store.doomed(self.keep, {b.id for b in protect if b is not None})}

    def configure(self, cfg: ReleaseConfig, procfile_name: str | None = None,
                  before_restart: Sequence[Sequence[str]] = ()) -> None:
        self.procfile = procfile_name
        self.links, self.requirements, self.keep = list(cfg.link), cfg.requirements, cfg.keep
        # Besides the tree and hand edits, the folder is made of these: a change makes a new release.
        self.shape = tuple(f"link {link}" for link in self.links) + tuple(
            "before_restart " + json.dumps(list(argv)) for argv in before_restart)
        self.envs.configure(cfg)

