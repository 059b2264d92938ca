"""The deployed git work tree, through libgit2 (pygit2); no ``git`` subprocess.

Every call here blocks (network, disk), so the deploy worker runs them in one
dedicated thread (:class:`GitThread`), never on the event loop; pygit2 drops
the GIL inside libgit2 so the webhook keeps answering during a slow fetch.

Moving the tree is all-or-nothing: local edits that the update would
overwrite are refused by name beforehand (one status pass, whatever the size
of the change), libgit2's SAFE checkout checks every file again before it
writes one, submodules are updated next, and the branch ref moves last, only
when all of that succeeded. Any failure after the checkout began (a lock, a
bad tree, a submodule, a full disk) puts the paths it touched back to the
running commit at once and raises :class:`MoveFailed`. Other edits and
untracked files are left alone, exactly as ``git merge --ff-only`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import pygit2
from pygit2.enums import CheckoutStrategy, CredentialType, FileStatus, Option

from .config import GitAuth

T = TypeVar("T")
log = logging.getLogger("supervisor.worktree")

_UNTOUCHED = {FileStatus.CURRENT, FileStatus.IGNORED}


class GitFailure(Exception):
    """A git operation failed; the message says what and, where possible, the fix."""


class FetchError(GitFailure):
    pass


class MoveFailed(GitFailure):
    """Moving the tree failed; the tree, the index and the ref are back at the running commit."""


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


class GitThread:
    """One thread for all git work: calls are serialised and off the event loop.

    A daemon thread, so a call stuck in libgit2 (a fetch from a remote that stopped
    answering) cannot hold the process at exit: :meth:`close` waits a bounded time.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="git", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the call under way (waiting at most ``timeout`` s) and stop; True if the thread ended."""
        self._calls.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Credentials(pygit2.RemoteCallbacks):
    """Deploy key or token for fetch and clone, and a host key that must be known.

    pygit2's default accepts any SSH host key; here an unknown or changed host
    key fails (libgit2 checks ``known_hosts`` and tells us in ``valid``).
    """

    def __init__(self, auth: GitAuth | None) -> None:
        super().__init__()
        self.auth = auth or GitAuth()
        self.tried: list[str] = []

    def credentials(self, url: str, username_from_url: str | None, allowed_types: CredentialType):
        a = self.auth
        if allowed_types & CredentialType.SSH_KEY and a.ssh_key and "ssh" not in self.tried:
            self.tried.append("ssh")
            pub = a.ssh_key.with_name(a.ssh_key.name + ".pub")
            return pygit2.Keypair(username_from_url or "git", str(pub) if pub.exists() else None,
                                  str(a.ssh_key), a.ssh_passphrase)
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and a.token and "token" not in self.tried:
            self.tried.append("token")
            return pygit2.UserPass(username_from_url or a.username, a.token)
        if allowed_types & CredentialType.SSH_KEY and not a.ssh_key and "agent" not in self.tried:
            self.tried.append("agent")  # no key configured: the user's ssh-agent, as git would
            return pygit2.KeypairFromAgent(username_from_url or "git")
        raise pygit2.GitError("no (more) credentials to try")

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        return bool(valid)

    def explain(self, exc: Exception, url: str) -> str:
        a, text = self.auth, str(exc)
        if isinstance(exc, pygit2.CertificateError) or "hostkey" in text or "certificate" in text.lower():
            where = a.known_hosts or "~/.ssh/known_hosts"
            return (f"the host key of {url} is unknown or changed ({text}); add it to {where} "
                    f"(ssh-keyscan, then check the fingerprint) and set [repo.auth] known_hosts")
        if isinstance(exc, pygit2.AuthError) or "authentication" in text or "credentials" in text:
            if "ssh" in self.tried:
                return (f"authentication with the SSH key {a.ssh_key} was rejected by {url} ({text}); add its "
                        f"public half as a deploy key with read access, or fix [repo.auth] ssh_key")
            if "token" in self.tried:
                return (f"authentication with the token from ${a.token_env} (user {a.username}) was rejected by "
                        f"{url} ({text}); check the token is valid and can read the repository")
            return (f"{url} asks for credentials and none are configured ({text}); set [repo.auth] ssh_key "
                    f"or token_env")
        return text


PER_PATH_STATUS = 32  # up to this many changed paths, a status look-up each beats one pass over the tree
PACK_FILES_OPEN = 16
OBJECT_CACHE_BYTES = 8 << 20
PACK_MAP_BYTES = 64 << 20


def set_network_timeouts(seconds: float) -> None:
    """libgit2's socket timeouts, so a hung remote fails instead of hanging forever.

    Also caps the pack files libgit2 keeps open: every fetch adds a pack (libgit2
    has no ``fetch.unpackLimit``), and by default it keeps them all open, one more
    file descriptor per deploy, forever.
    """
    ms = max(1, int(seconds * 1000))
    pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, ms)
    pygit2.option(Option.SET_SERVER_TIMEOUT, ms)
    pygit2.option(Option.SET_MWINDOW_FILE_LIMIT, PACK_FILES_OPEN)
    # libgit2's object cache may grow to 256 MB and its pack maps to gigabytes by default;
    # a supervisor reads a few trees per deploy, so keep both small.
    pygit2.option(Option.SET_CACHE_MAX_SIZE, OBJECT_CACHE_BYTES)
    pygit2.option(Option.SET_MWINDOW_MAPPED_LIMIT, PACK_MAP_BYTES)


def use_known_hosts(known_hosts: Path, home: Path) -> None:
    """libgit2 reads ``$HOME/.ssh/known_hosts``; give it a home whose file is ours.

    This is process-wide (libgit2 has one home directory), so it also stops
    libgit2 reading the user's ~/.gitconfig: the work tree's own config still applies.
    """
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "known_hosts").write_bytes(known_hosts.read_bytes())
    pygit2.option(Option.SET_HOMEDIR, str(home))


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
            remote.fetch([refspec], message=f"supervisor: fetch {self.branch}", callbacks=callbacks)
        except (pygit2.GitError, OSError) as exc:
            raise FetchError(f"fetch from {self.remote} ({remote.url}) failed: "
                             f"{callbacks.explain(exc, remote.url)}") from None
        finally:
            self._end()
        try:
            return str(self.repo.references[self.remote_ref].target)
        except KeyError:
            raise FetchError(f"{self.remote} has no branch {self.branch}; push it or set [repo] branch") from None

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
        return Facts(
            head=head,
            target=target,
            head_is_ancestor=self.repo.descendant_of(target, head),
            target_is_ancestor=self.repo.descendant_of(head, target),
            changed=tuple(sorted(changed)),
            blocking=tuple(self.blocking(changed)),
            writes=writes,
            undo=undo,
        )

    def blocking(self, paths: set[str]) -> list[str]:
        """The paths (of ``paths``) with local edits, or with an untracked file or folder in the way.

        A small change asks about each path (about 1 ms each on a 20,000-file tree); a larger one
        takes one status pass over the tree (about 70 ms there) and looks each path up in it. Asking
        per path for every change was quadratic: 134 s for 50,000 files.
        """
        if len(paths) <= PER_PATH_STATUS:
            return sorted(p for p in paths if self._status(p) not in _UNTOUCHED)
        edited = {p.rstrip("/"): s for p, s in self.repo.status(untracked_files="normal").items()
                  if s not in _UNTOUCHED}
        if not edited:
            return []
        out = []
        for path in paths:
            parts = path.split("/")
            # the path itself, or an untracked file or folder standing where one of its folders goes
            if any("/".join(parts[:i]) in edited for i in range(1, len(parts) + 1)):
                out.append(path)
        return sorted(out)

    def _status(self, path: str) -> FileStatus:
        """One path's status."""
        try:
            return FileStatus(self.repo.status_file(path))
        except KeyError:
            return FileStatus.CURRENT  # in neither the index nor the work tree
        except pygit2.GitError:
            full = self.path / path
            # e.g. a folder now stands where the update puts a file: that blocks too
            return FileStatus.WT_NEW if full.exists() or full.is_symlink() else FileStatus.CURRENT

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
            # SAFE: refuse (before writing anything) if a file to update has local edits.
            self.repo.checkout_tree(self.repo[target], strategy=CheckoutStrategy.SAFE)
            self.update_submodules()
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

    def update_submodules(self) -> None:
        """Bring submodules to the revisions the commit records (cloning new ones), from allowed URLs only."""
        gitmodules = self.path / ".gitmodules"
        if not gitmodules.exists():
            return
        try:
            remote_url = self.repo.remotes[self.remote].url or ""
        except KeyError:
            remote_url = ""
        for entry in pygit2.Config(str(gitmodules)):
            if entry.name.startswith("submodule.") and entry.name.endswith(".url"):
                problem = submodule_url_problem(entry.value or "", remote_url, self.submodule_urls)
                if problem:
                    raise GitFailure(f"submodule {entry.name[len('submodule.'):-len('.url')]}: {problem}")
        callbacks = Credentials(self.auth)
        try:
            self.repo.submodules.update(init=True, callbacks=callbacks)
        except (pygit2.GitError, OSError) as exc:
            raise GitFailure(f"submodule update failed: {callbacks.explain(exc, 'a submodule remote')}") from None


def _origin(url: str) -> tuple[str, str] | None:
    """(scheme, host) of a git URL, scp-like ``user@host:path`` included; None for a local path.

    >>> _origin("https://github.com/o/r.git"), _origin("git@github.com:o/r.git"), _origin("/srv/r.git")
    (('https', 'github.com'), ('ssh', 'github.com'), None)
    """
    if "://" in url:
        parsed = urllib.parse.urlsplit(url)
        return (parsed.scheme.lower(), (parsed.hostname or "").lower())
    m = re.match(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?!/)", url)  # scp-like; "C:/x" and "/x" are paths
    if m and len(m["host"]) > 1:
        return ("ssh", m["host"].lower())
    return None


def submodule_url_problem(url: str, remote_url: str, allowed: Sequence[str] = ()) -> str | None:
    """Why a pushed ``.gitmodules`` may not fetch from ``url``; None when it may.

    A submodule comes from the main remote's scheme and host (or a URL relative to
    it), or from a URL matching a pattern in ``[repo] submodule_urls``. Local paths
    and ``file://`` are refused unless listed: a pushed ``.gitmodules`` must not copy
    a private repository of this machine into the deployed tree.

    >>> submodule_url_problem("https://github.com/o/lib.git", "https://github.com/o/app.git") is None
    True
    >>> submodule_url_problem("../lib.git", "git@github.com:o/app.git") is None
    True
    >>> print(submodule_url_problem("/srv/private.git", "https://github.com/o/app.git"))
    /srv/private.git is a local path; list it in [repo] submodule_urls to allow it
    >>> print(submodule_url_problem("https://evil.example/x.git", "https://github.com/o/app.git"))
    https://evil.example/x.git is not on github.com like the main remote; list it in [repo] submodule_urls to allow it
    >>> submodule_url_problem("/srv/git/lib.git", "/srv/git/app.git", ["/srv/git/*"]) is None
    True
    """
    if any(fnmatch.fnmatchcase(url, pattern) for pattern in allowed):
        return None
    hint = "list it in [repo] submodule_urls to allow it"
    if url.startswith(("./", "../")):
        if _origin(remote_url) is None:
            return f"{url} is relative to a local remote ({remote_url}); {hint}"
        return None  # same scheme and host as the main remote
    where = _origin(url)
    if where is None or where[0] == "file":
        return f"{url} is a local path; {hint}"
    remote = _origin(remote_url)
    if remote is None or where[1] != remote[1]:
        return f"{url} is not on {remote[1] if remote else remote_url} like the main remote; {hint}"
    if where[0] != remote[0]:
        return f"{url} does not use {remote[0]} like the main remote; {hint}"
    return None


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
        WorkTree(partial, "origin", branch, auth, submodule_urls=submodule_urls).update_submodules()
    except GitFailure:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(path)  # only a complete clone, submodules included, ever appears at [repo] path
