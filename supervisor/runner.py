"""Wire the parts together and run them in one asyncio process.

    import asyncio
    from supervisor import config, runner
    asyncio.run(runner.serve(config.load("config.toml")))

Signals are handled here and nowhere else: SIGTERM and SIGINT stop the app
gracefully (``stop_signal``, then SIGKILL after ``stop_timeout``) and return;
SIGHUP reloads the config file (a bad one is refused and the old one stays).
Under systemd (``Type=notify``) we send ``READY=1`` and ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import random
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Callable

from . import config
from .releases.builder import Builder, InPlace, Snapshots
from .releases.pyenv import Environments
from .releases.store import Store
from .config import ConfigError, Settings
from .configvars import CONFIG_VARS, ConfigVars, ConfigVarsError
from .console import Console
from .deploy import Deployer
from .failure import Failure
from .health import Health
from .mailbox import Kind
from .ledger import Ledger
from .marks import Marks
from .moves import Moves
from .prepare import Preparation
from .road import Road
from .schedule import Scheduler
from .git.journal import Journal
from .git.options import set_network_timeouts, use_known_hosts
from .git.thread import GitThread
from .git.tree import GitFailure, WorkTree, clone, describe_commit
from .ops import control, controltoken
from .ops.applog import AppLog
from .ops.history import History
from .ops.metrics import Metrics
from .ops.notify import Notifier
from .ops.record import Recorder
from .pause import Pause
from .ops.site import Site, StartupError, connection_caps, listen, quiet_exception_handler
from .process import reaper
from .process.guard import Guard
from .process.listener import ListenError, Listeners
from .process.web import Web
from .process.workers import Workers
from .watch import Armed, Expected, watch_tree
from .webhook import intake
from .webhook.delivery import GITEA, GITHUB, GITLAB, Verdict

log = logging.getLogger("supervisor")

RECEIVERS = {"github": GITHUB, "gitlab": GITLAB, "gitea": GITEA}


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) how we are; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state, exc)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(*map(str, settings.tls))
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"[webhook] tls_cert/tls_key: cannot load ({exc}); give a PEM certificate and its key") from None
    return ctx


def _hook_policy(settings: Settings, secret: bytes) -> dict[str, Any]:
    """A receiver's settings from the config file: the same at start-up and on SIGHUP."""
    raw = settings.raw
    return {"secret": secret, "full_name": raw.repo.full_name, "allow_sha1": raw.webhook.allow_sha1,
            "allow_from": settings.allow_from, "trusted_proxies": settings.trusted_proxies}


def _private_dir(path: Path) -> None:
    """The state dir holds the control token, the journal and the history: 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            log.warning("[state] dir %s is readable by others and cannot be made private (%s)", path, exc)


def _own(lock: Path, tree: Path) -> int:
    """One pushcd per work tree: a second one would move the same files and fight over the app.
    The lock (flock, in .git) goes with the process, however it ends."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(f"another pushcd (pid {holder}) already deploys {tree}; stop it first, or give this "
                           f"one its own clone") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


GIT_CLOSE_WAIT = 5.0  # seconds a git operation in flight may delay the exit (the journal repairs the rest)


def build(settings: Settings) -> "Supervisor":
    """Everything start-up does before anything runs: libgit2's settings, the work tree (cloned,
    repaired after a crash, on its branch), the history, the control token, the app's public
    address, the guard process; then the parts, wired. A StartupError names what to fix."""
    raw = settings.raw
    set_network_timeouts(raw.repo.fetch_timeout)
    tls = _tls_context(settings)
    _private_dir(settings.state_dir)
    if settings.auth.known_hosts:
        use_known_hosts(settings.auth.known_hosts, settings.state_dir / "ssh-home")
    try:
        if not settings.repo_path.exists() and raw.repo.url:
            log.info("cloning %s into %s", raw.repo.url, settings.repo_path)
            clone(raw.repo.url, settings.repo_path, raw.repo.branch, settings.auth, raw.repo.submodule_urls)
        tree = WorkTree(settings.repo_path, raw.repo.remote, raw.repo.branch, settings.auth,
                        Journal(settings.state_dir / "git-journal.json"), raw.repo.submodule_urls)
        owner = _own(Path(tree.repo.path) / "pushcd.lock", settings.repo_path)
        recovered = tree.recover()
        if recovered:
            log.warning("recovered the work tree after a crash: %s", recovered)
        tree.check_branch()
    except GitFailure as exc:
        raise StartupError(f"[repo] {exc}") from None
    history = History.open(settings.state_dir / "history.db", retention=raw.state.retention)
    # POSTs always need a token; reads too when the operator chose one ([control] token_env).
    token = settings.control_token or controltoken.ensure(settings.state_dir)
    try:
        applog = AppLog(settings.log_dir, max_bytes=raw.log.max_bytes, keep=raw.log.keep,
                        max_total=raw.log.max_total)
    except OSError as exc:
        os.close(owner)
        raise StartupError(f"[log] dir: cannot use {settings.log_dir} ({exc.strerror or exc})") from None
    try:
        config_vars = ConfigVars(settings.state_dir / CONFIG_VARS)
    except ConfigVarsError as exc:
        os.close(owner)
        raise StartupError(str(exc)) from None
    guard = Guard()
    try:
        web = Web(settings.app, guard,
                  on_line=lambda child, line: applog.line("web", child.pid, child.release, line),
                  public=Listeners(settings.app.listen) if settings.app.listen else None,
                  config_vars=config_vars.values)
    except ListenError as exc:
        guard.close()
        os.close(owner)
        raise StartupError(str(exc)) from None
    git = GitThread()
    expected = Expected(settings.repo_path)
    metrics = Metrics()
    notifier = Notifier(raw.notify, metrics, full_name=raw.repo.full_name, link=raw.control.public_url,
                        secrets=settings.notify_secrets, app=settings.name,
                        describe=lambda sha: git.run(describe_commit, tree.repo, sha))
    workers = Workers(guard, on_line=lambda name, child, line: applog.line(name, child.pid, child.release, line),
                      env=lambda built, _spec: web.spec(built).env, unset=settings.app.unset)
    marks = Marks(history, history.bad_commits())
    preparation = Preparation(web, guard)
    preparation.configure(raw.deploy.before_restart, raw.deploy.before_restart_timeout, raw.deploy.release_command,
                          raw.deploy.release_timeout)
    road = Road(web, workers, make_builder(settings, tree, git, guard),
                Ledger.load(settings.state_dir / "ledger.json"), preparation, marks=marks, history=history,
                processes=settings.processes, probation=raw.deploy.probation)
    deployer = Deployer(tree, git, road, Moves(tree, git, expected), Recorder(history, metrics, notifier.send),
                        on_diverge=raw.repo.on_diverge, pause=Pause.load(settings.state_dir / "paused.json"),
                        marks=marks, config_vars=config_vars)
    scheduler = Scheduler(settings.jobs, web, lambda: road.current, guard=guard, applog=applog, history=history,
                          metrics=metrics, notify=notifier.send)
    road.in_use = scheduler.in_use  # a release a job runs in is not pruned under it
    armed = settings.state_dir / "watch-armed"
    armed.mkdir(exist_ok=True)
    return Supervisor(settings, tree=tree, owner=owner, recovered=recovered, history=history, control_token=token,
                      tls=tls,
                      applog=applog, guard=guard, web=web, git=git, expected=expected, metrics=metrics,
                      deployer=deployer, notifier=notifier, armed=Armed(armed), scheduler=scheduler,
                      health=Health(web, raw.deploy.probation_failures, raw.deploy.probation_interval,
                                    probation=lambda: road.probation, workers=workers))


def make_builder(settings: Settings, tree: WorkTree, git: GitThread, guard: Guard | None) -> Builder:
    """[release] mode: the app runs from a folder of its own per release (snapshot), or in the work tree."""
    cfg, state = settings.raw.release, settings.state_dir
    if cfg.mode == "in-place":
        return InPlace(tree, git, settings.raw.app.procfile)
    envs = Environments(state / "envs", cfg, guard=guard, unset=settings.app.unset)
    return Snapshots(tree, git, Store(state / "releases"), envs, cfg, procfile_name=settings.raw.app.procfile,
                     pycache=state / "pycache", before_restart=settings.raw.deploy.before_restart)


class Supervisor:
    """The wired parts (see :func:`build`) and what runs them; the control API sees its :class:`Console`."""

    def __init__(self, settings: Settings, *, tree: WorkTree, owner: int, recovered: str | None, history: History,
                 control_token: bytes, tls: ssl.SSLContext | None, applog: AppLog,
                 guard: Guard, web: Web, git: GitThread, expected: Expected, metrics: Metrics,
                 deployer: Deployer, notifier: Notifier, armed: Armed, health: Health, scheduler: Scheduler) -> None:
        self.settings = settings
        self.tree = tree
        self.owner = owner  # the lock that makes this the one pushcd of the work tree
        self.recovered = recovered
        self.history = history
        self.control_token = control_token
        self.tls = tls
        self.applog = applog
        self.guard = guard
        self.web = web
        self.git = git
        self.expected = expected
        self.metrics = metrics
        self.deployer = deployer
        self.notifier = notifier
        self.health = health
        self.scheduler = scheduler
        health.unhealthy = lambda why: deployer.mailbox.put(Kind.RECOVER, "unhealthy", arg=why)
        health.report = self._health_changed
        raw = settings.raw
        self.intakes = {path: intake.Intake(
            branch=raw.repo.branch, request_deploy=deployer.request_deploy, seen=history.seen,
            paused=lambda: deployer.pause.reason,
            receiver=RECEIVERS[kind], on_verdict=self._on_verdict, **_hook_policy(settings, secret))
            for kind, path, secret in settings.hooks}
        self.started = time.time()
        self.last_reload: dict[str, object] | None = None
        self.stop_event = asyncio.Event()
        self._sites: list[Site] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_stop = asyncio.Event()
        self.armed = armed
        self.webhook_port = 0
        self.control_port = 0
        self.console = Console(deployer, web, git, tree, history, metrics, applog, about=self._about, health=health,
                               scheduler=scheduler)
        metrics.watch(self.console.live_facts)  # last: the registry reads it once right away

    def _about(self) -> dict[str, Any]:
        """What only the supervisor knows, for /status."""
        reload = self.last_reload and {**self.last_reload, "waiting_for_restart": self.console.waiting()}
        return {"app": self.settings.name, "webhook_url": self.webhook_url,
                "supervisor_uptime": round(time.time() - self.started, 3),
                "last_reload": reload}

    def _health_changed(self, name: str, problem: Failure | None) -> None:
        """After probation, a process's health check keeps failing (or passes again): told, and with
        [deploy] restart_unhealthy that process type restarts through its gate."""
        if problem is None:
            return
        self.deployer.work.recorder.tell("unhealthy", self.deployer.deployed, str(problem), problem.failing_line)
        if self.settings.raw.deploy.restart_unhealthy:
            self.deployer.request_restart("unhealthy", name)

    def _proxy(self, peer: str) -> bool:
        """A trusted proxy ([webhook] trusted_proxies): every sender comes through it."""
        return bool(self.settings.trusted_proxies) and intake.allowed(peer, self.settings.trusted_proxies)

    def _admits(self, peer: str) -> bool:
        """Who may open a connection to the webhook at all: [webhook] allow_from, or a trusted proxy (behind
        which the handler judges X-Forwarded-For). Read at each connection: SIGHUP may change it."""
        return intake.allowed(peer, self.settings.allow_from) or self._proxy(peer)

    def _on_verdict(self, verdict: Verdict, event: str | None, timing: intake.Timing) -> None:
        self.metrics.deliveries.labels(verdict.verdict).inc()
        self.metrics.webhook_latency.observe(timing.total)
        for phase, seconds in timing.phases.items():
            self.metrics.webhook_phase.labels(phase).observe(seconds)
        self.history.record_delivery(verdict.delivery, event, verdict.verdict, verdict.reason)

    def hook_url(self, path: str) -> str:
        return self.settings.webhook_listen.url(self.webhook_port, "https" if self.tls else "http") + path

    @property
    def webhook_url(self) -> str:
        """The first receiver's URL (GitHub's, when configured)."""
        return self.hook_url(next(iter(self.intakes)))

    async def start(self) -> None:
        """Listen, start the app, arm the watcher; returns when all of it is ready."""
        raw = self.settings.raw
        caps = connection_caps({"[webhook]": raw.webhook.max_connections, "[control]": raw.control.max_connections})
        hooks = await listen(intake.make_app(self.intakes), self.settings.webhook_listen, "[webhook] listen",
                             header_timeout=raw.webhook.header_timeout, max_connections=caps["[webhook]"],
                             ssl_context=self.tls, admits=self._admits, unlimited=self._proxy)
        self._sites.append(hooks)
        ctl = await listen(control.make_app(self.console, self.control_token, self.settings.control_token is not None,
                                            raw.control.hosts),
                           self.settings.control_listen, "[control] listen",
                           header_timeout=raw.control.header_timeout, max_connections=caps["[control]"])
        self._sites.append(ctl)
        self.webhook_port, self.control_port = hooks.port, ctl.port
        log.info("webhook on %s; status on %s/",
                 ", ".join(f"{i.receiver.name} {self.hook_url(p)}" for p, i in self.intakes.items()),
                 self.settings.control_listen.url(self.control_port))
        self._start_watch()  # first: a change made while the app starts is not lost
        await self.deployer.start()
        self._tasks.append(asyncio.create_task(self.deployer.run(), name="deployer"))
        if self.recovered:
            self.deployer.request_deploy("webhook")  # redo the deploy the crash interrupted
        self._tasks.append(asyncio.create_task(self._poll(), name="poll"))
        self._tasks.append(asyncio.create_task(self._flush_history(), name="history"))
        self._tasks.append(asyncio.create_task(self._reap(), name="reap"))
        self._tasks.append(asyncio.create_task(self.notifier.run(), name="notify"))
        self._tasks.append(asyncio.create_task(self.health.run(), name="health"))
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        if raw.watch.enabled:
            await self.armed.wait()  # ready means: a file written from now on restarts the app

    async def _reap(self) -> None:
        """Orphans the app handed to us (subreaper) that exited on their own: no zombies."""
        while True:
            await asyncio.sleep(2.0)
            reaper.reap_exited()

    async def _flush_history(self) -> None:
        """Write queued delivery rows twice a second (in one transaction each time)."""
        while True:
            await asyncio.sleep(0.5)
            self.history.flush()

    async def _poll(self) -> None:
        """[repo] poll_interval: fetch on a timer, for boxes GitHub cannot reach.

        It only asks for a deploy; the worker deploys when the tip moved, so a
        push that also sent its webhook is deployed once.
        """
        while True:
            interval = self.settings.raw.repo.poll_interval  # re-read: SIGHUP may change it
            if interval <= 0:
                await asyncio.sleep(5.0)  # off; look again in a while
                continue
            # up to 10% jitter, so many boxes polling one origin do not move in step
            await asyncio.sleep(interval * (1 + 0.1 * random.random()))
            if self.settings.raw.repo.poll_interval > 0 and not self.deployer.queued \
                    and self.deployer.pause.reason is None:
                self.deployer.request_deploy("poll")

    def _start_watch(self) -> None:
        raw, s = self.settings.raw, self.settings
        if not raw.watch.enabled:
            return
        self._watch_stop = asyncio.Event()
        ignore = list(raw.watch.ignore)
        if raw.release.mode == "snapshot":  # what the app writes through a [release] link is data, not code
            ignore += [p for entry in raw.release.link for p in (entry.rstrip("/"), entry.rstrip("/") + "/*")]
        self._tasks.append(asyncio.create_task(watch_tree(
            s.repo_path, s.watch_paths, ignore, raw.watch.debounce_ms, self.expected,
            lambda _changed: self.deployer.request_restart("watch"), self._watch_stop, self.armed), name="watch"))

    def reload(self) -> None:
        """SIGHUP: apply a valid new config without dropping the app; refuse a bad one."""
        try:
            new = config.load(self.settings.source)
            fixed = [name for name, a, b in [
                ("[webhook] listen", new.webhook_listen, self.settings.webhook_listen),
                ("[webhook] tls_cert/tls_key", new.tls, self.settings.tls),
                ("[control] listen", new.control_listen, self.settings.control_listen),
                ("[control] hosts, header_timeout, max_connections (and [webhook]'s)",
                 (new.raw.control.hosts, new.raw.control.header_timeout, new.raw.control.max_connections,
                  new.raw.webhook.header_timeout, new.raw.webhook.max_connections),
                 (self.settings.raw.control.hosts, self.settings.raw.control.header_timeout,
                  self.settings.raw.control.max_connections, self.settings.raw.webhook.header_timeout,
                  self.settings.raw.webhook.max_connections)),
                ("[app] listen", new.app.listen, self.settings.app.listen),
                ("[repo] path", new.repo_path, self.settings.repo_path),
                ("[repo] remote/branch", (new.raw.repo.remote, new.raw.repo.branch),
                 (self.settings.raw.repo.remote, self.settings.raw.repo.branch)),
                ("[state] dir", new.state_dir, self.settings.state_dir),
                ("[log] dir", new.log_dir, self.settings.log_dir),
                ("[release] mode", new.raw.release.mode, self.settings.raw.release.mode),
                ("webhook receivers and paths", [h[:2] for h in new.hooks], [h[:2] for h in self.settings.hooks]),
            ] if a != b]
            if fixed:
                raise ConfigError(f"{', '.join(fixed)} cannot change while running; restart pushcd for that")
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.last_reload = {"ok": False, "reason": str(exc), "at": time.time()}
            return
        old_watch = self.settings.raw.watch, self.settings.watch_paths, self.settings.raw.release.link
        self.settings = new
        raw = new.raw
        for _kind, path, secret in new.hooks:
            self.intakes[path].configure(**_hook_policy(new, secret))
        self.web.app = new.app  # whole, used from the next start on
        d = self.deployer
        d.on_diverge, d.road.probation, d.road.processes = raw.repo.on_diverge, raw.deploy.probation, new.processes
        self.health.failures, self.health.interval = raw.deploy.probation_failures, raw.deploy.probation_interval
        self.scheduler.configure(new.jobs)
        self.applog.max_bytes, self.applog.keep, self.applog.max_total = (raw.log.max_bytes, raw.log.keep,
                                                                          raw.log.max_total)
        d.road.preparation.configure(raw.deploy.before_restart, raw.deploy.before_restart_timeout,
                                     raw.deploy.release_command, raw.deploy.release_timeout)
        self.history.retention = raw.state.retention
        self.deployer.builder.configure(raw.release, raw.app.procfile, raw.deploy.before_restart)
        n = self.notifier
        n.configure(raw.notify, new.notify_secrets)
        n.full_name, n.link = raw.repo.full_name, raw.control.public_url
        set_network_timeouts(raw.repo.fetch_timeout)
        self.tree.auth = new.auth  # the next fetch uses the new credentials
        if new.auth.known_hosts:
            use_known_hosts(new.auth.known_hosts, new.state_dir / "ssh-home")
        if (raw.watch, new.watch_paths, raw.release.link) != old_watch:
            self._watch_stop.set()
            self._start_watch()
        log.info("config reloaded from %s (app changes apply at the next deploy, or now with `pushcd restart`)",
                 new.source)
        self.last_reload = {"ok": True, "reason": "applied", "at": time.time()}

    async def close(self) -> None:
        """Stop everything, each step with a deadline: within stop_timeout + GIT_CLOSE_WAIT and a little."""
        self.stop_event.set()
        self._watch_stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.deployer.road.close()
        await self.scheduler.stop()
        await self.web.stop()
        await self.deployer.workers.stop()
        await reaper.stop(reaper.adopted(), self.settings.raw.app.stop_timeout, "the app left behind, at shutdown")
        for site in self._sites:
            await site.close()
        self.web.close()
        self.guard.close()
        self.applog.close()  # after every child: their last lines are written
        # A git operation in flight (a fetch hanging on a dead remote) may delay the exit a little, not for
        # its whole timeout: what it leaves half-done, the journal repairs at the next start.
        if not await asyncio.get_running_loop().run_in_executor(None, self.git.close, GIT_CLOSE_WAIT):
            log.warning("a git operation is still running after %gs; exiting anyway (the journal repairs "
                        "the work tree at the next start)", GIT_CLOSE_WAIT)
        self.history.close()
        os.close(self.owner)


async def _started(sup: Supervisor) -> bool:
    """Start-up, unless SIGTERM comes first: a start (a release task, a readiness wait) is cancelled, and
    what it started is stopped on the way out; the ledger lets the next start resolve it. False: stopped."""
    starting = asyncio.ensure_future(sup.start())
    stopping = asyncio.ensure_future(sup.stop_event.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if starting.done():
        starting.result()  # its error, if it raised
        return True
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    return False


async def serve(settings: Settings, on_ready: Callable[[Supervisor], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; the one place signals are handled."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_exception_handler())
    sup = build(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sup.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, sup.reload)
    try:
        if not await _started(sup):
            log.info("stopping during start-up: app gets %s, SIGKILL after %gs", sup.settings.app.stop_signal.name,
                     sup.settings.raw.app.stop_timeout)
            return
        # What start-up made (modules, pygit2, aiohttp) lives for good: keep it out of
        # every later collection, so a GC pause under a webhook burst stays short.
        gc.collect()  # garbage from start-up first: a frozen object is never freed
        gc.freeze()
        sd_notify("READY=1")
        if on_ready is not None:
            on_ready(sup)
        await sup.stop_event.wait()
        sd_notify("STOPPING=1")
        log.info("stopping: app gets %s, SIGKILL after %gs", sup.settings.app.stop_signal.name,
                 sup.settings.raw.app.stop_timeout)
    finally:
        await sup.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
