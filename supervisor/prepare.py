"""A release's preparation: ``[deploy] before_restart``, then the release task, run inside the release.

Both run before anything of the release serves, in its folder and its Python
environment with the app's environment (what the web process will see), each
to its end under a timeout. ``before_restart`` may write into a fresh folder
(collectstatic), so it runs before the folder is sealed; the release task
(``[deploy] release_command`` or the Procfile's ``release:`` line, migrations)
runs once per release, which :mod:`supervisor.road` decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .failure import Failure
from .process.child import Spec, describe_exit, run_to_end
from .process.guard import Guard

if TYPE_CHECKING:
    from .built import Built
    from .process.web import Web


class Preparation:
    """The commands; replaced on SIGHUP through :meth:`configure`."""

    def __init__(self, web: "Web", guard: Guard | None = None) -> None:
        self.web = web  # how a process of a release starts (folder, environment)
        self.guard = guard
        self.configure([], 300.0, [], 300.0)

    def configure(self, before_restart: list[list[str]], before_restart_timeout: float,
                  release_command: list[str], release_timeout: float) -> None:
        self.before_restart = [list(argv) for argv in before_restart]
        self.before_restart_timeout = before_restart_timeout
        self.release_command = list(release_command)
        self.release_timeout = release_timeout

    def release_task(self, built: "Built") -> list[str]:
        """The Procfile's release: line, else [deploy] release_command ([] for none)."""
        return (built.procfile or {}).get("release") or self.release_command

    async def run_before_restart(self, built: "Built") -> Failure | None:
        """Each before_restart command in turn; None when all succeeded, else why the first failing one failed."""
        for argv in self.before_restart:
            why = await self.run_in(built, argv, "before_restart", "before_restart", self.before_restart_timeout)
            if why is not None:
                return why
        return None

    async def run_release_task(self, built: "Built") -> Failure | None:
        argv = self.release_task(built)
        if not argv:
            return None
        return await self.run_in(built, argv, "release", "release task", self.release_timeout,
                                 {"SUPERVISOR_PROCESS": "release"})

    async def run_in(self, built: "Built", argv: list[str], label: str, what: str, timeout: float,
                     env: dict[str, str] | None = None) -> Failure | None:
        """One command run to its end in ``built`` (its folder, its environment); None when it exited 0,
        else why, ``what`` first: its exit, or its timeout, with the telling line of its output.
        A cancel (pushcd stopping) stops and reaps it before it propagates."""
        spec = self.web.spec(built)
        spec = Spec(argv, spec.cwd, {**spec.env, **(env or {})}, stop_timeout=5, unset=spec.unset)
        try:
            code, child = await run_to_end(spec, label, timeout, self.guard)
        except OSError as exc:
            return Failure(f"{what} {argv[0]}: {exc.strerror or exc}")
        if code is None:
            return Failure.of(f"{what} {' '.join(argv)} timed out after {timeout:g}s", child)
        return Failure.of(f"{what} {' '.join(argv)} {describe_exit(code)}", child) if code else None
