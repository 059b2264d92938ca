"""A command line as the argv to start: Procfile lines and scheduled jobs' shell lines."""

from __future__ import annotations

import re
import shlex

SEVERAL = {"&&", "||", ";", "|", "&"}  # more than one command: the shell stays, and the group stop reaches all
SHELL = {"<", ">", ">>", "(", ")"}
SUBSTITUTION = re.compile(r"\$[{(A-Za-z_]|`")  # $PORT, ${PORT}, $(...), `...`


def argv_of(command: str) -> list[str]:
    """A command line as the argv to start: split, or given to ``/bin/sh -c`` when it has shell syntax
    (``exec`` in front when it is one command). ValueError when it cannot be split or is empty.

    >>> argv_of("python manage.py clearsessions"), argv_of("cd app && ./run >> out.log")
    (['python', 'manage.py', 'clearsessions'], ['/bin/sh', '-c', 'cd app && ./run >> out.log'])
    """
    argv = shlex.split(command)
    tokens = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    if not argv:
        raise ValueError("no command")
    command = command.strip()
    if any(t in SEVERAL for t in tokens):
        return ["/bin/sh", "-c", command]
    if any(t in SHELL for t in tokens) or SUBSTITUTION.search(command):
        return ["/bin/sh", "-c", f"exec {command}"]
    return argv
