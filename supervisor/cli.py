"""Command line: ``pushcd`` or ``python -m supervisor``.

    run        run the supervisor (webhook, deploys, the app)
    check      everything run checks; the config resolved, secrets masked
    status     what is deployed and what is happening
    history    recent deploys and deliveries
    deploy     fetch and deploy the branch tip now (--commit SHA, --retry), and wait for the result
    rollback   go back to the previous good release (--to a kept one), and wait for the result
    releases   the kept releases: id, commit, environment, state
    restart    restart the live release with the current config, and wait for the result
    pause      stop deploying pushes and polls (still verified and recorded); resume: deploy again
    logs       the app's output, kept on disk across restarts (--process, --since, --release, -f, --json)
    exec       run a command in the live release, as its processes see it (pushcd exec -- CMD ...)
    config     config vars: list, set KEY=VALUE, unset KEY, import .env (a change is a release, gated)
    jobs       scheduled jobs: next run, last result; jobs run NAME runs one now
    ls         the instances on this box: one config each in /etc/pushcd (--dir), and their state

The client commands find the control API through the same config file.
User errors (config, ports, work tree) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import config, configcli, instances
from .client import ClientError, NotRunning, call
from .configvars import ConfigVarsError
from .config import ConfigError, Settings
from .ops import applog

# What only `run`, `check`, `exec` and `demo-push` need (aiohttp, pygit2 and the rest) is imported in those
# commands: a client command (status, deploy, logs, config...) starts without it.

if TYPE_CHECKING:
    from .runner import Supervisor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushcd", description="Continuous-deployment supervisor.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default="config.toml", help="path of config.toml (default: ./config.toml)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    run = add("run", "run the supervisor: webhook, deploys, the app", json_flag=False)
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--log-format", choices=["text", "json"], help="override [log] format")
    add("check", "validate the config and print it resolved (secret masked)", json_flag=False)
    ex = add("exec", "run a command in the live release, as its processes see it: pushcd exec -- CMD ...",
             json_flag=False)
    ex.add_argument("--release", metavar="ID_OR_COMMIT", help="another kept release (`pushcd releases`)")
    ex.add_argument("--process", metavar="NAME", help="that process type's folder and environment (default: web)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
    add("status", "show the running supervisor's status")
    history = add("history", "recent deploys and deliveries")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--deliveries", action="store_true", help="webhook deliveries instead of deploys")
    acts = {}
    for name, text in (("deploy", "fetch and deploy now (the branch tip, or --commit); wait for the result"),
                       ("rollback", "back to the previous good release; wait for the result"),
                       ("restart", "restart the live release with the current config (health-gated, same commit)"),
                       ("resume", "deploy automatically again (and deploy the tip if it moved)")):
        acts[name] = p = add(name, text)
        p.add_argument("--no-wait", action="store_true", help="queue it and return at once")
    which = acts["deploy"].add_mutually_exclusive_group()
    which.add_argument("--commit", metavar="SHA", help="deploy this commit of the branch's history; an older one "
                                                        "pauses automatic deploys (pinned) until `pushcd resume`")
    which.add_argument("--retry", action="store_true", help="forget the tip's bad mark and deploy it")
    acts["restart"].add_argument("process", nargs="?", metavar="NAME",
                                 help="only this process type (web, or a [processes] / Procfile name)")
    acts["rollback"].add_argument("--to", metavar="COMMIT_OR_RELEASE",
                                  help="go to this kept release (`pushcd releases` lists them)")
    acts["rollback"].add_argument("--force", action="store_true",
                                  help="with --to: even a release that never went live (it failed)")
    add("releases", "the kept releases: id, commit, environment, config vars, state")
    cfg = add("config", "config vars: list (masked), set KEY=VALUE..., unset KEY..., import FILE (.env format)")
    cfg.add_argument("action", nargs="?", choices=["list", "set", "unset", "import"], default="list")
    cfg.add_argument("words", nargs="*", metavar="KEY=VALUE | KEY | FILE")
    cfg.add_argument("--show", action="store_true", help="list the values too (they are secrets)")
    cfg.add_argument("--no-restart", action="store_true",
                     help="keep them for the next deploy instead of restarting the app with them now")
    pause = add("pause", "stop deploying pushes and polls (they are still verified and recorded)")
    pause.add_argument("--reason", default="paused by hand")
    log_cmd = add("logs", "the app's output, kept on disk across restarts ([log] dir)")
    log_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_cmd.add_argument("-n", "--lines", type=int, default=50, help="how many of the newest lines (default 50)")
    log_cmd.add_argument("--process", metavar="NAME", help="only the output of this process type (web, worker...)")
    log_cmd.add_argument("--since", metavar="WHEN", help="only lines after: 10m, 2h, 1d, or 2026-12-07 14:00")
    log_cmd.add_argument("--release", metavar="ID", help="only the output of this release (an id or a commit)")
    jobs = add("jobs", "the scheduled jobs ([jobs.NAME]): next run, last result; `jobs run NAME` runs one now")
    jobs.add_argument("action", nargs="?", choices=["list", "run"], default="list")
    jobs.add_argument("name", nargs="?", help="the job to run now")
    add("demo-push", "demo: commit to the demo origin and send a signed webhook", json_flag=False)
    ls = sub.add_parser("ls", help="the instances on this box: one config each in a folder, and their state")
    ls.add_argument("--dir", type=Path, default=instances.DEFAULT_DIR,
                    help=f"the folder of the instances' configs (default: {instances.DEFAULT_DIR}, as the "
                         f"systemd template unit pushcd@.service reads them)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


# -- the client side ----------------------------------------------------------

def _short(sha: str | None) -> str:
    return (sha or "-")[:12]


def _release_line(release: dict[str, Any] | None) -> str:
    if not release:
        return "-"
    if release["mode"] == "in-place":
        return f"in place: {release['dir']}"
    edits = ", with hand edits" if release["dirty"] else ""
    config = f", config vars {release['config']}" if release.get("config") else ""
    return f"{release['id']}{edits} (environment {release['env'] or 'none'}{config})"


def _print_status(data: dict[str, Any]) -> None:
    last = data.get("last_deploy") or {}
    rows = [
        ("state", data["state"]),
        ("deployed", f"{_short(data['deployed_commit'])}  {data.get('deployed_message', '')}"),
        ("release", _release_line(data.get("release"))),
        ("child pid", data["child_pid"] or "-"),
        ("uptime", f"{data.get('uptime', 0):.0f}s"),
        ("restarts", data.get("restarts", 0)),
        ("queue", ", ".join(data.get("queue") or []) or "empty"),
        ("last deploy", f"{last.get('result', '-')} {_short(last.get('commit'))}: {last.get('reason', '')}"
         if last else "-"),
    ]
    for p in data.get("processes") or []:
        rows.append((f"{p['name']}[{p['index']}]", f"{p['state']:<8} pid {p['pid'] or '-':<7} {_short(p['commit'])}  "
                                                   f"up {p['uptime']:.0f}s, {p['restarts']} restarts"))
    for commit, why in (data.get("bad_commits") or {}).items():
        rows.append(("marked bad", f"{_short(commit)}: {why}"))
    if data.get("paused"):
        rows.append(("paused", f"{data['paused']['reason']} (pushes are recorded, not deployed; pushcd resume)"))
    if (data.get("last_reload") or {}).get("waiting_for_restart"):
        rows.append(("reloaded", f"{', '.join(data['last_reload']['waiting_for_restart'])} apply at `pushcd restart`"))
    if (data.get("history") or {}).get("problem"):
        rows.append(("history", data["history"]["problem"]))
    for key, value in rows:
        print(f"{key:<12} {value}")


def _cmd_ls(args: argparse.Namespace) -> int:
    found = instances.listing(args.dir)
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in found], indent=2))
        return 0
    if not found:
        print(f"no instances: {args.dir} has no *.toml")
        return 0
    rows = [("NAME", "STATE", "COMMIT", "LAST DEPLOY", "CONTROL", "CONFIG")]
    rows += [(i.name, i.state, _short(i.commit), i.last_deploy or "-", i.control or "-", i.config) for i in found]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for i in found:
        if i.problem:
            print(f"{i.name}: {i.problem}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    data = call(settings, "GET", "/status")
    print(json.dumps(data, indent=2)) if args.json else _print_status(data)
    return 0


def _cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    limit = max(1, args.limit)
    data = call(settings, "GET", f"/history?limit={limit}&deliveries={limit}")
    if args.json:
        print(json.dumps(data["deliveries"] if args.deliveries else data, indent=2))
        return 0
    if args.deliveries:
        _table(f"{'when':<20} {'verdict':<12} {'event':<10} {'delivery':<38} reason",
               [f"{_when(d['received_at']):<20} {d['verdict']:<12} {(d['event'] or '-'):<10} "
                f"{('' if d['id'].startswith('-') else d['id'])[:36]:<38} {d['reason'] or ''}"
                for d in data["deliveries"]], "(no deliveries yet)")
        return 0
    _table(f"{'when':<20} {'result':<8} {'trigger':<8} {'from':<12} {'to':<12} {'took':>7}  reason",
           [f"{_when(d['started_at']):<20} {d['result']:<8} {d['trigger']:<8} {_short(d['from_commit']):<12} "
            f"{_short(d['to_commit']):<12} {d['duration']:>6.2f}s  {d['reason']}" for d in data["deploys"]],
           "(no deploys yet)")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(header: str, rows: list[str], empty: str) -> None:
    print(header)
    for row in rows:
        print(row)
    if not rows:
        print(empty)


def _cmd_releases(args: argparse.Namespace, settings: Settings) -> int:
    data = call(settings, "GET", "/releases")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    _table(f"{'release':<17} {'commit':<12} {'edits':<6} {'env':<17} {'built':<20} {'took':>6}  state",
           [f"{r['id']:<17} {_short(r['commit']):<12} {'yes' if r['dirty'] else '-':<6} {r['env'] or '-':<17} "
            f"{_when(r['built_at']):<20} {r['build_seconds']:>5.2f}s  {r['state']}" for r in data["releases"]],
           "(no kept releases: [release] mode is in-place, or nothing was deployed yet)")
    return 0


def _cmd_act(args: argparse.Namespace, settings: Settings) -> int:
    """deploy / rollback / restart / resume: show progress while waiting; exit 0 ok, 1 failed or refused."""
    query = {"commit": getattr(args, "commit", None), "retry": "1" if getattr(args, "retry", False) else None,
             "to": getattr(args, "to", None), "force": "1" if getattr(args, "force", False) else None,
             "process": getattr(args, "process", None),
             "wait": None if args.no_wait else "1"}
    path = f"/{args.command}?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    return _act(settings, path, args.command, args.json, args.no_wait)


def _act(settings: Settings, path: str, command: str, as_json: bool, no_wait: bool, body: Any = None) -> int:
    """POST a request and wait for its result, showing the worker's state meanwhile."""
    if no_wait:
        data = call(settings, "POST", path, body=body)
        print(json.dumps(data, indent=2) if as_json else f"queued: {data['queued']}")
        return 0
    box: dict[str, Any] = {}

    def post() -> None:
        try:
            box["data"] = call(settings, "POST", path, timeout=960, body=body)
        except ClientError as exc:
            box["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    seen = ""
    while worker.is_alive():
        worker.join(0.25)
        if not as_json and worker.is_alive():
            try:
                state = call(settings, "GET", "/status")["state"]
            except ClientError:
                continue
            if state != seen:
                print(f"... {command}: {state}", flush=True)
                seen = state
    if "error" in box:
        raise box["error"]
    data = box["data"]
    result = data.get("result") or {}
    if as_json:
        print(json.dumps(data, indent=2))
    elif not data.get("done"):
        print(f"{command} still running after the wait limit; see `pushcd status`")
    elif not result:
        print(data.get("note", "nothing to do"))
        if (data.get("status") or {}).get("paused"):
            print(f"automatic deploys are paused: {data['status']['paused']['reason']}")
    else:
        print(f"{result['result']}: {result['reason']}")
        _print_status(data["status"])
    return 0 if (not result or result.get("result") == "ok") and data.get("done", True) else 1


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """List, set, unset or import config vars: through the running pushcd, else in the state dir directly."""
    body = configcli.change(args.action, args.words, restart=not args.no_restart)
    try:
        if body is None:
            data = call(settings, "GET", "/config" + ("?show=1" if args.show else ""))
            print(json.dumps(data, indent=2) if args.json else configcli.listing(data))
            return 0
        if body["restart"]:
            return _act(settings, "/config?wait=1", "config", args.json, no_wait=False, body=body)
        data = call(settings, "POST", "/config", body=body)
    except NotRunning:
        return configcli.offline(settings.state_dir, body, args.show, args.json)
    print(json.dumps(data, indent=2) if args.json else f"config vars {data['config'] or '(none)'} saved; they "
                                                        f"apply at the next deploy or `pushcd restart`")
    return 0


def _cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """List the scheduled jobs, or run one now and wait for its end (exit 0 when it ended well)."""
    if args.action == "run":
        if not args.name:
            raise ClientError("pushcd jobs run: give the job's name (`pushcd jobs` lists them)")
        run = call(settings, "POST", "/jobs/run?" + urllib.parse.urlencode({"name": args.name, "wait": "1"}),
                   timeout=960)["run"]
        print(json.dumps(run, indent=2) if args.json else f"{run['result'] or 'running'}: {run['reason']}"
              + (f"\n{run['output_tail']}" if run.get("output_tail") else ""))
        return 0 if run["result"] == "ok" else 1
    data = call(settings, "GET", "/jobs")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = []
    for job in data["jobs"]:
        last = job["last"] or {}
        state = "running" if job["running"] else f"{last.get('result', '-')} {_when(last['ended_at'])}" if last \
            else "never ran"
        rows.append(f"{job['name']:<16} {job['schedule']:<16} {_when(job['next_run']) if job['next_run'] else '-':<20} "
                    f"{state:<28} {last.get('reason') or ''}")
    _table(f"{'job':<16} {'schedule':<16} {'next run':<20} {'last':<28} reason", rows, "(no [jobs.NAME] configured)")
    return 0


def _cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    data = call(settings, "POST", "/pause?" + urllib.parse.urlencode({"reason": args.reason}))
    print(json.dumps(data, indent=2) if args.json else f"paused: {data['paused']['reason']}; pushes are recorded, "
                                                        f"not deployed, until `pushcd resume`")
    return 0


def _cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """The app's output from the running pushcd, or from [log] dir when it is not running (also in -f)."""
    try:
        since = applog.since_of(args.since, time.time()) if args.since else 0.0
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    limit = max(1, min(5000, args.lines))
    while True:
        query = {"since": since, "limit": limit, "process": args.process, "release": args.release}
        try:
            lines = call(settings, "GET", "/logs?" + urllib.parse.urlencode({k: v for k, v in query.items() if v}))
            lines = lines["lines"]
        except NotRunning:
            lines = applog.read(settings.log_dir, process=args.process, since=since, release=args.release,
                                limit=limit)
        for item in lines:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["time"]))
            print(json.dumps(item) if args.json else f"{when} {item['process']}[{item['pid']}] {item['line']}",
                  flush=True)
            since = max(since, item["time"])
        if not args.follow:
            return 0
        limit = 5000
        time.sleep(1.0)  # polling interval of `logs -f`


# -- the server side ----------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from . import demo, memory, preflight
    from .ops import logs
    from .process import child, reaper
    from .runner import StartupError, serve

    memory.one_arena()  # before any thread (git, watcher) exists
    reaper.become_subreaper()  # what the app detaches (setsid) is handed to us, to stop and reap
    child.raise_nofile()
    source, raw = config.parse(args.config)
    if raw.demo.bootstrap:
        demo.bootstrap(raw, source.parent)  # before the secret and the work tree are checked: a fresh checkout runs
    settings = config.resolve(source, raw)
    logs.setup(args.log_format or settings.raw.log.format, args.verbose, settings.name)
    found = preflight.problems(settings)
    if found:
        for problem in found:
            print(f"pushcd: {problem}", file=sys.stderr)
        return 2

    def on_ready(sup: "Supervisor") -> None:
        if settings.raw.demo.bootstrap:
            print(demo.banner(settings, sup.web.port, sup.control_port), flush=True)

    try:
        asyncio.run(serve(settings, on_ready))
    except StartupError as exc:
        print(f"pushcd: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Everything run checks (and whether the branch is on the remote); each problem one line, exit 2."""
    from . import preflight
    settings = config.load(args.config)
    found = preflight.problems(settings)
    on_remote, notes = preflight.remote_branch(settings)
    for line in [*found, *on_remote, *notes]:
        print(f"pushcd: {line}", file=sys.stderr)
    if found or on_remote:
        return 2
    raw = settings.raw
    procs = preflight.work_tree_procfile(settings)  # what the work tree's Procfile says, as a deploy reads it
    out = {
        "config": str(settings.source),
        "webhook": {"listen": str(settings.webhook_listen), "path": raw.webhook.path,
                    "secret": f"*** ({len(settings.secret)} bytes)", "allow_sha1": raw.webhook.allow_sha1,
                    "tls": [str(p) for p in settings.tls] if settings.tls else None,
                    "allow_from": raw.webhook.allow_from, "trusted_proxies": raw.webhook.trusted_proxies},
        "repo": {"path": str(settings.repo_path), "remote": raw.repo.remote, "branch": raw.repo.branch,
                 "full_name": raw.repo.full_name, "on_diverge": raw.repo.on_diverge},
        "app": {"command": raw.app.command or (procs or {}).get("web", []), "procfile": raw.app.procfile,
                "cwd": str(settings.app.cwd),
                "listen": raw.app.listen,
                "stop_signal": settings.app.stop_signal.name, "stop_timeout": raw.app.stop_timeout,
                "ready": {"notify": raw.app.ready.notify, "http": raw.app.ready.http,
                          "min_uptime": raw.app.ready.min_uptime, "timeout": raw.app.ready.timeout}},
        "watch": {"enabled": raw.watch.enabled, "paths": [str(p) for p in settings.watch_paths],
                  "ignore": raw.watch.ignore, "debounce_ms": raw.watch.debounce_ms},
        "control": {"listen": str(settings.control_listen),
                    "token": "***" if settings.control_token else None},
        "state": {"dir": str(settings.state_dir), "retention": raw.state.retention},
        "deploy": {"probation": raw.deploy.probation, "before_restart": raw.deploy.before_restart,
                   "before_restart_timeout": raw.deploy.before_restart_timeout,
                   "release_command": raw.deploy.release_command},
        "release": msgspec.to_builtins(raw.release),
        "processes": {p.name: {"command": list(p.command), "from": "Procfile" if p.name in (procs or {})
                               else f"[processes.{p.name}]", "count": p.count, "overlap": p.overlap,
                               "stop_signal": p.stop_signal.name, "stop_timeout": p.stop_timeout,
                               "ready": msgspec.to_builtins(p.ready)}
                      for p in config.procfile_types(settings.processes, procs)},
        "log": {"format": raw.log.format, "dir": str(settings.log_dir), "max_bytes": raw.log.max_bytes,
                "keep": raw.log.keep, "max_total": raw.log.max_total},
        "jobs": {j.name: {"schedule": j.schedule, "timezone": str(j.tz), "command": list(j.argv),
                          "concurrency": j.concurrency, "catch_up": j.catch_up, "timeout": j.timeout}
                 for j in settings.jobs.values()},
    }
    print(json.dumps(out, indent=2))
    return 0


def _cmd_exec(args: argparse.Namespace, settings: Settings) -> int:
    """Become the command in the release (see supervisor/execute.py); only an error comes back."""
    from . import execute
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        live = call(settings, "GET", "/status", timeout=3)
    except (ClientError, OSError):
        live = None  # not running (or not reachable): the ledger names the last good release
    try:
        execute.run(settings, argv, args.release, args.process, live)
    except execute.ExecError as exc:
        print(f"pushcd: exec: {exc}", file=sys.stderr)
        return exc.code
    return 0  # not reached: exec replaced this process


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except ConfigError as exc:
        print(f"pushcd: config error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"pushcd: {exc}", file=sys.stderr)
        return 1
    except ConfigVarsError as exc:
        print(f"pushcd: config vars: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pushcd status | head -2`: the reader went away; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    clients = {"status": _cmd_status, "history": _cmd_history, "deploy": _cmd_act, "rollback": _cmd_act,
               "releases": _cmd_releases, "restart": _cmd_act, "resume": _cmd_act, "pause": _cmd_pause,
               "logs": _cmd_logs, "config": _cmd_config, "jobs": _cmd_jobs}
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "check":
        return _cmd_check(args)
    if args.command == "ls":
        return _cmd_ls(args)
    if args.command == "demo-push":
        from . import demo

        return demo.push(config.load(args.config))
    if args.command == "exec":
        return _cmd_exec(args, config.load(args.config, secret=False))
    return clients[args.command](args, config.load(args.config, secret=False))
