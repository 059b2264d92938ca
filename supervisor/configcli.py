"""`pushcd config`: what the command line asks of the config vars, and how it shows them.

Through the running pushcd when it answers (a change is then a release, through the gates);
when it does not, straight in ``[state] dir``: the next start runs with them, through the gates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .configvars import CONFIG_VARS, ConfigVars, ConfigVarsError, check_key, parse_assignments, parse_dotenv


def change(action: str, words: list[str], restart: bool) -> dict[str, Any] | None:
    """The body of POST /config for ``action`` (None: only list them).

    >>> change("set", ["A=1", "B=x=y"], True)
    {'set': {'A': '1', 'B': 'x=y'}, 'unset': [], 'restart': True}
    >>> change("unset", ["A"], False)
    {'set': {}, 'unset': ['A'], 'restart': False}
    """
    if action == "list":
        if words:
            raise ConfigVarsError(f"{words[0]!r}: to change config vars, say `pushcd config set {words[0]}`")
        return None
    if not words:
        raise ConfigVarsError(f"pushcd config {action}: give " + {"set": "KEY=VALUE ...", "unset": "KEY ...",
                                                                  "import": "a .env file"}[action])
    if action == "set":
        set_, unset = parse_assignments(words), []
    elif action == "unset":
        set_, unset = {}, [check_key(k) for k in words]
    else:
        if len(words) != 1:
            raise ConfigVarsError("pushcd config import: give one .env file")
        set_, unset = parse_dotenv(Path(words[0])), []
    return {"set": set_, "unset": unset, "restart": restart}


def listing(data: dict[str, Any]) -> str:
    """`pushcd config` as a person reads it."""
    lines = [f"{key}={value}" for key, value in sorted(data["vars"].items())] or ["(no config vars)"]
    live = data.get("live")
    if live is not None and live != data["config"]:
        lines.append(f"(the live release runs with {live or '(none)'}; these, {data['config'] or '(none)'}, apply "
                     f"at the next deploy or `pushcd restart`)")
    return "\n".join(lines)


def offline(state_dir: Path, body: dict[str, Any] | None, show: bool, as_json: bool) -> int:
    """pushcd is not running: list or change the config vars in the state dir; the next start applies them."""
    store = ConfigVars(state_dir / CONFIG_VARS)
    if body is not None:
        try:
            store.make_current(store.add(store.changed(body["set"], body["unset"])))
        except OSError as exc:
            raise ConfigVarsError(f"cannot write {store.path} ({exc.strerror or exc}); run this as the user "
                                  f"pushcd runs as") from None
    data = store.view(None, show)
    if as_json:
        print(json.dumps(data, indent=2))
    elif body is not None:
        print(f"pushcd is not running: config vars {store.current or '(none)'} saved in {store.path}; the next "
              f"start runs with them, through the gates")
    else:
        print(listing(data))
    return 0
