"""Before anything starts: what ``run`` would trip over, each as one line a person can act on.

``pushcd check`` prints every problem found here (and exits 2); ``pushcd run`` refuses to start
on the same list, so a command that is not installed is a start-up error, not a crash to retry
forever. Only ``check`` asks the remote whether the branch exists (the network may be down when
``run`` starts, and the first fetch says so anyway).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

import pygit2

from .config import Address, Settings
from .git.credentials import Credentials
from .git.options import set_network_timeouts
from .releases.builder import read_procfile
from .releases.pyenv import BuildFailed, dependencies


def problems(settings: Settings) -> list[str]:
    """Everything ``run`` checks before it starts anything."""
    return [*_work_tree(settings), *_commands(settings), *_ports(settings)]


def remote_branch(settings: Settings) -> tuple[list[str], list[str]]:
    """Does the branch exist on the remote? (problems, notes); a remote we cannot reach is only a note."""
    raw = settings.raw
    try:
        repo = pygit2.Repository(str(settings.repo_path))
        remote = repo.remotes[raw.repo.remote]
    except (pygit2.GitError, KeyError, ValueError):
        return [], []  # no tree or no remote: _work_tree says so
    set_network_timeouts(min(raw.repo.fetch_timeout, 15.0))
    callbacks = Credentials(settings.auth)
    try:
        heads = {h.name for h in remote.list_heads(callbacks=callbacks)}
    except (pygit2.GitError, OSError) as exc:
        return [], [f"note: could not reach {raw.repo.remote} ({callbacks.explain(exc, remote.url or '?')}) to "
                    f"check that branch {raw.repo.branch} exists there"]
    if f"refs/heads/{raw.repo.branch}" not in heads:
        return [f"[repo] branch: {raw.repo.remote} ({remote.url}) has no branch {raw.repo.branch}; push it or set "
                f"[repo] branch to one of: {', '.join(sorted(h[11:] for h in heads if h.startswith('refs/heads/')))}"
                ], []
    return [], []


def _work_tree(settings: Settings) -> list[str]:
    raw, path = settings.raw, settings.repo_path
    if not path.exists() and raw.repo.url:
        return []  # cloned on start
    if not path.is_dir():
        return [f"[repo] path: {path} does not exist; clone your repository there first or set [repo] url to "
                f"have it cloned"]
    try:
        repo = pygit2.Repository(str(path))
    except pygit2.GitError:
        return [f"[repo] path: {path} is not a git work tree; clone your repository there"]
    out = []
    if repo.head_is_unborn:
        out.append(f"[repo] path: {path} has no commit yet; push a first commit")
    elif repo.head_is_detached or repo.head.shorthand != raw.repo.branch:
        current = "a detached HEAD" if repo.head_is_detached else repo.head.shorthand
        out.append(f"[repo] branch: {path} is on {current}, not {raw.repo.branch}; run `git checkout "
                   f"{raw.repo.branch}` there or set [repo] branch")
    if raw.repo.remote not in repo.remotes.names():
        out.append(f"[repo] remote: {path} has no remote named {raw.repo.remote!r}; add it or set [repo] remote")
    if not settings.app.cwd.is_dir():
        out.append(f"[app] cwd: {settings.app.cwd} does not exist in the work tree")
    return out


def work_tree_procfile(settings: Settings) -> dict[str, list[str]] | None:
    """The Procfile the work tree holds ([app] procfile), parsed; None without one, or when it does not parse
    (a deploy reports that, naming the line)."""
    try:
        return read_procfile(settings.repo_path, settings.raw.app.procfile)
    except BuildFailed:
        return None


def _web(settings: Settings) -> tuple[str, list[str]]:
    """Where the web command comes from, and the command: [app] command, else the web: line of the Procfile
    the work tree holds ([app] procfile)."""
    if settings.app.command or not settings.raw.app.procfile:
        return "[app] command", list(settings.app.command)
    web = (work_tree_procfile(settings) or {}).get("web", [])
    return f"[app] procfile = \"{settings.raw.app.procfile}\", web:", web


def _commands(settings: Settings) -> list[str]:
    app = settings.app
    key, web = _web(settings)
    if not web:
        return [f"{key} no web command: give [app] command, or a web: line in the Procfile"]
    argvs = [(key, web)]
    argvs += [("[deploy] before_restart", argv) for argv in settings.raw.deploy.before_restart if argv]
    out = []
    from_env = _has_environment(settings)
    for key, argv in argvs:
        if from_env and "/" not in argv[0]:
            continue  # `gunicorn`, `python`: found in the release's environment, which is not built yet
        why = missing(argv[0], app.cwd, app.env.get("PATH", os.environ.get("PATH", os.defpath)))
        if why:
            out.append(f"{key}: {why}")
    return out


def _has_environment(settings: Settings) -> bool:
    """Releases get a Python environment (snapshot mode, and the work tree holds a dependency file)."""
    release = settings.raw.release
    if release.mode != "snapshot" or not settings.repo_path.is_dir():
        return False
    try:
        return dependencies(settings.repo_path, release.requirements) is not None
    except BuildFailed:
        return False


def missing(program: str, cwd: Path, path: str) -> str | None:
    """Why ``program`` cannot be started; None when it can.

    >>> missing("sh", Path("/"), "/usr/bin:/bin") is None
    True
    >>> print(missing("no-such-program-x", Path("/"), "/usr/bin"))
    `no-such-program-x` is not found on PATH (/usr/bin); install it, or give its full path
    """
    if "/" in program:
        full = Path(program) if os.path.isabs(program) else cwd / program
        if not full.is_file():
            return f"{full} does not exist"
        if not os.access(full, os.X_OK):
            return f"{full} is not executable; chmod +x it, or start it through its interpreter"
        return None
    if shutil.which(program, path=path) is None:
        return f"`{program}` is not found on PATH ({path}); install it, or give its full path"
    return None


def _ports(settings: Settings) -> list[str]:
    addresses: list[tuple[str, Address | None]] = [("[webhook] listen", settings.webhook_listen),
                                                    ("[control] listen", settings.control_listen),
                                                    ("[app] listen", settings.app.listen)]
    out = []
    for key, addr in addresses:
        if addr is None or addr.port == 0:
            continue
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners themselves bind
            try:
                s.bind((addr.host, addr.port))
            except OSError as exc:
                hint = ("is another pushcd, or the app itself, running?" if exc.errno == errno.EADDRINUSE
                        else "check the address")
                out.append(f'{key} = "{addr}": cannot bind ({exc.strerror}); {hint}')
    return out
