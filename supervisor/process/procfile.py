"""Procfile: ``name: command`` per line, as Heroku, honcho and piku read it.

``web`` is the web process (the one with the held socket), ``release`` the task
run once per deploy before anything of the new release serves, every other name
a process type. Blank lines and ``#`` comments are skipped; a command is split
as a shell would split it (``shlex``), with no shell in between.

>>> parse("web: gunicorn app:app --bind fd://{fd}\\n# comment\\nworker: python worker.py -q\\n")
{'web': ['gunicorn', 'app:app', '--bind', 'fd://{fd}'], 'worker': ['python', 'worker.py', '-q']}
>>> parse("web gunicorn\\n")
Traceback (most recent call last):
...
supervisor.process.procfile.ProcfileError: Procfile line 1: "web gunicorn" is not "name: command"
"""

from __future__ import annotations

import re
import shlex

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class ProcfileError(Exception):
    """A Procfile that cannot be read; the message names the line."""


def parse(text: str, where: str = "Procfile") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        name = name.strip()
        if not sep or not NAME.match(name):
            raise ProcfileError(f'{where} line {number}: "{line[:80]}" is not "name: command"')
        if name in out:
            raise ProcfileError(f"{where} line {number}: {name} is declared twice")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ProcfileError(f"{where} line {number}: {exc} in the command of {name}") from None
        if not argv:
            raise ProcfileError(f"{where} line {number}: {name} has no command")
        out[name] = argv
    return out
