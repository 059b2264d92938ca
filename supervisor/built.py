"""A release ready to start: a commit, the folder its files are in, the Python environment it runs with.

A leaf: the web process, the process types and the handlers use it, and the release folders
(:mod:`.releases`) make it, without importing one another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Built:
    """A release ready to start: where its files are and which environment it runs with."""

    commit: str
    root: Path  # its directory (in place: the work tree)
    id: str = ""  # "" in place
    env: Path | None = None
    env_key: str = ""
    dirty: bool = False  # holds hand edits not committed
    fresh: bool = field(default=False, compare=False)  # built just now: before_restart runs in it, then seal()
    procfile: dict[str, list[str]] | None = field(default=None, compare=False)  # its Procfile ([app] procfile)
    pycache: Path | None = None  # where Python may keep its bytecode: the release's own folders are read-only
    config: str = ""  # the digest of the config vars it runs with (:mod:`supervisor.configvars`; "" for none)

    def environ(self, base_path: str) -> dict[str, str]:
        """Variables every process of this release gets."""
        out = {"SUPERVISOR_COMMIT": self.commit, **environ(self.env, base_path)}
        if self.id:
            out.update(SUPERVISOR_RELEASE=self.id, SUPERVISOR_RELEASE_DIR=str(self.root))
        return out


def environ(env: Path | None, base_path: str) -> dict[str, str]:
    """What a process of a release with environment ``env`` needs: VIRTUAL_ENV and its bin/ first on PATH.

    >>> environ(Path("/s/envs/k"), "/usr/bin")["PATH"]
    '/s/envs/k/bin:/usr/bin'
    >>> environ(None, "/usr/bin")
    {}
    """
    if env is None:
        return {}
    return {"VIRTUAL_ENV": str(env), "PATH": f"{env / 'bin'}{os.pathsep}{base_path}"}
