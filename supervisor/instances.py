"""The pushcd instances on this box: one config each in a folder (``/etc/pushcd`` for the systemd
template unit ``pushcd@.service``), and what each one's control API says of itself.

Read-only and quick: a config that cannot be read is a row saying why, an instance that does not
answer within two seconds is "not answering", and nothing else on the box is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import config
from .client import ClientError, NotRunning, call

DEFAULT_DIR = Path("/etc/pushcd")  # where examples/systemd/pushcd@.service reads NAME.toml
ANSWER_WITHIN = 2.0  # seconds an instance has to answer GET /status


@dataclass(frozen=True)
class Instance:
    name: str
    config: str
    state: str  # what the instance says ("running", "deploying", ...), or "not answering", "config error", "unknown"
    commit: str | None = None
    last_deploy: str | None = None  # the last deploy's result: ok, refused, failed
    control: str | None = None
    problem: str | None = None  # why the state is "config error" or "unknown"


def listing(folder: Path) -> list[Instance]:
    """One row per ``*.toml`` in ``folder``, by file name."""
    if not folder.is_dir():
        raise config.ConfigError(f"{folder}: no such folder; give the folder of the instances' configs with --dir "
                                 f"(the systemd template unit reads {DEFAULT_DIR}/NAME.toml)")
    return [_instance(path) for path in sorted(folder.glob("*.toml"))]


def _instance(path: Path) -> Instance:
    try:
        settings = config.load(path, secret=False)
    except config.ConfigError as exc:
        return Instance(path.stem, str(path), "config error", problem=str(exc).splitlines()[0])
    control = settings.control_listen.url()
    try:
        status = call(settings, "GET", "/status", timeout=ANSWER_WITHIN)
    except NotRunning:
        return Instance(settings.name, str(path), "not answering", control=control)  # stopped, or hung
    except ClientError as exc:  # e.g. 401: its token is another user's
        return Instance(settings.name, str(path), "unknown", control=control, problem=str(exc))
    last = status.get("last_deploy") or {}
    return Instance(status.get("app") or settings.name, str(path), status["state"], status.get("deployed_commit"),
                    last.get("result"), control)
