"""The deployed git work tree, through libgit2 (pygit2); no ``git`` subprocess.

Every call here blocks (network, disk), so the deploy worker runs them in one
dedicated thread (:class:`~supervisor.git.thread.GitThread`), never on the event
loop; pygit2 drops the GIL inside libgit2 so the webhook keeps answering during a
slow fetch.

Moving the tree is all-or-nothing: local edits that the update would
overwrite are refused by name beforehand (linear in the size of the change),
libgit2's SAFE checkout checks every file again before it
writes one, submodules are updated next, and the branch ref moves last, only
when all of that succeeded. Any failure after the checkout began (a lock, a
bad tree, a submodule, a full disk) puts the paths it touched back to the
running commit at once and raises :class:`MoveFailed`. Other edits and
untracked files are left alone, exactly as ``git merge --ff-only`` does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pygit2
from pygit2.enums import CheckoutStrategy, FetchPrune, FileMode

from ..config import GitAuth
from . import edits, submodules
from .credentials import Credentials
from .errors import FetchError, GitFailure, MoveFailed
from .journal import Journal

PATHS_CHECKED_OUT = 1000  # up to this many changed paths, a checkout names them (libgit2 matches a list)


@dataclass(frozen=True)
class Facts:
    """What a decision about moving the tree needs to know, and nothing more."""

    head: str
    target: str
    head_is_ancestor: bool  # fast-forward possible
    target_is_ancestor: bool  # target is already in our history
    changed: tuple[str, ...]  # paths the move would write
    blocking: tuple[str, ...]  # local edits among them
    writes: dict[str, str | None] = field(default_factory=dict)  # path -> blob id it will hold (None: deleted)
    undo: dict[str, str | None] = field(default_factory=dict)  # path -> blob id it holds now (a repair writes it)


class WorkTree:
    def __init__(self, path: Path, remote: str, branch: str, auth: GitAuth | None = None,
                 journal: Journal | None = None, submodule_urls: Sequence[str] = ()) -> None:
        self.auth = auth
        self.submodule_urls = tuple(submodule_urls)
        self.journal = journal
        self.path = path
        self.remote = remote
        self.branch = branch
        self.local_ref = f"refs/heads/{branch}"
        self.remote_ref = f"refs/remotes/{remote}/{branch}"
        try:
            self.repo = pygit2.Repository(str(path))
        except pygit2.GitError as exc:
            raise GitFailure(f"{path} is not a git repository ({exc}); clone your repository there") from None

    def check_branch(self) -> None:
        """HEAD must be on the configured branch: we never switch branches for the user."""
        if self.repo.head_is_unborn:
            raise GitFailure(f"{self.path}: HEAD has no commit yet; push a first commit")
        if self.repo.head_is_detached or self.repo.head.name != self.local_ref:
            current = "a detached HEAD" if self.repo.head_is_detached else self.repo.head.shorthand
            raise GitFailure(
                f"{self.path} is on {current}, not {self.branch}; run `git checkout {self.branch}` there "
                f"or set [repo] branch"
            )

    def head(self) -> str:
        return str(self.repo.head.target)

    def forget_caches(self) -> None:
        """Drop libgit2's caches (objects, index, pack maps); they reload on the next use.

        Between deploys nothing needs them, and for a large tree they hold tens
        of megabytes of heap that a quiet supervisor should give back.
        """
        self.repo.free()

    def fetch(self) -> str:
        """Fetch remote/branch; return the remote tip."""
        try:
            remote = self.repo.remotes[self.remote]
        except KeyError:
            raise FetchError(f"no remote named {self.remote!r} in {self.path}; set [repo] remote") from None
        refspec = f"+{self.local_ref}:{self.remote_ref}"
        callbacks = Credentials(self.auth)
        self._begin("fetch")
        try:
            # prune: a branch deleted on the remote must not live on as a stale remote-tracking ref
            remote.fetch([refspec], message=f"supervisor: fetch {self.branch}", callbacks=callbacks,
                         prune=FetchPrune.PRUNE)
        except (pygit2.GitError, OSError) as exc:
            raise FetchError(f"fetch from {self.remote} ({remote.url}) failed: "
                             f"{callbacks.explain(exc, remote.url)}") from None
        finally:
            self._end()
        try:
            return str(self.repo.references[self.remote_ref].target)
        except KeyError:
            raise FetchError(f"{self.remote}/{self.branch} is gone: {self.remote} has no branch {self.branch} "
                             f"(deleted?); nothing is deployed until it is pushed again, or set [repo] branch"
                             ) from None

    def facts(self, target: str) -> Facts:
        head = self.head()
        if head == target:
            return Facts(head, target, True, True, (), ())
        old, new = self.repo[head], self.repo[target]
        changed: set[str] = set()
        writes: dict[str, str | None] = {}
        undo: dict[str, str | None] = {}
        for delta in self.repo.diff(old, new).deltas:
            changed.add(delta.old_file.path)
            changed.add(delta.new_file.path)
            writes.setdefault(delta.old_file.path, None)  # renamed away or deleted
            undo.setdefault(delta.new_file.path, None)  # added: a repair deletes it
            if delta.status != pygit2.enums.DeltaStatus.DELETED:
                writes[delta.new_file.path] = str(delta.new_file.id)
            if delta.status != pygit2.enums.DeltaStatus.ADDED:
                undo[delta.old_file.path] = str(delta.old_file.id)
        forward = self.repo.descendant_of(target, head)
        return Facts(
            head=head,
            target=target,
            head_is_ancestor=forward,
            # Both cannot hold for two commits: the second walk (the whole history of head, when target is not
            # in it) is only needed when the first failed.
            target_is_ancestor=not forward and self.repo.descendant_of(head, target),
            changed=tuple(sorted(changed)),
            blocking=tuple(edits.blocking(self.repo, self.path, changed)),
            writes=writes,
            undo=undo,
        )

    def commit_on_branch(self, rev: str, tip: str) -> str:
        """The full id of ``rev`` (a commit id or a prefix) if it is ``tip`` or in its history."""
        try:
            sha = str(self.repo.revparse_single(rev).peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise GitFailure(f"{rev}: no such commit in {self.remote}/{self.branch} (fetched just now)") from None
        if sha != tip and not self.repo.descendant_of(tip, sha):
            raise GitFailure(f"{rev} ({sha[:12]}) is not on the history of {self.remote}/{self.branch}; deploy a "
                             f"commit of that branch")
        return sha

    def is_ancestor(self, old: str, new: str) -> bool:
        try:
            return self.repo.descendant_of(new, old)
        except (KeyError, ValueError, pygit2.GitError):
            return False  # a commit this repository no longer has

    def backup(self, sha: str) -> str:
        name = f"refs/supervisor/backup/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha[:12]}"
        self.repo.references.create(name, sha, force=True)
        return name

    def _begin(self, op: str, **facts: object) -> None:
        if self.journal is not None:
            self.journal.begin(op, **facts)

    def _end(self) -> None:
        if self.journal is not None:
            self.journal.end()

    def move_to(self, target: str, reason: str, facts: Facts | None = None) -> None:
        """Check out ``target`` and point the branch at it; all or nothing (see the module doc)."""
        facts = facts if facts is not None and facts.target == target else self.facts(target)
        if facts.blocking:
            raise MoveFailed("local edits would be overwritten: " + ", ".join(facts.blocking))
        lock = Path(self.repo.path) / "index.lock"
        if lock.exists():  # checked first, so in the usual case nothing is written at all
            raise MoveFailed(f"{lock} exists: another git command is running in {self.path}, or one crashed; "
                             f"if none is running, remove that file")
        self._begin("move", source=facts.head, target=target, paths=list(facts.changed))
        try:
            # SAFE: refuse (before writing anything) if a file to update has local edits. Limited to the paths the
            # commits differ in (exact names, no globbing), libgit2 looks at those instead of every file of the tree.
            if len(facts.changed) <= PATHS_CHECKED_OUT:
                self.repo.checkout_tree(self.repo[target], paths=list(facts.changed),
                                        strategy=CheckoutStrategy.SAFE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH)
            else:
                self.repo.checkout_tree(self.repo[target], strategy=CheckoutStrategy.SAFE)
            submodules.update(self.repo, self.path, self.remote, self.auth, self.submodule_urls)
            self.repo.references[self.local_ref].set_target(target, f"supervisor: {reason}")
        except (pygit2.GitError, GitFailure, OSError) as exc:
            why = str(exc) if isinstance(exc, GitFailure) else f"checkout of {target[:12]} failed: {exc}"
            try:
                self.restore(facts.head, facts.changed)
            except (pygit2.GitError, OSError) as repair:
                raise MoveFailed(f"{why}; putting the tree back failed too ({repair}): the journal repairs it "
                                 f"at the next start") from None
            self._end()
            raise MoveFailed(why) from None
        self.repo.index.read(force=True)
        self._end()

    def restore(self, sha: str, paths: Iterable[str]) -> None:
        """Put ``paths`` (files and index entries) back to what commit ``sha`` holds; the ref is not moved.

        These are the paths a move was writing. None of them had local edits (the move checks
        that first and refuses), so whatever they hold now is the move's own doing, a write torn
        by a crash or a full disk included, and nothing of the user's is lost.
        """
        tree = self.repo[sha].peel(pygit2.Tree)
        keep, gone = [], []
        for path in paths:
            try:
                tree[path]
                keep.append(path)
            except KeyError:
                gone.append(path)  # created by the move: nothing stood there before
        index = self.repo.index
        index.read(force=True)
        for path in gone:
            self._remove(path)
            if path in index:
                index.remove(path)
        for path in keep:  # the entries too: a checkout does not put a submodule's gitlink back in the index
            entry = tree[path]
            if entry.filemode != FileMode.TREE:  # a folder there now (a type change): its files are in paths
                index.add(pygit2.IndexEntry(path, entry.id, entry.filemode))
        try:
            index.write()
            strategy = CheckoutStrategy.FORCE
        except pygit2.GitError:
            # Someone else holds index.lock: our failed checkout could not write the index
            # either, so it still matches ``sha``; put the files back without it.
            strategy = CheckoutStrategy.FORCE | CheckoutStrategy.DONT_UPDATE_INDEX
        if keep:
            self.repo.checkout_tree(tree, strategy=strategy, paths=keep)
        self.repo.index.read(force=True)

    def _remove(self, path: str) -> None:
        full = self.path / path
        if full.is_symlink() or full.is_file():
            full.unlink()
        elif full.is_dir():
            shutil.rmtree(full)  # a submodule the failed move was cloning
        parent = full.parent
        while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def recover(self) -> str | None:
        """Repair what a SIGKILL in the middle of a fetch or a move left; say what was done.

        Only our own leftovers are touched: lock files libgit2 holds during those
        operations, and the paths the interrupted move was writing (they had no
        local edits, or the move would not have started).
        """
        pending = self.journal.pending() if self.journal else None
        if pending is None:
            return None
        git_dir = Path(self.repo.path)
        locks = [git_dir / "index.lock", git_dir / "HEAD.lock", git_dir / "packed-refs.lock",
                 git_dir / "FETCH_HEAD.lock", git_dir / f"{self.local_ref}.lock", git_dir / f"{self.remote_ref}.lock"]
        removed = [str(p.relative_to(git_dir)) for p in locks if p.exists()]
        for p in locks:
            p.unlink(missing_ok=True)
        what = f"interrupted {pending.get('op')}"
        if pending.get("op") == "move":
            head = self.head()
            # The ref moves last: if it did not, go back to where we were; if it did, finish.
            self.restore(head, [p for p in pending.get("paths", []) if isinstance(p, str)])
            what += f" {str(pending.get('source'))[:12]}..{str(pending.get('target'))[:12]}: tree set to {head[:12]}"
        self.journal.end()  # type: ignore[union-attr]
        return what + (f"; removed stale {', '.join(removed)}" if removed else "")


def blob_id(path: Path) -> str | None:
    """The git blob id of what ``path`` holds now (None if it is gone, "dir" for a folder); read in chunks."""
    try:
        if path.is_symlink():
            data = os.readlink(path).encode()
            return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        with open(path, "rb") as f:
            digest = hashlib.sha1(b"blob %d\0" % os.fstat(f.fileno()).st_size)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        return "dir"
    return digest.hexdigest()


def describe_commit(repo: pygit2.Repository, sha: str) -> dict[str, str]:
    """A commit's subject line and author; empty strings for a commit this repo does not have."""
    try:
        commit = repo[sha]
    except (KeyError, ValueError):
        return {"message": "", "author": ""}
    message = commit.message.strip()
    return {"message": message.splitlines()[0] if message else "", "author": commit.author.name}


def clone(url: str, path: Path, branch: str, auth: GitAuth | None, submodule_urls: Sequence[str] = ()) -> None:
    """First start: clone ``url`` to ``path`` on ``branch`` (submodules too), all or nothing."""
    callbacks = Credentials(auth)
    partial = path.with_name(f".{path.name}.cloning")
    if partial.exists():
        shutil.rmtree(partial)  # a clone interrupted last time
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        pygit2.clone_repository(url, str(partial), checkout_branch=branch, callbacks=callbacks)
    except (pygit2.GitError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise FetchError(f"clone of {url} failed: {callbacks.explain(exc, url)}") from None
    try:
        submodules.update(pygit2.Repository(str(partial)), partial, "origin", auth, submodule_urls)
    except GitFailure:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(path)  # only a complete clone, submodules included, ever appears at [repo] path
