"""Release directories: what a release holds, named by its content, written once and never again.

A release is a commit's tree, plus, when the watcher saw a hand edit, the files
the work tree holds that differ from it (:class:`Content`). :func:`write` makes
its directory from git objects, never from the work tree's tracked files
(libgit2 may rewrite those in place): the tracked files of a base release
(usually the live one) are hard-linked from there, and only the paths that
differ between the two are written, from the object database (or, for a hand
edit, copied from the work tree). Files are read-only (0444, or 0555
when executable) and so are the folders, so a hard link shared by two releases
cannot be changed through either (:func:`seal` makes the folders read-only once
before_restart has run in them). Everything is built in a temporary folder and
renamed into place: a release directory is complete or absent.

These calls block (pygit2, disk): the deploy worker runs them in the git thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pygit2
from pygit2.enums import FileMode, FileStatus

from ..git.tree import blob_id

log = logging.getLogger("supervisor.release")

FILE, EXEC, FOLDER = 0o444, 0o555, 0o555


@dataclass(frozen=True)
class Content:
    """What one release directory holds; its :attr:`id` names it (the same content, the same directory)."""

    commit: str
    tree: str  # the commit's tree id
    overlay: dict[str, str | None] = field(default_factory=dict)  # path -> blob id in the work tree (None: deleted)
    shape: tuple[str, ...] = ()  # what else the folder is made from: [release] link entries, before_restart

    @property
    def id(self) -> str:
        """The tree id's first 16 digits; with an overlay or a shape, a digest of everything the folder is made
        from, so a changed input never reuses a folder made without it.

        >>> Content("c" * 40, "ab" * 20).id
        'abababababababab'
        >>> Content("c" * 40, "ab" * 20, {"app.py": "12" * 20}).id != Content("c" * 40, "ab" * 20).id
        True
        >>> Content("c" * 40, "ab" * 20, shape=("link data/",)).id != Content("c" * 40, "ab" * 20).id
        True
        """
        if not self.overlay and not self.shape:
            return self.tree[:16]
        digest = hashlib.sha1(self.tree.encode())
        for path, blob in sorted(self.overlay.items()):
            digest.update(f"\0{path}\0{blob or '-'}".encode())
        for part in self.shape:  # in order: before_restart commands run in order
            digest.update(f"\0shape\0{part}".encode())
        return digest.hexdigest()[:16]

    @property
    def dirty(self) -> bool:
        return bool(self.overlay)


def of_commit(repo: pygit2.Repository, commit: str, shape: Sequence[str] = ()) -> Content:
    return Content(commit, str(repo[commit].peel(pygit2.Commit).tree_id), shape=tuple(shape))


def of_work_tree(repo: pygit2.Repository, workdir: Path, skip: Sequence[str] = (), shape: Sequence[str] = ()
                 ) -> Content:
    """HEAD, plus the tracked files the work tree holds edited and its untracked (not ignored) files."""
    head = str(repo.head.target)
    tree = repo[head].peel(pygit2.Commit).tree
    overlay: dict[str, str | None] = {}
    for path, flags in repo.status(untracked_files="all").items():
        if flags in (FileStatus.CURRENT, FileStatus.IGNORED) or _covered(path, skip):
            continue
        blob = blob_id(workdir / path)
        if blob == "dir":
            continue  # a submodule's folder: its own commit is in the tree
        try:
            if blob is not None and str(tree[path].id) == blob:
                continue  # staged or mode-only: the same bytes as the commit
        except KeyError:
            pass
        overlay[path] = blob
    return Content(head, str(tree.id), overlay, tuple(shape))


def _covered(path: str, prefixes: Iterable[str]) -> bool:
    """``path`` is one of ``prefixes`` or inside one.

    >>> _covered("media/a.png", ["media/"]), _covered("mediax", ["media/"]), _covered(".env", [".env"])
    (True, False, True)
    """
    for prefix in prefixes:
        name = prefix.rstrip("/")
        if path == name or path.startswith(name + "/"):
            return True
    return False


@dataclass(frozen=True)
class Base:
    """A release already on disk to share unchanged files with."""

    root: Path
    content: Content


def write(repo: pygit2.Repository, content: Content, dest: Path, *, workdir: Path, base: Base | None = None,
          links: Sequence[str] = (), spare: Path | None = None) -> int:
    """Make ``dest`` hold ``content`` (see the module doc); the number of paths written (not shared).

    With a ``base``, its files are hard-linked (``spare``, when given, is such a copy of it made
    beforehand, while nothing was deploying: linking 20,000 files takes longer than the whole
    fetch and checkout) and only the paths that differ are written.
    """
    tmp = dest.with_name(f".{dest.name}.building")
    if tmp.exists():
        remove(tmp)  # a build interrupted earlier
    try:
        if base is None:
            tmp.mkdir(parents=True)
            written = _materialize(repo, repo[content.tree].peel(pygit2.Tree), tmp, "", workdir, links)
            wanted = {path: (OVERLAY if blob else None) for path, blob in content.overlay.items()}
        else:
            if spare is not None and spare.is_dir():
                os.rename(spare, tmp)
            else:
                link_copy(repo, base, tmp, links)
            wanted = differences(repo, base.content, content)
            written = 0
        wanted = {p: e for p, e in wanted.items() if not _covered(p, links)}
        for path in sorted(p for p, e in wanted.items() if e is None):  # removals first: a file may become a folder
            _clear(tmp / path)
            _prune_empty(tmp / path, tmp)
        for path, entry in sorted(wanted.items()):
            if entry is not None:
                _place(repo, tmp, path, entry, workdir)
                written += 1
        for entry in links:
            name = entry.rstrip("/")
            problem = link_problem(entry, tmp, workdir)
            if problem:
                raise LinkRefused(problem)
            if entry.endswith("/"):
                (workdir / name).mkdir(parents=True, exist_ok=True)  # data outlives releases: make its home
            target = tmp / name
            _clear(target)
            _mkdirs(target.parent, tmp)
            os.symlink(workdir / name, target)
        if dest.exists():
            remove(dest)  # built before but never kept (pushcd stopped before it was sealed)
        os.rename(tmp, dest)
    except BaseException:
        remove(tmp)
        raise
    return written


OVERLAY = "overlay"  # what a path holds: the work tree's file (a hand edit)
Entry = tuple[str, int]  # what a path holds: a git object id and its file mode


def _place(repo: pygit2.Repository, top: Path, path: str, entry: Entry | str, workdir: Path) -> None:
    target = top / path
    _clear(target)
    _mkdirs(target.parent, top)
    if entry == OVERLAY:  # a hand edit: copied, never linked to the work tree
        shutil.copyfile(workdir / path, target, follow_symlinks=False)
        if not target.is_symlink():
            target.chmod(EXEC if os.access(workdir / path, os.X_OK) else FILE)
        return
    _write_entry(repo, target, entry, workdir / path)


def _write_entry(repo: pygit2.Repository, target: Path, entry: Entry, source: Path) -> None:
    """A file, symlink or submodule (checked out at ``source`` in the work tree) where nothing stands yet."""
    oid, mode = entry
    if mode == FileMode.COMMIT:
        target.mkdir()
        _submodule(source, oid, target)
    elif mode == FileMode.LINK:
        os.symlink(repo[oid].data, target)
    else:
        _write_blob(target, repo[oid].data, mode == FileMode.BLOB_EXECUTABLE)


def differences(repo: pygit2.Repository, old: Content, new: Content) -> dict[str, Entry | str | None]:
    """What each path that differs between two releases must hold in the new one (None: nothing).

    From one tree-to-tree diff (libgit2 skips unchanged subtrees), never a look-up per path:
    a look-up in a folder of 20,000 entries parses that folder again each time.
    """
    out: dict[str, Entry | str | None] = {}
    if old.tree != new.tree:
        for delta in repo.diff(repo[old.tree].peel(pygit2.Tree), repo[new.tree].peel(pygit2.Tree)).deltas:
            out.setdefault(delta.old_file.path, None)
            if delta.status != pygit2.enums.DeltaStatus.DELETED:
                out[delta.new_file.path] = (str(delta.new_file.id), delta.new_file.mode)
    tree = repo[new.tree].peel(pygit2.Tree)
    for path in old.overlay:  # the base held a hand edit here: back to what the new tree holds
        if path not in out:
            try:
                entry = tree[path]
                out[path] = (str(entry.id), entry.filemode)
            except KeyError:
                out[path] = None
    for path, blob in new.overlay.items():
        out[path] = OVERLAY if blob is not None else None
    return out


def link_copy(repo: pygit2.Repository, base: Base, dest: Path, links: Sequence[str] = ()) -> None:
    """A copy of ``base``'s tracked files as hard links, in writable folders. Only what its tree holds:
    what before_restart wrote there (collected static files, node_modules) is the next release's to make."""
    dest.mkdir(parents=True)
    _link_tree(repo[base.content.tree].peel(pygit2.Tree), base.root, dest, "", links)


def _link_tree(tree: pygit2.Tree, source: Path, dest: Path, prefix: str, links: Sequence[str]) -> None:
    for entry in tree:
        path = prefix + entry.name
        if _covered(path, links):
            continue
        src, out = source / entry.name, dest / entry.name
        if entry.filemode == FileMode.TREE:
            out.mkdir()
            _link_tree(entry.peel(pygit2.Tree), src, out, path + "/", links)
        elif entry.filemode == FileMode.COMMIT:
            shutil.copytree(src, out, symlinks=True, copy_function=share)  # a submodule: all of its files
        elif entry.filemode == FileMode.LINK:
            os.symlink(os.readlink(src), out)
        else:
            try:
                share(src, out)
            except FileNotFoundError:
                pass  # the base lacked it (a hand edit deleted it): differences() puts it back


NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
_copies_told = False


def share(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``dst`` shares ``src``'s bytes: a hard link (one read-only inode, no bytes written); where the
    filesystem refuses hard links (FAT, some network and FUSE filesystems, protected_hardlinks), a copy,
    said once: releases then cost their full size on disk."""
    global _copies_told
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        if not _copies_told:
            _copies_told = True
            log.warning("hard links refused in %s (%s): release files are copied instead of shared; each release "
                        "costs its full size on disk. Put [state] dir on a filesystem with hard links to share them",
                        os.path.dirname(os.fspath(dst)), exc.strerror or exc)
        shutil.copy2(src, dst, follow_symlinks=False)


def make_spare(repo: pygit2.Repository, base: Base, spare: Path, links: Sequence[str] = ()) -> None:
    """Prepare the link farm the next release starts from (see :func:`write`): while nothing deploys."""
    tmp = spare.with_name(f".{spare.name}.tmp")
    for old in (tmp, spare):
        remove(old)
    link_copy(repo, base, tmp, links)
    os.rename(tmp, spare)


def seal(root: Path) -> None:
    """Make a release's folders read-only (its files are already): nothing can be added or replaced."""
    folders = [root] + [Path(f) / d for f, dirs, _ in os.walk(root) for d in dirs]
    for folder in reversed(folders):  # deepest first
        if not folder.is_symlink():
            folder.chmod(FOLDER)


def _materialize(repo: pygit2.Repository, tree: pygit2.Tree, out: Path, prefix: str, workdir: Path,
                 links: Sequence[str] = ()) -> int:
    """Every file of ``tree`` written from the object database into ``out``."""
    written = 0
    for entry in tree:
        path = prefix + entry.name
        target = out / entry.name
        if _covered(path, links):
            continue  # a [release] link takes its place
        if entry.filemode == FileMode.TREE:
            target.mkdir()
            written += _materialize(repo, entry.peel(pygit2.Tree), target, path + "/", workdir, links)
        else:
            _write_entry(repo, target, (str(entry.id), entry.filemode), workdir / path)
            written += 1
    return written


def _write_blob(target: Path, data: bytes, executable: bool) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, EXEC if executable else FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _submodule(path: Path, commit: str, out: Path) -> int:
    """A submodule's files at the commit the tree records, from its own repository in the work tree."""
    try:
        sub = pygit2.Repository(str(path))
        tree = sub[commit].peel(pygit2.Tree)
    except (pygit2.GitError, KeyError, ValueError):
        log.warning("submodule %s: commit %s is not checked out in the work tree; the release has it empty",
                    path, commit[:12])
        return 0
    return _materialize(sub, tree, out, "", path)


class LinkRefused(Exception):
    """A [release] link that would be made, cleared or written through a symlink pushcd did not make."""


def link_problem(entry: str, release: Path, workdir: Path) -> str | None:
    """Why ``entry`` of [release] link cannot be made safely, or None. A committed symlink on its way (a
    Capistrano-style ``shared -> /srv/shared``) would make pushcd create, delete and link through it, outside
    the repository: refused, never followed.

    >>> import tempfile
    >>> top = Path(tempfile.mkdtemp())
    >>> (top / "release").mkdir(); (top / "work").mkdir(); (top / "release" / "shared").symlink_to("/tmp")
    >>> link_problem("shared/data/", top / "release", top / "work")  # doctest: +ELLIPSIS
    '[release] link "shared/data/": shared is a symlink in the commit (...); pushcd never creates, deletes or links through a symlink it did not make: link the real folder, or commit a folder in its place'
    >>> link_problem("media/", top / "release", top / "work") is None
    True
    """
    parts = Path(entry.rstrip("/")).parts
    for depth in range(1, len(parts) + 1):
        for root, where in ((release, "the commit"), (workdir, "the work tree")):
            path = root.joinpath(*parts[:depth])
            if path.is_symlink() and (depth < len(parts) or root == workdir):
                return (f'[release] link "{entry}": {"/".join(parts[:depth])} is a symlink in {where} '
                        f"(to {os.readlink(path)}); pushcd never creates, deletes or links through a symlink it did "
                        f"not make: link the real folder, or commit a folder in its place")
    return None


def _mkdirs(folder: Path, top: Path) -> None:
    if folder != top:
        folder.mkdir(parents=True, exist_ok=True)


def _prune_empty(path: Path, top: Path) -> None:
    """Folders a removal left empty go too (git has no empty folders)."""
    folder = path.parent
    while folder != top and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        remove(path)


def remove(path: Path) -> None:
    """Delete a release (or environment) directory: read-only folders are made writable first."""
    if not path.exists() and not path.is_symlink():
        return

    for folder, dirs, _files in os.walk(path):  # read-only folders can be listed, not emptied
        os.chmod(folder, 0o755)
        for d in dirs:
            full = os.path.join(folder, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(path)


def ignored_top_level(repo: pygit2.Repository, links: Sequence[str]) -> list[str]:
    """Ignored entries at the top of the work tree that no [release] link covers: the app will not find them."""
    names = set()
    for path, flags in repo.status(untracked_files="normal", ignored=True).items():
        if flags & FileStatus.IGNORED:
            names.add(path.split("/")[0] + ("/" if "/" in path.rstrip("/") or path.endswith("/") else ""))
    return sorted(n for n in names if not _covered(n.rstrip("/"), links))
