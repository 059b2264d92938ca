"""Wire the parts together and run them in one asyncio process.

    import asyncio
    from supervisor import config, runner
    asyncio.run(runner.serve(config.load("config.toml", prepare=True)))

Signals are handled here and nowhere else: SIGTERM and SIGINT stop the app
gracefully (``stop_signal``, then SIGKILL after ``stop_timeout``) and return.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from typing import Callable

import pygit2
from aiohttp import web

from . import control, intake
from .config import Address, Settings
from .deploy import Deployer
from .guard import Guard
from .release import Releases
from .watch import Expected, watch_tree
from .worktree import GitFailure, GitThread, WorkTree, set_network_timeouts

log = logging.getLogger("supervisor")


class StartupError(Exception):
    """Something a person must fix before we can start; one line, exit 2."""


async def _listen(app: web.Application, addr: Address, key: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, addr.host, addr.port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        hint = "pick another port" if exc.errno == errno.EADDRINUSE else "check the address"
        raise StartupError(f"{key} = \"{addr}\": cannot listen ({exc.strerror}); {hint} in {key.split()[0]}") from None
    server = site._server  # the bound port, for port 0
    port = server.sockets[0].getsockname()[1] if server and server.sockets else addr.port  # type: ignore[union-attr]
    return runner, port


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        raw = settings.raw
        set_network_timeouts(raw.repo.fetch_timeout)
        try:
            self.tree = WorkTree(settings.repo_path, raw.repo.remote, raw.repo.branch)
            self.tree.check_branch()
        except GitFailure as exc:
            raise StartupError(f"[repo] {exc}") from None
        self._reader = pygit2.Repository(str(settings.repo_path))  # loop-thread reads only
        self._described: dict[str, dict[str, str]] = {}
        self.git = GitThread()
        self.expected = Expected(settings.repo_path)
        try:
            self.releases = Releases(settings)
        except OSError as exc:
            raise StartupError(f"[app] listen = \"{settings.app_listen}\": cannot bind ({exc.strerror}); "
                               f"pick another port") from None
        self.guard: Guard | None = None
        if raw.app.ready.http and not raw.app.ready.http.startswith(("http://", "https://")):
            if not settings.app_listen or "{probe_fd}" not in " ".join(raw.app.command):
                raise StartupError(
                    f"[app.ready] http = \"{raw.app.ready.http}\" cannot reach the new child alone: "
                    f"add {{probe_fd}} to [app] command (e.g. --bind fd://{{probe_fd}}) with [app] listen set, "
                    f"or give a full URL of the app's own port")
        self.deployer = Deployer(self.tree, self.git, self.releases, self.expected,
                                 on_diverge=raw.repo.on_diverge, probation=raw.deploy.probation,
                                 before_restart=raw.deploy.before_restart,
                                 before_restart_timeout=raw.deploy.before_restart_timeout)
        self.intake = intake.Intake(secret=settings.secret, branch=raw.repo.branch, full_name=raw.repo.full_name,
                                    allow_sha1=raw.webhook.allow_sha1, request_deploy=self.deployer.request_deploy)
        self.stop_event = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.webhook_port = 0
        self.control_port = 0

    @property
    def webhook_url(self) -> str:
        host = self.settings.webhook_listen.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.webhook_port}{self.settings.raw.webhook.path}"

    def describe(self, sha: str) -> dict[str, str]:
        if sha not in self._described:
            try:
                commit = self._reader[sha]
                msg = commit.message.strip()
                self._described[sha] = {"message": msg.splitlines()[0] if msg else "", "author": commit.author.name}
            except (KeyError, ValueError):
                return {"message": "", "author": ""}
        return self._described[sha]

    async def start(self) -> None:
        raw = self.settings.raw
        self.guard = self.releases.guard = self.deployer.guard = Guard()
        hook_runner, self.webhook_port = await _listen(
            intake.make_app(self.intake, raw.webhook.path), self.settings.webhook_listen, "[webhook] listen")
        self._runners.append(hook_runner)
        ctl_runner, self.control_port = await _listen(
            control.make_app(self), self.settings.control_listen, "[control] listen")
        self._runners.append(ctl_runner)
        log.info("webhook on %s; status on http://%s:%d/status", self.webhook_url,
                 self.settings.control_listen.host, self.control_port)
        await self.deployer.start()
        self._tasks.append(asyncio.create_task(self.deployer.run(), name="deployer"))
        if raw.watch.enabled:
            self._tasks.append(asyncio.create_task(watch_tree(
                self.settings.repo_path, self.settings.watch_paths, raw.watch.ignore, raw.watch.debounce_ms,
                self.expected, lambda _changed: self.deployer.request_restart("watch"), self.stop_event),
                name="watch"))

    async def close(self) -> None:
        self.stop_event.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.releases.stop()
        for runner in self._runners:
            await runner.cleanup()
        self.releases.close()
        if self.guard is not None:
            self.guard.close()
        # Let a git operation in flight finish (a half-done checkout is worse than a late exit).
        await asyncio.get_running_loop().run_in_executor(None, self.git.close)


async def serve(settings: Settings, on_ready: Callable[[Supervisor], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; the one place signals are handled."""
    loop = asyncio.get_running_loop()
    sup = Supervisor(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sup.stop_event.set)
    try:
        await sup.start()
        if on_ready is not None:
            on_ready(sup)
        await sup.stop_event.wait()
        log.info("stopping: app gets %s, SIGKILL after %gs", settings.stop_signal.name, settings.raw.app.stop_timeout)
    finally:
        await sup.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
