"""Command line: ``python -m supervisor run|check|status|demo-push --config PATH``.

User errors (config, ports, work tree) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from . import config, demo
from .config import ConfigError

if TYPE_CHECKING:
    from .runner import Supervisor


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log our own, filtered, line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushcd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default="config.toml", help="path of config.toml (default: ./config.toml)")
        return p

    run = add("run", "run the supervisor: webhook, deploys, the app")
    run.add_argument("-v", "--verbose", action="store_true")
    add("check", "validate the config and print it resolved (secret masked)")
    status = add("status", "show the running supervisor's status")
    status.add_argument("--json", action="store_true")
    add("demo-push", "demo: commit to the demo origin and send a signed webhook")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import StartupError, serve

    _setup_logging(args.verbose)
    settings = config.load(args.config, prepare=True)
    config.check_work_tree(settings)

    def on_ready(sup: "Supervisor") -> None:
        if settings.raw.demo.bootstrap:
            print(demo.banner(settings, sup.releases.port, sup.control_port), flush=True)

    try:
        asyncio.run(serve(settings, on_ready))
    except StartupError as exc:
        print(f"pushcd: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    raw = settings.raw
    out = {
        "config": str(settings.source),
        "webhook": {"listen": str(settings.webhook_listen), "path": raw.webhook.path,
                    "secret": "***" + f" ({len(settings.secret)} bytes)", "allow_sha1": raw.webhook.allow_sha1},
        "repo": {"path": str(settings.repo_path), "remote": raw.repo.remote, "branch": raw.repo.branch,
                 "full_name": raw.repo.full_name, "on_diverge": raw.repo.on_diverge},
        "app": {"command": raw.app.command, "cwd": str(settings.app_cwd), "listen": raw.app.listen,
                "stop_signal": settings.stop_signal.name, "stop_timeout": raw.app.stop_timeout,
                "ready": {"notify": raw.app.ready.notify, "http": raw.app.ready.http,
                          "min_uptime": raw.app.ready.min_uptime, "timeout": raw.app.ready.timeout}},
        "watch": {"enabled": raw.watch.enabled, "paths": [str(p) for p in settings.watch_paths],
                  "ignore": raw.watch.ignore, "debounce_ms": raw.watch.debounce_ms},
        "control": {"listen": str(settings.control_listen)},
        "state": {"dir": str(settings.state_dir)},
        "deploy": {"probation": raw.deploy.probation, "before_restart": raw.deploy.before_restart,
                   "before_restart_timeout": raw.deploy.before_restart_timeout},
    }
    print(json.dumps(out, indent=2))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    host = settings.control_listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    url = f"http://{host}:{settings.control_listen.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError) as exc:
        print(f"pushcd: no supervisor answers at {url} ({exc}); is `pushcd run` running?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    last = data.get("last_deploy") or {}
    rows = [
        ("state", data["state"]),
        ("deployed", f"{data['deployed_commit'][:12]}  {data.get('deployed_message', '')}"),
        ("child pid", data["child_pid"]),
        ("uptime", f"{data.get('uptime', 0):.0f}s"),
        ("restarts", data.get("restarts", 0)),
        ("last deploy", f"{last.get('result', '-')}: {last.get('reason', '')}" if last else "-"),
    ]
    for key, value in rows:
        print(f"{key:<12} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": _cmd_run, "check": _cmd_check, "status": _cmd_status,
                "demo-push": lambda a: demo.push(config.load(a.config))}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"pushcd: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
