"""One Python environment per dependency set, under ``[state] dir/envs/<key>``.

The key is a digest of what decides the environment's contents: the
interpreter's version, the dependency files' bytes, the install arguments and
the installer. A release whose key has an environment already uses it as it is
(no installer runs); a new key is built before the swap, while the live release
serves from its own environment, untouched. Environments are made with uv (its
cache makes a one-package difference about a second) or, where uv is missing,
``venv`` + ``pip``. A virtualenv cannot move once made, so it is built at its
final path and marked complete last; an unmarked one is a leftover.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..config import Release as ReleaseConfig
from ..process.child import Spec, describe_exit, run_to_end
from ..process.guard import Guard
from .snapshot import remove

log = logging.getLogger("supervisor.release")

COMPLETE = ".pushcd-complete"
DETECT = ("uv.lock", "requirements.txt", "pyproject.toml")  # the first one a release holds decides


class BuildFailed(Exception):
    """A release could not be made ready; the message is the reason a person reads."""


@dataclass(frozen=True)
class Deps:
    """The file that decides a release's environment, and its kind."""

    kind: str  # "uv.lock", "requirements" or "pyproject"
    file: str  # relative to the release's top

    def inputs(self) -> tuple[str, ...]:
        return (self.file, "pyproject.toml") if self.kind == "uv.lock" else (self.file,)


def dependencies(root: Path, requirements: str | None) -> Deps | None:
    """Which file decides the environment of the release at ``root``; None: no environment.

    ``requirements`` is [release] requirements: None detects, "" means none.
    """
    if requirements == "":
        return None
    if requirements is not None:
        if not (root / requirements).is_file():
            raise BuildFailed(f"[release] requirements = \"{requirements}\": the release has no such file; "
                              f"commit it, or set requirements = \"\" for no environment")
        return Deps(_kind(requirements), requirements)
    for name in DETECT:
        if (root / name).is_file() and (name != "pyproject.toml" or _has_dependencies(root / name)):
            return Deps(_kind(name), name)
    return None


def _kind(name: str) -> str:
    if name.endswith(".lock"):
        return "uv.lock"
    return "pyproject" if name.endswith(".toml") else "requirements"


def _has_dependencies(path: Path) -> bool:
    """A pyproject.toml may hold only tool settings: an environment only for one that lists dependencies."""
    try:
        return bool(tomllib.loads(path.read_text()).get("project", {}).get("dependencies"))
    except (OSError, ValueError):
        return True  # let the installer say what is wrong with it


def env_key(python_version: str, files: Iterable[tuple[str, bytes]], install_args: Sequence[str],
            installer: str) -> str:
    """What names an environment: the same inputs, the same key; any difference, another environment.

    >>> env_key("3.11.7", [("requirements.txt", b"flask\\n")], [], "uv")[:8]
    '88eb9b75'
    >>> env_key("3.12.1", [("requirements.txt", b"flask\\n")], [], "uv")[:8] != '88eb9b75'
    True
    """
    digest = hashlib.sha256(f"{python_version}\0{installer}\0{chr(0).join(install_args)}".encode())
    for name, data in files:
        digest.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def installer_error(lines: Sequence[str]) -> str:
    """The installer's own words for why it failed: from its first error line on, at most four lines.

    >>> installer_error(["Using Python 3.11", "  × No solution found when resolving dependencies:",
    ...                  "  ╰─▶ Because humanize==99 was not found, it is unsatisfiable."])
    '× No solution found when resolving dependencies: | ╰─▶ Because humanize==99 was not found, it is unsatisfiable.'
    >>> installer_error(["Collecting x", "ERROR: No matching distribution found for humanize==99"])
    'ERROR: No matching distribution found for humanize==99'
    """
    lines = [line.strip() for line in lines if line.strip()]
    start = next((i for i, line in enumerate(lines) if re.match(r"(×|error\b|ERROR\b)", line, re.I)),
                 max(0, len(lines) - 3))
    return " | ".join(lines[start:start + 4])


def uv_binary() -> str | None:
    """uv from the package pushcd depends on, else from PATH; None when there is none."""
    try:
        import uv  # type: ignore[import-not-found]

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


class Environments:
    """Finds or builds the environment a release needs; never touches one in use."""

    def __init__(self, root: Path, cfg: ReleaseConfig, *, guard: Guard | None = None,
                 unset: frozenset[str] = frozenset()) -> None:
        self.unset = unset  # pushcd's own secrets: an installer (or a package's build script) never sees them
        self.root = root
        self.configure(cfg)
        self.guard = guard
        self._versions: dict[tuple[str, float], str] = {}
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def configure(self, cfg: ReleaseConfig) -> None:
        """[release] python, install_args, installer, build_timeout (again on SIGHUP)."""
        self.python, self.install_args = cfg.python, list(cfg.install_args)
        self.installer, self.timeout = cfg.installer, cfg.build_timeout

    def _tool(self) -> str:
        """"uv" or "pip", as [release] installer says and the machine allows."""
        if self.installer == "pip":
            return "pip"
        if uv_binary() is not None:
            return "uv"
        if self.installer == "uv":
            raise BuildFailed("[release] installer = \"uv\" but uv is not installed; `pip install uv` into "
                              "pushcd's environment, or set installer = \"auto\"")
        return "pip"

    async def _version(self) -> str:
        """The interpreter's full version; asked once per interpreter file (a changed one is asked again)."""
        found = shutil.which(self.python)
        if found is None:
            raise BuildFailed(f"[release] python = \"{self.python}\" is not found on PATH; install it or give "
                              f"its full path")
        real = os.path.realpath(found)
        stamp = (real, os.stat(real).st_mtime)
        if stamp not in self._versions:
            proc = await asyncio.create_subprocess_exec(real, "-c", "import sys; print(sys.version)",
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            self._versions[stamp] = out.decode().strip()
        return self._versions[stamp]

    async def key(self, root: Path, deps: Deps) -> str:
        files = [(name, (root / name).read_bytes()) for name in deps.inputs() if (root / name).is_file()]
        return env_key(await self._version(), files, self.install_args, self._tool())

    def path(self, key: str) -> Path | None:
        """The complete environment of ``key``, or None when it has to be built."""
        env = self.root / key
        return env if (env / COMPLETE).exists() else None

    async def build(self, root: Path, deps: Deps, key: str) -> Path:
        """Build the environment ``key`` for the release at ``root``; BuildFailed names the installer's error."""
        env = self.root / key
        remove(env)  # an unfinished one
        tool = self._tool()
        try:
            for argv, extra in self._commands(tool, deps, env, root):
                spec = Spec(argv, root, stop_timeout=5, unset=self.unset)
                try:
                    code, child = await run_to_end(spec, "install", self.timeout, self.guard, extra)
                except OSError as exc:
                    raise BuildFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
                if code != 0:
                    how = f"timed out after {self.timeout:g}s" if code is None else describe_exit(code)
                    raise BuildFailed(f"installing {deps.file} with {tool} failed ({how}): "
                                      f"{installer_error(list(child.tail))}")
        except BaseException:
            remove(env)
            raise
        (env / COMPLETE).write_text(f"{deps.file}\n")
        return env

    def _commands(self, tool: str, deps: Deps, env: Path, root: Path
                  ) -> list[tuple[list[str], dict[str, str]]]:
        python = str(env / "bin" / "python")
        if tool == "uv":
            uv = uv_binary() or "uv"
            quiet = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
            make = ([uv, "venv", "--quiet", "--python", self.python, str(env)], quiet)
            if deps.kind == "uv.lock":
                return [make, ([uv, "sync", "--frozen", "--no-install-project", *self.install_args],
                               {**quiet, "UV_PROJECT_ENVIRONMENT": str(env)})]
            return [make, ([uv, "pip", "install", "--python", python, "-r", deps.file, *self.install_args], quiet)]
        if deps.kind == "uv.lock":
            raise BuildFailed(f"{deps.file} needs uv to install, and uv is not installed; `pip install uv` into "
                              f"pushcd's environment, or set [release] requirements to a requirements file")
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *self.install_args]
        if deps.kind == "pyproject":
            wanted = tomllib.loads((root / deps.file).read_text()).get("project", {}).get("dependencies", [])
            install = [*pip, *wanted] if wanted else []
        else:
            install = [*pip, "-r", deps.file]
        quiet_env: dict[str, str] = {"PIP_NO_WARN_SCRIPT_LOCATION": "1"}
        made = ([self.python, "-m", "venv", str(env)], quiet_env)
        return [made, (install, quiet_env)] if install else [made]

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Remove the environments no kept release uses."""
        wanted = set(keep)
        gone = []
        for env in self.root.iterdir():
            if env.is_dir() and env.name not in wanted:
                remove(env)
                gone.append(env.name)
        return gone
