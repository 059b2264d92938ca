"""The read model: what the control API and the metrics see of the running supervisor, and what they
may ask of it. It reads the parts' state and changes none of it (an ask only puts a request in the mailbox).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, Callable

from .ops.applog import AppLog, read as read_output
from .deploy import Deployer
from .schedule import Scheduler
from .health import Health
from .git.thread import GitThread
from .git.tree import WorkTree, describe_commit
from .ops.history import History
from .ops.metrics import LiveFacts, Metrics
from .process.web import Web
from .process.workers import process_facts


DESCRIBED_KEPT = 64  # commits whose subject and author are remembered


class Console:
    """The control API's :class:`~supervisor.ops.control.Console`."""

    def __init__(self, deployer: Deployer, web: Web, git: GitThread, tree: WorkTree, history: History,
                 metrics: Metrics, applog: AppLog,
                 about: Callable[[], dict[str, Any]], health: Health | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.deployer = deployer
        self.web = web
        self.git = git
        self.tree = tree
        self.history = history
        self.metrics = metrics
        self.applog = applog  # the app's output, on disk
        self.about = about  # what only the supervisor knows: its URLs, uptime, last reload
        self.health = health
        self.scheduler = scheduler
        self._described: dict[str, dict[str, str]] = {}

    async def describe(self, sha: str) -> dict[str, str]:
        """A commit's subject and author, read in the git thread (pygit2 blocks), once per commit."""
        if sha not in self._described:
            info = await self.git.run(describe_commit, self.tree.repo, sha)
            if not info["author"]:
                return info  # unknown here (yet): do not cache
            if len(self._described) >= DESCRIBED_KEPT:  # one per deployed commit: bounded, not grown by history
                self._described.pop(next(iter(self._described)))
            self._described[sha] = info
        return self._described[sha]

    async def status(self) -> dict[str, Any]:
        d, live = self.deployer, self.web.live
        alive = live is not None and live.alive
        processes = self.processes()
        info = await self.describe(d.deployed)
        return {
            "deployed_commit": d.deployed,
            "deployed_message": info["message"],
            "deployed_author": info["author"],
            "release": self.release_info(),
            "state": d.state,
            "child_pid": live.child.pid if alive and live else None,
            "uptime": round(live.child.uptime, 3) if alive and live else 0.0,
            "restarts": sum(int(p["restarts"]) for p in processes),  # crash restarts, as each process counts
            "swaps": self.web.restarts,  # web processes put live after the first: deploys, restarts
            "processes": processes,
            "queue": d.queued,
            "last_deploy": d.last.as_dict() if d.last else None,
            "bad_commits": d.marks.as_dict(),
            "app_port": self.web.port,
            "health": {"ok": self.healthy, "problem": str(self.health.problem) if self.health and not self.healthy
                       else None},
            **self.about(),
            "paused": d.pause.as_dict(),
            "history": {"ok": self.history.problem is None, "problem": self.history.problem},
            "logs": {"dir": str(self.applog.dir), "dropped": self.applog.dropped_total, "problem": self.applog.problem},
        }

    def processes(self) -> list[dict[str, Any]]:
        """Every process of the running release: the web process, then each instance of each type."""
        live = self.web.live
        web = [process_facts("web", 0, live.child, live.built, self.deployer.crash_restarts)] if live else []
        return web + self.deployer.workers.listing()

    def release_info(self) -> dict[str, Any] | None:
        """The running release: its id, folder, environment, and whether it holds hand edits."""
        built = self.deployer.current
        if built is None:
            return None
        return {"mode": self.deployer.builder.mode, "id": built.id, "dir": str(built.root),
                "env": built.env_key, "dirty": built.dirty, "config": built.config}

    def releases_listing(self) -> list[dict[str, Any]]:
        """The kept releases, newest use first, each with its state (live, previous, failed, pruned soon)."""
        d = self.deployer
        live = d.current.id if d.current else ""
        previous = d.road.previous_release()
        doomed = d.builder.doomed([d.current, previous])
        out = []
        for kept in d.builder.listing():
            state = ("live" if kept.id == live else "previous" if previous and kept.id == previous.id
                     else "failed" if kept.commit in d.marks and not kept.dirty
                     else "pruned soon" if kept.id in doomed else "kept")
            out.append({"id": kept.id, "commit": kept.commit, "dirty": kept.dirty, "env": kept.env,
                        "built_at": kept.built_at, "build_seconds": kept.build_seconds, "state": state,
                        "config": d.road.config_of(kept.commit)})
        return out

    def waiting(self) -> list[str]:
        """[app] settings reloaded (SIGHUP) that the live release does not run with yet: `pushcd restart`."""
        live = self.web.live
        return live.app.changes(self.web.app) if live is not None and live.app is not None else []

    def live_facts(self) -> LiveFacts:
        """For a metrics scrape: no git read here (the message is the one status last read)."""
        live = self.web.live
        commit = self.deployer.deployed
        workers = self.deployer.workers
        process_restarts = {"web": self.deployer.crash_restarts, **workers.restarts}
        return LiveFacts(up=live is not None and live.alive, restarts=sum(process_restarts.values()), commit=commit,
                         message=self._described.get(commit, {}).get("message", ""),
                         paused=self.deployer.pause.reason is not None,
                         processes=tuple((str(p["name"]), int(p["index"]), p["state"] == "running")  # type: ignore
                                         for p in self.processes()),
                         process_restarts=process_restarts, healthy=self.healthy,
                         app=str(self.about().get("app", "")))

    def ask(self, what: str, arg: str | None = None, force: bool = False) -> "asyncio.Future[Any]":
        d = self.deployer
        if what == "rollback":
            return d.request_rollback(arg, force)
        if what == "restart":
            return d.request_restart("manual", arg)
        if what == "resume":
            return d.resume()
        return d.request_deploy("manual", commit=arg, retry=what == "retry")

    def config_vars(self, show: bool = False) -> dict[str, Any]:
        """The config vars new releases take (values masked unless ``show``), and which set the live one runs."""
        current = self.deployer.current
        return self.deployer.work.config_vars.view(current.config if current else None, show)

    def configure(self, set_: dict[str, str], unset: list[str], restart: bool) -> "asyncio.Future[Any] | str":
        return self.deployer.request_config(set_, unset, restart)

    async def output(self, process: str | None = None, since: float = 0.0, release: str | None = None,
                     limit: int = 200) -> list[dict[str, Any]]:
        """The app's output lines, newest ``limit``, read from disk in a thread (across restarts)."""
        return await asyncio.to_thread(read_output, self.applog.dir, process=process, since=since, release=release,
                                       limit=limit)

    def jobs(self) -> list[dict[str, Any]]:
        """The scheduled jobs: schedule, next run, the run under way, the last one."""
        return self.scheduler.listing() if self.scheduler else []

    async def run_job(self, name: str, wait: float) -> dict[str, Any] | None:
        """A run of job ``name`` now (None: no such job); with ``wait``, as it ended."""
        if self.scheduler is None or name not in self.scheduler.jobs:
            return None
        return asdict(await self.scheduler.run_now(name, wait))

    def pause(self, reason: str) -> None:
        self.deployer.hold(reason)

    @property
    def queued(self) -> list[str]:
        return self.deployer.queued

    @property
    def healthy(self) -> bool:
        """The live release's health check passes (or has not failed its count of times in a row)."""
        return self.health is None or self.health.problem is None
