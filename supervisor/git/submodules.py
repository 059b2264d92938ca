"""Submodules: which URLs a pushed ``.gitmodules`` may make us fetch, and bringing them to the recorded
revisions from those URLs only."""

from __future__ import annotations

import fnmatch
import re
import urllib.parse
from pathlib import Path
from typing import Sequence

import pygit2

from ..config import GitAuth
from .credentials import Credentials
from .errors import GitFailure


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


def update(repo: pygit2.Repository, path: Path, remote: str, auth: GitAuth | None, allowed: Sequence[str]) -> None:
    """Bring submodules to the revisions the commit records (cloning new ones), from allowed URLs only."""
    gitmodules = path / ".gitmodules"
    if not gitmodules.exists():
        return
    try:
        remote_url = repo.remotes[remote].url or ""
    except KeyError:
        remote_url = ""
    for entry in pygit2.Config(str(gitmodules)):
        if entry.name.startswith("submodule.") and entry.name.endswith(".url"):
            problem = submodule_url_problem(entry.value or "", remote_url, allowed)
            if problem:
                raise GitFailure(f"submodule {entry.name[len('submodule.'):-len('.url')]}: {problem}")
    callbacks = Credentials(auth)
    try:
        repo.submodules.update(init=True, callbacks=callbacks)
    except (pygit2.GitError, OSError) as exc:
        raise GitFailure(f"submodule update failed: {callbacks.explain(exc, 'a submodule remote')}") from None
