"""Config vars: the app's settings that live outside the repository and travel with its releases.

``pushcd config set KEY=VALUE`` (or ``unset``, or ``import .env``) makes a new set of
values; a set is named by a digest of its contents, and a release is a commit, its folder
*and* the digest of the config it runs with (:attr:`supervisor.built.Built.config`). So a
change is a new release of the same code, put live through the same gates, and a rollback
brings back the values the release it goes to ran with, as Heroku's does.

The values are kept in one file, ``[state] dir/config-vars.json``, mode 0600, written
atomically; only the digest ever appears in history, ``releases``, the page or the logs.

>>> import tempfile, pathlib
>>> store = ConfigVars(pathlib.Path(tempfile.mkdtemp()) / "config-vars.json")
>>> store.current, store.values("")
('', {})
>>> digest = store.add({"DEBUG": "0", "GREETING": "hello"})
>>> store.current == ""  # added, not yet what the next release runs with
True
>>> store.make_current(digest)
>>> ConfigVars(store.path).values(digest)
{'DEBUG': '0', 'GREETING': 'hello'}
>>> digest == store.add({"GREETING": "hello", "DEBUG": "0"})  # the same values, the same name
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger("supervisor.config")

CONFIG_VARS = "config-vars.json"  # in [state] dir
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED = ("SUPERVISOR_", "LISTEN_", "NOTIFY_SOCKET")  # pushcd sets these for each process
SETS_KEPT = 100  # sets remembered for rollbacks: far more than the releases kept


class ConfigVarsError(ValueError):
    """A key or file that cannot be taken, with what to do instead."""


def digest(values: Mapping[str, str]) -> str:
    """The name of a set of values: "" for none (releases from before config vars keep their identity).

    >>> digest({}), digest({"A": "1"}) == digest({"A": "1"}), digest({"A": "1"}) == digest({"A": "2"})
    ('', True, False)
    """
    if not values:
        return ""
    canonical = json.dumps(sorted(values.items()), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:12]


def check_key(key: str) -> str:
    """
    >>> check_key("DATABASE_URL")
    'DATABASE_URL'
    >>> try:
    ...     check_key("SUPERVISOR_COMMIT")
    ... except ConfigVarsError as exc:
    ...     print(exc)
    SUPERVISOR_COMMIT: pushcd sets SUPERVISOR_*, LISTEN_* and NOTIFY_SOCKET itself
    """
    if not KEY.match(key):
        raise ConfigVarsError(f"{key!r}: a key is letters, digits and _, not starting with a digit")
    if key.startswith(RESERVED):
        raise ConfigVarsError(f"{key}: pushcd sets SUPERVISOR_*, LISTEN_* and NOTIFY_SOCKET itself")
    return key


def parse_assignments(words: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` words as a shell hands them over (the value is everything after the first ``=``).

    >>> parse_assignments(["A=1", "URL=postgres://u:p@h/db?x=1", "EMPTY="])
    {'A': '1', 'URL': 'postgres://u:p@h/db?x=1', 'EMPTY': ''}
    >>> parse_assignments(["A"])
    Traceback (most recent call last):
    ...
    supervisor.configvars.ConfigVarsError: 'A': give KEY=VALUE (to remove a key: pushcd config unset A)
    """
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigVarsError(f"{word!r}: give KEY=VALUE (to remove a key: pushcd config unset {word})")
        out[check_key(key)] = value
    return out


def parse_dotenv(path: Path) -> dict[str, str]:
    """A ``.env`` file, parsed by python-dotenv: quotes, ``export``, comments, multi-line quoted values.
    Nothing is interpolated from pushcd's own environment: what is written is what the app gets."""
    from dotenv import dotenv_values  # only `config import` needs it

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigVarsError(f"{path}: cannot read it ({exc})") from exc
    import io

    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    bare = [k for k, v in values.items() if v is None]
    if bare:
        raise ConfigVarsError(f"{path}: {', '.join(bare)} has no value (write KEY= for an empty one)")
    return {check_key(k): str(v) for k, v in values.items()}


def masked(values: Mapping[str, str]) -> dict[str, str]:
    """What `pushcd config` shows without --show: a value's length, never a character of it.

    >>> masked({"SECRET": "hunter2", "EMPTY": ""})
    {'SECRET': '*** (7 characters)', 'EMPTY': ''}
    """
    return {k: f"*** ({len(v)} characters)" if v else "" for k, v in values.items()}


class ConfigVars:
    """The sets of config vars, by digest, and which set the next new release runs with (:attr:`current`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: in memory only (tests of the worker's decisions)
        self.current = ""
        self._sets: dict[str, dict[str, str]] = {}  # oldest first
        if path is None:
            return
        try:
            data = json.loads(path.read_text())
            self._sets = {str(d): {str(k): str(v) for k, v in s.items()} for d, s in data["sets"].items()}
            self.current = str(data["current"]) if data["current"] in self._sets else ""
        except FileNotFoundError:
            pass
        except PermissionError:
            raise ConfigVarsError(f"{path}: permission denied; run this as the user pushcd runs as") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Never start the app with a guess: an unreadable store is an error the operator must see.
            raise ConfigVarsError(f"{path} is unreadable ({exc}); restore it from a backup, or remove it "
                                  f"and set the config vars again") from exc

    def values(self, name: str) -> dict[str, str]:
        """The values of set ``name`` ("" is the empty set). A set that is gone (pruned, or the file lost)
        is an error, not an empty set: a release must not start without its database URL."""
        if not name:
            return {}
        try:
            return dict(self._sets[name])
        except KeyError:
            raise ConfigVarsError(f"config vars {name} are no longer kept in {self.path}; set them again") from None

    def view(self, live: str | None, show: bool = False) -> dict[str, Any]:
        """`pushcd config` and GET /config: the set new releases take, the one the live release runs with
        (``live``; None: unknown), and the values, masked unless ``show``."""
        values = self.values(self.current)
        return {"config": self.current, "live": live, "vars": values if show else masked(values)}

    def knows(self, name: str) -> bool:
        return not name or name in self._sets

    def add(self, values: Mapping[str, str]) -> str:
        """Keep a set (the newest one); its digest. It serves once a release with it goes live."""
        name = digest(values)
        if name:
            self._sets.pop(name, None)
            self._sets[name] = dict(values)
            self._save()
        return name

    def make_current(self, name: str) -> None:
        """New releases run with set ``name`` from now on."""
        if name != self.current and self.knows(name):
            self.current = name
            self._save()

    def went_back(self, bad: str, good: str) -> None:
        """A release with set ``bad`` was sent back to one with set ``good``: new releases take ``good`` again
        (unless the operator set others meanwhile)."""
        if self.current == bad:
            self.make_current(good)

    def changed(self, set_: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> dict[str, str]:
        """The current values with ``set_`` applied and ``unset`` removed (unknown keys to unset: an error)."""
        values = self.values(self.current)
        missing = [k for k in unset if k not in values and k not in (set_ or {})]
        if missing:
            raise ConfigVarsError(f"{', '.join(missing)}: not set (`pushcd config` lists the keys)")
        for key in unset:
            values.pop(key, None)
        values.update(set_ or {})
        return values

    def _save(self) -> None:
        keep = list(self._sets)[-SETS_KEPT:]
        if self.current and self.current not in keep:
            keep.insert(0, self.current)
        self._sets = {k: self._sets[k] for k in self._sets if k in keep}
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not for a moment
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump({"current": self.current, "sets": self._sets}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
