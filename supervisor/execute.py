"""`pushcd exec -- CMD`: a command in a release, exactly as its web process (or a process type) sees it.

The release is the live one: the running pushcd's, asked through its control API, or, when it is not
running, the one its ledger says last went live. ``--release`` picks another kept release by id or
commit. The command runs in the release's folder ([app] cwd within it, or the process type's), with
its Python environment first on PATH and the app's environment ([app.env], the config vars it runs with,
``SUPERVISOR_*``), without
the variables pushcd reads its own secrets from. pushcd then *becomes* the command (exec): the terminal,
stdin and stdout, signals (Ctrl-C) and the exit status are the command's own, with nothing in between.

The state dir is only read: a running pushcd may be building a release folder meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

from .built import Built
from .config import Settings, procfile_types
from .configvars import CONFIG_VARS, ConfigVars, ConfigVarsError
from .ledger import Ledger
from .process.web import Web
from .releases.builder import read_procfile
from .releases.pyenv import COMPLETE, BuildFailed
from .releases.store import Store


class ExecError(Exception):
    """Why the command cannot run: one line naming what to do; ``code`` is the exit status (127: not found)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def release(settings: Settings, ref: str | None, live: dict[str, object] | None) -> Built:
    """The release to run in: ``ref`` (a kept release's id or commit), else the live one (``live``: the
    running pushcd's /status, None when it is not running), else the last good one in the ledger."""
    raw, state = settings.raw, settings.state_dir
    if raw.release.mode == "in-place":
        commit = str((live or {}).get("deployed_commit") or pygit2.Repository(str(settings.repo_path)).head.target)
        return Built(commit, settings.repo_path, procfile=_procfile(settings, settings.repo_path),
                     config=_config(state, "", live))
    store = Store(state / "releases", tidy=False)
    if ref is None:
        running = (live or {}).get("release") or {}
        ref = str(running.get("id") or "") if isinstance(running, dict) else ""
        if not ref:
            good = Ledger.load(state / "ledger.json").good  # an empty ledger when there is none yet
            if good is None:
                raise ExecError(f"no release has gone live yet in {state}; start pushcd first, or give --release")
            ref = good.id or good.commit
    kept = store.find(ref)
    if kept is None:
        raise ExecError(f"{ref}: no kept release has that id or commit (`pushcd releases` lists them)")
    env = state / "envs" / kept.env if kept.env else None
    if env is not None and not (env / COMPLETE).exists():
        raise ExecError(f"release {kept.id}: its environment {env} is gone; deploy it again to rebuild it")
    root = store.path(kept.id)
    return Built(kept.commit, root, kept.id, env, kept.env, kept.dirty, procfile=_procfile(settings, root),
                 pycache=state / "pycache", config=_config(state, kept.id, live))


def _config(state: Path, release_id: str, live: dict[str, object] | None) -> str:
    """The config vars the release runs with: the live one's, else the last good one's, else the current ones."""
    running = (live or {}).get("release")
    if isinstance(running, dict) and running.get("id", "") == release_id and "config" in running:
        return str(running["config"])
    good = Ledger.load(state / "ledger.json").good
    if good is not None and good.id == release_id:
        return good.config
    return ConfigVars(state / CONFIG_VARS).current


def _procfile(settings: Settings, root: Path) -> dict[str, list[str]] | None:
    try:
        return read_procfile(root, settings.raw.app.procfile)
    except BuildFailed:
        return None


def environment(settings: Settings, built: Built, process: str | None) -> tuple[Path, dict[str, str]]:
    """Where the command runs and with what environment: the web process's, or ``process``'s."""
    try:
        spec = Web(settings.app, config_vars=ConfigVars(settings.state_dir / CONFIG_VARS).values).spec(built)
    except ConfigVarsError as exc:
        raise ExecError(str(exc)) from None
    cwd, env = Path(spec.cwd), dict(spec.env)
    if process is not None and process != "web":
        types = {t.name: t for t in procfile_types(settings.processes, built.procfile)}
        if process not in types:
            raise ExecError(f"no process type {process}; the release has: {', '.join(['web', *sorted(types)])}")
        cwd = built.root / types[process].subdir
        env.update(types[process].env)
        env.update(SUPERVISOR_PROCESS=process, SUPERVISOR_PROCESS_INDEX="0")
    outside = {k: v for k, v in os.environ.items() if k not in spec.unset}
    return cwd, {**outside, **env}


def run(settings: Settings, argv: list[str], ref: str | None, process: str | None,
        live: dict[str, object] | None) -> None:
    """Become ``argv`` in the release (never returns); ExecError says why it cannot."""
    if not argv:
        raise ExecError("give the command after --, e.g. pushcd exec -- python manage.py migrate")
    built = release(settings, ref, live)
    cwd, env = environment(settings, built, process)
    os.chdir(cwd)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise ExecError(f"{argv[0]}: {exc.strerror} (looked for in the release's PATH: {env.get('PATH', '')})",
                        127 if isinstance(exc, FileNotFoundError) else 126) from None
