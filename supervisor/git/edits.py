"""Which of the paths a move would write hold local edits (or have something untracked in the way): the
move refuses those, as ``git merge --ff-only`` does, and leaves every other edit alone."""

from __future__ import annotations

from pathlib import Path

import pygit2
from pygit2.enums import FileStatus

UNTOUCHED = {FileStatus.CURRENT, FileStatus.IGNORED}
PER_PATH_STATUS = 32  # up to this many changed paths, a status look-up each beats one pass over the tree


def blocking(repo: pygit2.Repository, workdir: Path, paths: set[str]) -> list[str]:
    """The paths (of ``paths``) with local edits, or with an untracked file or folder in the way.

    A small change asks about each path (about 1 ms each on a 20,000-file tree); a larger one
    takes one status pass over the tree (about 70 ms there) and looks each path up in it. Asking
    per path for every change was quadratic: 134 s for 50,000 files.
    """
    if len(paths) <= PER_PATH_STATUS:
        return sorted(p for p in paths if _status(repo, workdir, p) not in UNTOUCHED)
    edited = {p.rstrip("/"): s for p, s in repo.status(untracked_files="normal").items()
              if s not in UNTOUCHED}
    if not edited:
        return []
    out = []
    for path in paths:
        parts = path.split("/")
        # the path itself, or an untracked file or folder standing where one of its folders goes
        if any("/".join(parts[:i]) in edited for i in range(1, len(parts) + 1)):
            out.append(path)
    return sorted(out)


def _status(repo: pygit2.Repository, workdir: Path, path: str) -> FileStatus:
    """One path's status."""
    try:
        return FileStatus(repo.status_file(path))
    except KeyError:
        return FileStatus.CURRENT  # in neither the index nor the work tree
    except pygit2.GitError:
        full = workdir / path
        if full.is_dir() and not full.is_symlink():
            # A folder stands where the update puts a file: in the way only if it holds something git does
            # not have clean (a folder of tracked files the move deletes is no edit: git moves it too).
            inside = path + "/"
            return FileStatus.WT_NEW if any(
                p.startswith(inside) and s not in UNTOUCHED
                for p, s in repo.status(untracked_files="all").items()) else FileStatus.CURRENT
        return FileStatus.WT_NEW if full.exists() or full.is_symlink() else FileStatus.CURRENT
