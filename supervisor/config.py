"""Load and validate ``config.toml``.

Every user mistake becomes one :class:`ConfigError` whose message names the
key and the fix; the CLI prints it and exits 2, never with a traceback.

>>> import tempfile, pathlib, os
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "c.toml").write_text('''
... [webhook]
... secret_env = "DOC_SECRET"
... [repo]
... path = "work"
... [app]
... command = ["python3", "app.py"]
... ''')
>>> os.environ["DOC_SECRET"] = "s3cret"
>>> s = load(folder / "c.toml")
>>> s.raw.webhook.path, s.repo_path == folder / "work", s.secret
('/github', True, b's3cret')
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import signal
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .commandline import argv_of


class ConfigError(Exception):
    """A mistake in the config: the message is one line meant for a person."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# Ranges live in the schema (msgspec checks them while decoding), so `check` and `run` cannot disagree.
Seconds = Annotated[float, msgspec.Meta(gt=0)]  # a duration that must pass
SecondsOrNone = Annotated[float, msgspec.Meta(ge=0)]  # a duration where 0 means none (or off)
Count = Annotated[int, msgspec.Meta(ge=1)]


class GitlabHook(_Section):
    token_env: str | None = None  # or token_file (one of them)
    token_file: str | None = None
    path: str = "/gitlab"


class GiteaHook(_Section):  # Forgejo uses the same table
    secret_env: str | None = None  # or secret_file (one of them)
    secret_file: str | None = None
    path: str = "/gitea"


class Webhook(_Section):
    listen: str = "127.0.0.1:9000"
    path: str = "/github"
    secret_env: str | None = None
    secret_file: str | None = None
    allow_sha1: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_from: list[str] = []  # CIDRs; empty = everyone (the signature still decides)
    trusted_proxies: list[str] = []  # CIDRs whose X-Forwarded-For names the real peer
    header_timeout: Seconds = 10.0  # a connection's request headers must arrive within this (also: idle keep-alive)
    max_connections: Count = 256  # open connections; more are closed at once
    gitlab: GitlabHook | None = None
    gitea: GiteaHook | None = None


class Auth(_Section):
    ssh_key: str | None = None  # private key file of a deploy key
    ssh_passphrase_env: str | None = None  # or ssh_passphrase_file
    ssh_passphrase_file: str | None = None
    known_hosts: str | None = None  # default: the user's ~/.ssh/known_hosts
    token_env: str | None = None  # HTTPS token (or token_file)
    token_file: str | None = None
    username: str = "x-access-token"  # what GitHub expects with a token


class Repo(_Section):
    path: str
    remote: str = "origin"
    branch: str = "main"
    full_name: str | None = None
    on_diverge: Literal["refuse", "reset"] = "refuse"
    fetch_timeout: Seconds = 60.0
    url: str | None = None  # clone from here when path does not exist yet
    poll_interval: SecondsOrNone = 0.0  # seconds; 0 = off
    submodule_urls: list[str] = []  # patterns of submodule URLs allowed besides the main remote's host
    auth: Auth = msgspec.field(default_factory=Auth)


class Ready(_Section):
    notify: bool = False
    http: str | None = None
    min_uptime: SecondsOrNone = 1.0
    timeout: Seconds = 60.0


class App(_Section):
    name: str | None = None  # in the page, status, metrics, log lines, notifications; default: the repository's
    command: list[str] = []  # required, unless procfile gives a web: line
    procfile: str | None = None  # a Procfile in the repository: web, release and the process types, per commit
    cwd: str = "."
    env: dict[str, str] = {}
    stop_signal: str = "SIGTERM"
    stop_timeout: Seconds = 10.0
    listen: str | None = None
    ready: Ready = msgspec.field(default_factory=Ready)


class ProcessReady(_Section):
    notify: bool = False
    min_uptime: SecondsOrNone = 1.0
    timeout: Seconds = 60.0
    # A health check of its own, asked at the gate and through probation (as the web process's is):
    http: str | None = None  # a URL the instance answers 2xx on (it listens itself): "http://127.0.0.1:8081/health"
    command: list[str] = []  # or a command run in its folder and environment: exit 0 within 10 s is healthy


class Process(_Section):
    """[processes.NAME]: a process type besides the web process (a worker, a scheduler)."""

    command: list[str] = []  # may come from the Procfile instead
    cwd: str = "."
    env: dict[str, str] = {}
    stop_signal: str = "SIGTERM"
    stop_timeout: Seconds = 10.0
    count: Count = 1
    overlap: bool = True  # the new instance starts before the old one stops; false: never two at once
    ready: ProcessReady = msgspec.field(default_factory=ProcessReady)


class Watch(_Section):
    enabled: bool = True
    paths: list[str] = []
    ignore: list[str] = []
    debounce_ms: Annotated[int, msgspec.Meta(ge=0)] = 300


class Control(_Section):
    listen: str = "127.0.0.1:9001"
    token_env: str | None = None  # default: a token generated at first start in [state] dir/control-token
    token_file: str | None = None  # or a file holding it
    hosts: list[str] = []  # host names the page may be reached by besides IPs and localhost (a proxy, a tunnel)
    header_timeout: Seconds = 10.0
    max_connections: Count = 64
    public_url: str | None = None  # where people reach the page (for links in notifications)


EVENTS = ("deploy_ok", "deploy_failed", "rolled_back", "restarted", "restart_failed", "crashed", "unhealthy", "paused",
          "resumed", "job_failed")
QUIET_EVENTS = ("deploy_ok", "restarted")  # successes: sent only when asked for


class Notify(_Section):
    url: str = ""  # json / slack: where to POST; github: unused (api_url and the repository decide)
    kind: Literal["json", "slack", "github"] = "json"
    events: list[str] = msgspec.field(default_factory=lambda: [e for e in EVENTS if e not in QUIET_EVENTS])
    secret_env: str | None = None  # json: sign the body (X-Pushcd-Signature-256), as GitHub signs webhooks
    secret_file: str | None = None
    token_env: str | None = None  # github: a token that may write commit statuses
    token_file: str | None = None
    api_url: str = "https://api.github.com"  # github: GitHub Enterprise's API root, or a stand-in


class State(_Section):
    dir: str = ".supervisor-state"
    retention: Count = 500  # deploys kept in the history


class Log(_Section):
    format: Literal["text", "json"] = "text"  # pushcd's own log lines (on stderr: the journal under systemd)
    # The app's output, kept on disk (one file per process type and job, rotated): `pushcd logs`.
    dir: str = ""  # default: [state] dir/logs
    max_bytes: Count = 10_000_000  # a file is rotated past this
    keep: Annotated[int, msgspec.Meta(ge=0)] = 5  # rotated files kept per process type
    max_total: Count = 200_000_000  # all rotated files together; the oldest go first


class Deploy(_Section):
    probation: SecondsOrNone = 30.0
    probation_failures: Count = 3  # health check failures in a row within probation that send a release back
    probation_interval: Seconds = 2.0  # seconds between health checks of the live web process
    restart_unhealthy: bool = False  # after probation: restart a web process whose health check keeps failing
    before_restart: list[list[str]] = []
    before_restart_timeout: Seconds = 300.0
    release_command: list[str] = []  # once per release, before anything of it serves (migrations)
    release_timeout: Seconds = 300.0


class Release(_Section):
    # snapshot: each release runs from its own read-only directory (and Python environment) under
    # [state] dir; in-place: the app runs in the work tree itself (files change under it during a deploy).
    mode: Literal["snapshot", "in-place"] = "snapshot"
    keep: Count = 5  # releases that went live kept for rollback (besides the live one and the rollback target)
    link: list[str] = []  # work-tree paths each release links to (data that outlives releases); "dir/" = a folder
    requirements: str | None = None  # the file that decides the environment; None = detect, "" = no environment
    python: str = "python3"  # the interpreter environments are made with
    install_args: list[str] = []  # e.g. ["--no-index", "--find-links", "/srv/wheels"]
    installer: Literal["auto", "uv", "pip"] = "auto"  # auto: uv when it is there, else venv + pip
    build_timeout: Seconds = 900.0  # seconds an environment's install may take


class Job(_Section):
    """[jobs.NAME]: a command run on a schedule, in the release live at that moment."""

    schedule: str  # cron: "*/15 * * * *" (or six fields, the first the second)
    command: list[str] | str  # an argv, or a shell line (run as a Procfile line is)
    cwd: str = "."
    env: dict[str, str] = {}
    timeout: Seconds = 3600.0  # a run is stopped past this
    stop_signal: str = "SIGTERM"
    stop_timeout: Seconds = 10.0
    concurrency: Literal["skip", "queue"] = "skip"  # a run due while the last one runs: skipped (recorded), or next
    catch_up: bool = False  # a run missed while pushcd was down runs once at start
    timezone: str = "UTC"  # the schedule's clock


class Demo(_Section):
    # When true and repo.path does not exist, `run` creates the bundled demo:
    # a local bare origin seeded from examples/app and a clone of it.
    bootstrap: bool = False
    source: str = "examples/app"
    origin: str = "demo/origin.git"


class Config(_Section):
    repo: Repo
    app: App
    webhook: Webhook = msgspec.field(default_factory=Webhook)
    watch: Watch = msgspec.field(default_factory=Watch)
    control: Control = msgspec.field(default_factory=Control)
    state: State = msgspec.field(default_factory=State)
    deploy: Deploy = msgspec.field(default_factory=Deploy)
    release: Release = msgspec.field(default_factory=Release)
    demo: Demo = msgspec.field(default_factory=Demo)
    log: Log = msgspec.field(default_factory=Log)
    notify: list[Notify] = []
    processes: dict[str, Process] = {}
    jobs: dict[str, Job] = {}


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, port: int | None = None, scheme: str = "http") -> str:
        """A URL this machine can connect to: a wildcard listen address means loopback.

        >>> Address("0.0.0.0", 9000).url(), Address("::", 1).url(), Address("::1", 2).url(scheme="https")
        ('http://127.0.0.1:9000', 'http://[::1]:1', 'https://[::1]:2')
        """
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"{scheme}://{Address(host, self.port if port is None else port)}"


@dataclass(frozen=True)
class GitAuth:
    """Resolved fetch credentials; the repr never shows them."""

    ssh_key: Path | None = None
    ssh_passphrase: str = ""
    known_hosts: Path | None = None
    token: str | None = None
    token_from: str | None = None  # where the token came from ($VAR or a file), for messages
    username: str = "x-access-token"

    def __repr__(self) -> str:
        return f"GitAuth(ssh_key={self.ssh_key}, known_hosts={self.known_hosts}, token={'***' if self.token else None})"


@dataclass(frozen=True)
class AppSpec:
    """The web process as the config file describes it, resolved once; replaced whole on SIGHUP."""

    command: tuple[str, ...]
    cwd: Path  # in the work tree; a release runs in the same folder of its own directory (subdir)
    env: dict[str, str]
    unset: frozenset[str]  # variables pushcd reads its secrets from: the app does not inherit them
    stop_signal: signal.Signals
    stop_timeout: float
    listen: Address | None
    ready: Ready
    subdir: str = "."  # [app] cwd, relative to the top of the tree (or of a release)

    def changes(self, other: "AppSpec") -> list[str]:
        """The settings that differ in ``other``, as the config file names them.

        >>> import dataclasses
        >>> a = AppSpec(("x",), Path("."), {}, frozenset(), signal.SIGTERM, 10.0, None, Ready())
        >>> a.changes(dataclasses.replace(a, command=("y",), stop_timeout=5.0))
        ['[app] command', '[app] stop_timeout']
        """
        names = {"command": "[app] command", "cwd": "[app] cwd", "env": "[app.env]", "stop_signal": "[app] stop_signal",
                 "stop_timeout": "[app] stop_timeout", "listen": "[app] listen", "ready": "[app.ready]"}
        return [label for name, label in names.items() if getattr(self, name) != getattr(other, name)]

    @property
    def uses_probe_fd(self) -> bool:
        return any("{probe_fd}" in a for a in self.command)

    @property
    def names_fds(self) -> bool:
        """The command says where its sockets are ({fd}, {probe_fd}): no LISTEN_PID, or gunicorn opens fd 3 twice."""
        return any("{fd}" in a or "{probe_fd}" in a for a in self.command)


def probe_problem(app: AppSpec) -> str | None:
    """Why ``[app.ready] http`` cannot tell whether the *new* child is ready; None when it can.

    During a swap the old release still answers on the public address, so a probe
    sent there would pass for a new release that is broken.
    """
    http = app.ready.http
    if not http:
        return None
    fix = ("add {probe_fd} to [app] command (e.g. --bind fd://{probe_fd}) with [app] listen set, and give "
           "[app.ready] http as a path such as \"/health\": pushcd probes the new child alone on its private socket")
    if not http.startswith(("http://", "https://")):
        if not app.listen or not app.uses_probe_fd:
            return f"[app.ready] http = \"{http}\" cannot reach the new child alone: {fix}"
        return None
    if app.listen is not None:
        url = urllib.parse.urlsplit(http)
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            return f"[app.ready] http = \"{http}\" is not a valid URL"
        if port == app.listen.port:
            return (f"[app.ready] http = \"{http}\" probes the public address [app] listen = \"{app.listen}\", "
                    f"which the old release answers during a swap, so a broken release would pass; {fix}")
    return None


@dataclass(frozen=True)
class JobSpec:
    """A scheduled job, resolved: its schedule checked, its command an argv, its clock a time zone."""

    name: str
    schedule: str
    argv: tuple[str, ...]
    subdir: str
    env: dict[str, str]
    timeout: float
    stop_signal: signal.Signals
    stop_timeout: float
    concurrency: str
    catch_up: bool
    tz: tzinfo


def _jobs(raw: Config, repo_path: Path) -> dict[str, JobSpec]:
    if not raw.jobs:
        return {}  # and zoneinfo and cronsim (0.7 MB) stay unloaded
    import zoneinfo

    from cronsim import CronSim, CronSimError  # only a config with jobs needs these

    out = {}
    for name, job in raw.jobs.items():
        key = f"[jobs.{name}]"
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
            raise ConfigError(f"{key}: a job's name is letters, digits, - and _")
        try:
            tz = zoneinfo.ZoneInfo(job.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f'{key} timezone = "{job.timezone}" is not a time zone; use e.g. "UTC" or '
                              f'"Europe/Paris"') from None
        try:
            CronSim(job.schedule, datetime.now(tz))
        except CronSimError as exc:
            raise ConfigError(f'{key} schedule = "{job.schedule}": {exc}; write cron\'s five fields, e.g. '
                              f'"*/15 * * * *"') from None
        try:
            argv = argv_of(job.command) if isinstance(job.command, str) else list(job.command)
        except ValueError as exc:
            raise ConfigError(f"{key} command: {exc}") from None
        if not argv:
            raise ConfigError(f"{key} command is empty")
        subdir = str(_folder_in(repo_path, job.cwd, key).relative_to(repo_path))
        out[name] = JobSpec(name, job.schedule, tuple(argv), subdir, dict(job.env), job.timeout,
                            _signal(job.stop_signal, key), job.stop_timeout, job.concurrency, job.catch_up, tz)
    return out


@dataclass(frozen=True)
class ProcSpec:
    """A process type as the config file describes it ([processes.NAME]); the command may come from a Procfile."""

    name: str
    command: tuple[str, ...]
    subdir: str
    env: dict[str, str]
    stop_signal: signal.Signals
    stop_timeout: float
    count: int
    overlap: bool
    ready: ProcessReady

    @classmethod
    def default(cls, name: str, command: tuple[str, ...]) -> "ProcSpec":
        """A Procfile entry no [processes.NAME] table sets options for."""
        return cls(name, command, ".", {}, signal.SIGTERM, 10.0, 1, True, ProcessReady())


def procfile_types(specs: dict[str, ProcSpec], procfile: dict[str, list[str]] | None) -> list[ProcSpec]:
    """The process types of one release: the Procfile's entries (web and release aside), with the options of
    their [processes.NAME] tables, and the tables that give their own command.

    >>> spec = ProcSpec.default("worker", ())
    >>> [(p.name, p.command) for p in procfile_types({"worker": spec}, {"web": ["x"], "worker": ["w", "-q"]})]
    [('worker', ('w', '-q'))]
    """
    out = {}
    for name, argv in (procfile or {}).items():
        if name not in ("web", "release"):
            base = specs.get(name) or ProcSpec.default(name, ())
            out[name] = dataclasses.replace(base, command=tuple(argv))
    for name, spec in specs.items():
        if name not in out and spec.command:
            out[name] = spec
    return sorted(out.values(), key=lambda p: p.name)


def _signal(value: str, key: str) -> signal.Signals:
    try:
        return signal.Signals[value.upper()]
    except KeyError:
        raise ConfigError(f'{key} stop_signal = "{value}" is not a signal name; use e.g. "SIGTERM"') from None


def _folder_in(repo_path: Path, cwd: str, key: str) -> Path:
    """A ``cwd`` setting resolved in the work tree; it must stay inside (a release holds only the tree)."""
    folder = (repo_path / cwd).resolve()
    if not folder.is_relative_to(repo_path):
        raise ConfigError(f'{key} cwd = "{cwd}" is outside [repo] path; give a folder of the repository')
    return folder


def _processes(raw: Config, repo_path: Path) -> dict[str, ProcSpec]:
    out = {}
    for name, p in raw.processes.items():
        key = f"[processes.{name}]"
        if name in ("web", "release"):
            raise ConfigError(f"{key}: web is [app] and release is [deploy] release_command; give the process "
                              f"type another name")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
            raise ConfigError(f"{key}: a process type's name is letters, digits, - and _")
        if not p.command and not raw.app.procfile:
            raise ConfigError(f"{key} needs command (an argv list), or [app] procfile with a {name}: line")
        if p.ready.http is not None and not re.match(r"https?://[^/\s]+(/\S*)?$", p.ready.http):
            raise ConfigError(f'{key}.ready http = "{p.ready.http}" is not a URL; write the whole address the '
                              f'instance answers on, e.g. "http://127.0.0.1:8081/health"')
        if p.ready.http is not None and p.ready.command:
            raise ConfigError(f"{key}.ready: give http or command, not both")
        subdir = str(_folder_in(repo_path, p.cwd, key).relative_to(repo_path))
        out[name] = ProcSpec(name, tuple(p.command), subdir, dict(p.env), _signal(p.stop_signal, key),
                             p.stop_timeout, p.count, p.overlap, p.ready)
    return out


@dataclass(frozen=True)
class Settings:
    """The validated config with paths resolved and the secret loaded."""

    source: Path
    raw: Config
    webhook_listen: Address
    control_listen: Address
    app: AppSpec  # the web process: command, cwd, listen, stop signal, readiness
    secret: bytes
    repo_path: Path
    watch_paths: tuple[Path, ...]
    state_dir: Path
    control_token: bytes | None = None
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls: tuple[Path, Path] | None = None
    hooks: tuple[tuple[str, str, bytes], ...] = ()  # (kind, path, secret) per receiver
    auth: GitAuth = GitAuth()
    processes: dict[str, ProcSpec] = dataclasses.field(default_factory=dict)  # [processes.NAME], resolved
    jobs: dict[str, JobSpec] = dataclasses.field(default_factory=dict)  # [jobs.NAME], resolved
    notify_secrets: tuple[tuple[bytes | None, bytes | None], ...] = ()  # (signing secret, token) per [[notify]]
    name: str = ""  # the app's: [app] name, or the repository's (full_name's, or the work tree folder's)
    log_dir: Path = Path("logs")  # [log] dir: the app's output on disk

    def __repr__(self) -> str:  # never print the secret
        return f"Settings(source={self.source!s}, repo={self.repo_path!s})"


_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(value: str, key: str) -> Address:
    m = _LISTEN_RE.match(value)
    if not m or int(m["port"]) > 65535:
        raise ConfigError(f'{key} = "{value}" is not "host:port"; write e.g. "127.0.0.1:9000"')
    return Address(m["v6"] or m["host"], int(m["port"]))


def _key_from_msgspec(message: str) -> str:
    """Turn msgspec's ``... - at `$.app.ready`` into ``[app.ready]``."""
    m = re.search(r"at `\$\.?([^`]*)`", message)
    if not m or not m[1]:
        return "top level"
    parts = m[1].split(".")
    return f"[{'.'.join(parts)}]" if len(parts) == 1 else f"[{'.'.join(parts[:-1])}] {parts[-1]}"


def _explain(error: msgspec.ValidationError) -> str:
    text = str(error)
    where = _key_from_msgspec(text)
    what = text.split(" - at ")[0]
    if m := re.match(r"Object contains unknown field `(\w+)`", what):
        section = where if where != "top level" else "the top level"
        return f"unknown key '{m[1]}' in {section}; remove it or check its spelling"
    if m := re.match(r"Object missing required field `(\w+)`", what):
        return f"{where} is missing required key '{m[1]}'; add it"
    if m := re.match(r"Invalid enum value (.*)", what):
        return f"{where}: {m[1]} is not allowed; see the config reference in README.md"
    if m := re.match(r"Expected `\w+` (>=|>) (\S+)", what):
        bound = m[2].removesuffix(".0")
        return f"{where} must be {'greater than' if m[1] == '>' else 'at least'} {bound}; fix the value"
    return f"{where}: {what.lower()}; fix the value's type"


def secret_from(table: str, field: str, env: str | None, file: str | None, base: Path, what: str) -> bytes | None:
    """The secret ``table`` takes from ``<field>_env`` (a variable) or ``<field>_file`` (a file, relative to
    the config's folder); None when neither is set. A running pushcd never sees a variable exported after it
    started, so a message about one says how a file brings the secret on a reload (SIGHUP)."""
    if env and file:
        raise ConfigError(f"{table} set {field}_env or {field}_file, not both")
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{table} {field}_env: environment variable {env} is not set; export {env}=<{what}> "
                              f"before pushcd starts, or put it in a file and set {field}_file instead (a running "
                              f"pushcd never sees a variable exported after it started; a file is read at each "
                              f"reload)")
        return value.encode()
    if file:
        path = (base / file).expanduser().resolve()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{table} {field}_file: cannot read {path} ({exc.strerror}); create it with {what} "
                              f"(mode 0600)") from None
        if not value:
            raise ConfigError(f"{table} {field}_file: {path} is empty; put {what} in it")
        return value.encode()
    return None


def read_hooks(cfg: Webhook, base: Path) -> tuple[tuple[str, str, bytes], ...]:
    """Every configured receiver with its secret; GitHub's only when it has one or nothing else is set."""
    hooks = []
    receivers = (("gitlab", "[webhook.gitlab]", "token", cfg.gitlab, "the GitLab secret token"),
                 ("gitea", "[webhook.gitea]", "secret", cfg.gitea, "the Gitea/Forgejo secret"))
    for kind, table, field, hook, what in receivers:
        if hook is None:
            continue
        value = secret_from(table, field, getattr(hook, f"{field}_env"), getattr(hook, f"{field}_file"), base, what)
        if value is None:
            raise ConfigError(f"{table} needs {field}_env or {field}_file: deliveries cannot be verified without it")
        hooks.append((kind, hook.path, value))
    if cfg.secret_env or cfg.secret_file or not hooks:
        hooks.insert(0, ("github", cfg.path, read_secret(cfg, base)))
    paths = [path for _, path, _ in hooks]
    for path in paths:
        if not path.startswith("/"):
            raise ConfigError(f'webhook path "{path}" must start with "/"')
    if len(set(paths)) != len(paths):
        raise ConfigError("[webhook] path, [webhook.gitlab] path and [webhook.gitea] path must differ")
    return tuple(hooks)


def read_secret(cfg: Webhook, base: Path) -> bytes:
    value = secret_from("[webhook]", "secret", cfg.secret_env, cfg.secret_file, base,
                        "the webhook secret you gave GitHub")
    if value is not None:
        return value
    raise ConfigError("[webhook] needs secret_env or secret_file; GitHub deliveries cannot be verified without a secret")


def load(path: str | os.PathLike[str], *, secret: bool = True) -> Settings:
    """Read, validate and resolve a config file; no side effects.

    ``secret=False`` skips reading the webhook secret (client commands need
    only the control address and token).
    """
    source, raw = parse(path)
    return resolve(source, raw, secret=secret)


def parse(path: str | os.PathLike[str]) -> tuple[Path, Config]:
    """The file, read and type-checked (nothing resolved yet): its absolute path and contents."""
    source = Path(path).resolve()
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass --config with the path of your config.toml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    found = _schema_problems(data)
    if found:
        raise ConfigError("\n".join(f"{path}: {line}" for line in found))
    return source, msgspec.convert(data, Config)


def _schema_problems(data: dict[str, object]) -> list[str]:
    """Each table type-checked on its own, nested ones too, so one run names every table's mistake (msgspec
    stops at the first mistake of what it is given)."""
    return _table_problems(data, Config, "")


def _table_problems(value: object, table: type[msgspec.Struct], path: str) -> list[str]:
    out: list[str] = []
    broken = set()  # sub-tables with mistakes of their own: said already, left out of this table's check
    if isinstance(value, dict):
        for f in msgspec.structs.fields(table):
            sub = value.get(f.name)
            if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct) and isinstance(sub, dict):
                found = _table_problems(sub, f.type, f"{path}.{f.name}")
            elif _named_tables(f.type) and isinstance(sub, dict):  # [processes.NAME], [jobs.NAME]: each by its name
                found = [line for name, each in sub.items()
                         for line in _table_problems(each, _named_tables(f.type), f"{path}.{f.name}.{name}")]
            else:
                found = []
            if found:
                out += found
                broken.add(f.name)
        value = {k: v for k, v in value.items() if k not in broken}
    try:
        msgspec.convert(value, table)
    except msgspec.ValidationError as exc:
        text = str(exc)  # its path is within this table ("- at `$.ready`"), or absent at the table itself
        missing = re.match(r"Object missing required field `(\w+)`$", text)
        if not (missing and missing[1] in broken):
            at = f" - at `${path}"
            out.append(_explain(msgspec.ValidationError(
                text.replace(" - at `$", at, 1) if " - at `$" in text else f"{text}{at}`")))
    return out


def _named_tables(kind: object) -> Any:
    """The Struct of ``dict[str, Struct]`` (tables named by the user), else None."""
    if typing.get_origin(kind) is dict:
        value = typing.get_args(kind)[1]
        if isinstance(value, type) and issubclass(value, msgspec.Struct):
            return value
    return None


def problems(raw: Config) -> list[str]:
    """Every mistake the file alone shows (each a line naming the key and the fix), all of them at once."""
    out = []
    if (not raw.app.command and not raw.app.procfile) or not all(raw.app.command):
        out.append("[app] command must be a non-empty list of strings, e.g. [\"python\", \"app.py\"] "
                   "(or set [app] procfile to take it from the Procfile's web: line)")
    if not raw.webhook.path.startswith("/"):
        out.append(f'[webhook] path = "{raw.webhook.path}" must start with "/"')
    for i, n in enumerate(raw.notify):
        key = f"[[notify]] #{i + 1}"
        unknown = sorted(set(n.events) - set(EVENTS))
        if unknown:
            out.append(f"{key} events: {', '.join(unknown)} unknown; choose from {', '.join(EVENTS)}")
        if n.kind != "github" and not n.url.startswith(("http://", "https://")):
            out.append(f'{key} url = "{n.url}" is not an http(s) URL; give the receiver\'s URL')
        if n.kind == "github" and (not (n.token_env or n.token_file) or not raw.repo.full_name):
            out.append(f"{key} kind = \"github\" needs token_env or token_file (a token that may write "
                       f"commit statuses) and [repo] full_name (owner/name)")
    out += _release_problems(raw.release) + _listen_clashes(raw)
    return out


def _listen_clashes(raw: Config) -> list[str]:
    """Two listeners on one port of one host (or of every host): `run` would fail with "address in use"."""
    listens = [("[webhook] listen", raw.webhook.listen), ("[control] listen", raw.control.listen),
               ("[app] listen", raw.app.listen)]
    seen: list[tuple[str, Address]] = []
    out = []
    for key, value in listens:
        if not value:
            continue
        try:
            addr = parse_address(value, key)
        except ConfigError as exc:
            out.append(str(exc))
            continue
        for other, was in seen:
            anywhere = {"0.0.0.0", "::", ""}
            same_host = addr.host == was.host or {addr.host, was.host} & anywhere
            if addr.port == was.port and addr.port != 0 and same_host:
                out.append(f'{key} = "{value}" takes the port of {other}; give each listener its own port')
        seen.append((key, addr))
    return out


def resolve(source: Path, raw: Config, *, secret: bool = True) -> Settings:
    base = source.parent
    found = problems(raw)
    if found:
        raise ConfigError("\n".join(found))
    stop_signal = _signal(raw.app.stop_signal, "[app]")
    repo_path = (base / raw.repo.path).resolve()
    app_cwd = _folder_in(repo_path, raw.app.cwd, "[app]")
    watch_paths = tuple((repo_path / p).resolve() for p in raw.watch.paths) or (repo_path,)
    control_listen = parse_address(raw.control.listen, "[control] listen")
    hooks = read_hooks(raw.webhook, base) if secret else ()
    app_listen = parse_address(raw.app.listen, "[app] listen") if raw.app.listen else None
    app = AppSpec(command=tuple(raw.app.command), cwd=app_cwd, env=dict(raw.app.env),
                  unset=frozenset(secret_variables(raw)), stop_signal=stop_signal,
                  stop_timeout=raw.app.stop_timeout, listen=app_listen, ready=raw.app.ready,
                  subdir=str(app_cwd.relative_to(repo_path)))
    problem = probe_problem(app) if app.command else None  # a Procfile's web: line is checked per release
    if problem:
        raise ConfigError(problem)
    state_dir = (base / raw.state.dir).resolve()
    if raw.release.mode == "snapshot" and state_dir.is_relative_to(repo_path):
        raise ConfigError(f"[state] dir = {state_dir} is inside [repo] path, where releases would copy "
                          f"themselves; put it outside the work tree (or set [release] mode = \"in-place\")")
    settings = Settings(
        source=source,
        raw=raw,
        webhook_listen=parse_address(raw.webhook.listen, "[webhook] listen"),
        control_listen=control_listen,
        app=app,
        secret=dict((k, v) for k, _, v in hooks).get("github", b""),
        repo_path=repo_path,
        watch_paths=watch_paths,
        state_dir=state_dir,
        control_token=_control_token(raw.control, control_listen, base),
        allow_from=_networks(raw.webhook.allow_from, "[webhook] allow_from"),
        trusted_proxies=_networks(raw.webhook.trusted_proxies, "[webhook] trusted_proxies"),
        tls=_tls(raw.webhook, base),
        hooks=hooks,
        auth=_auth(raw.repo.auth, base) if secret else GitAuth(),
        notify_secrets=tuple(_notify_secrets(n, f"[[notify]] #{i + 1}", base) if secret else (None, None)
                             for i, n in enumerate(raw.notify)),
        processes=_processes(raw, repo_path),
        jobs=_jobs(raw, repo_path),
        name=raw.app.name or (raw.repo.full_name or "").rpartition("/")[2] or repo_path.name,
        log_dir=(base / raw.log.dir).resolve() if raw.log.dir else state_dir / "logs",
    )
    return settings


def _release_problems(cfg: Release) -> list[str]:
    out = []
    for entry in cfg.link:
        parts = entry.rstrip("/").split("/")
        if not entry.rstrip("/") or entry.startswith("/") or ".." in parts or parts[0] == ".git":
            out.append(f'[release] link: "{entry}" must be a path inside the repository, such as ".env" '
                       f'or "media/" (not absolute, no "..", not .git)')
    if cfg.requirements and (cfg.requirements.startswith("/") or ".." in cfg.requirements.split("/")):
        out.append(f'[release] requirements = "{cfg.requirements}" must be a file of the repository, '
                   f'such as "requirements.txt"')
    return out


def secret_variables(raw: Config) -> list[str]:
    """Names of the environment variables pushcd reads secrets from."""
    w, a = raw.webhook, raw.repo.auth
    names = [w.secret_env, w.gitlab and w.gitlab.token_env, w.gitea and w.gitea.secret_env, raw.control.token_env,
             a.token_env, a.ssh_passphrase_env]
    names += [n.secret_env for n in raw.notify] + [n.token_env for n in raw.notify]
    return [n for n in names if n]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _control_token(cfg: Control, listen: Address, base: Path) -> bytes | None:
    value = secret_from("[control]", "token", cfg.token_env, cfg.token_file, base, "a long random token")
    if value is None and not is_loopback(listen.host):
        raise ConfigError(f'[control] listen = "{listen}" is not loopback, so it needs a bearer token: '
                          f'set token_env (a variable holding one) or token_file')
    return value


def _notify_secrets(cfg: Notify, table: str, base: Path) -> tuple[bytes | None, bytes | None]:
    return (secret_from(table, "secret", cfg.secret_env, cfg.secret_file, base, "the signing secret"),
            secret_from(table, "token", cfg.token_env, cfg.token_file, base, "a token that may write commit statuses"))


def _networks(values: list[str], key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(f'{key}: "{value}" is not an address or CIDR block, e.g. "192.30.252.0/22"') from None
    return tuple(out)


def _auth(cfg: Auth, base: Path) -> GitAuth:
    key = known = None
    if cfg.ssh_key:
        key = (base / cfg.ssh_key).expanduser().resolve()
        if not key.is_file():
            raise ConfigError(f"[repo.auth] ssh_key: {key} does not exist; give the private key of the deploy key")
    if cfg.known_hosts:
        known = (base / cfg.known_hosts).expanduser().resolve()
        if not known.is_file():
            raise ConfigError(f"[repo.auth] known_hosts: {known} does not exist; create it with "
                              f"ssh-keyscan HOST >> {known} (and check the fingerprint)")
    passphrase = secret_from("[repo.auth]", "ssh_passphrase", cfg.ssh_passphrase_env, cfg.ssh_passphrase_file, base,
                             "the deploy key's passphrase") or b""
    token = secret_from("[repo.auth]", "token", cfg.token_env, cfg.token_file, base, "an access token with read access")
    source = f"${cfg.token_env}" if cfg.token_env else cfg.token_file
    return GitAuth(key, passphrase.decode(), known, token.decode() if token else None, source, cfg.username)


def _tls(cfg: Webhook, base: Path) -> tuple[Path, Path] | None:
    if not cfg.tls_cert and not cfg.tls_key:
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise ConfigError("[webhook] set both tls_cert and tls_key (PEM files), or neither")
    cert, key = (base / cfg.tls_cert).resolve(), (base / cfg.tls_key).resolve()
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not path.is_file():
            raise ConfigError(f"[webhook] {name}: {path} does not exist")
    return cert, key
