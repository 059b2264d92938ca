"""Procfile: ``name: command`` per line, as Heroku, honcho and piku read it.

``web`` is the web process (the one with the held socket), ``release`` the task
run once per release before anything of it serves, every other name a process
type. Blank lines and ``#`` comments are skipped. A plain command is split as a
shell would split it (``shlex``) and run with no shell in between; a line with
shell syntax (``$PORT``, ``&&``, a pipe, a redirection) runs as Heroku runs it,
through ``/bin/sh -c``: ``exec LINE`` when it is one command (so its pid is the
app's, and signals reach it), the line as it is when it is several.

>>> parse("web: gunicorn app:app --bind fd://{fd}\\n# comment\\nworker: python worker.py -q\\n")
{'web': ['gunicorn', 'app:app', '--bind', 'fd://{fd}'], 'worker': ['python', 'worker.py', '-q']}
>>> parse("web: gunicorn -b 0.0.0.0:$PORT app:app\\nrelease: ./manage.py migrate && ./manage.py check\\n")
{'web': ['/bin/sh', '-c', 'exec gunicorn -b 0.0.0.0:$PORT app:app'], 'release': ['/bin/sh', '-c', './manage.py migrate && ./manage.py check']}
>>> parse("web gunicorn\\n")
Traceback (most recent call last):
...
supervisor.process.procfile.ProcfileError: Procfile line 1: "web gunicorn" is not "name: command"
"""

from __future__ import annotations

import re

from ..commandline import argv_of

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
            out[name] = argv_of(command)
        except ValueError as exc:
            raise ProcfileError(f"{where} line {number}: {exc} in the command of {name}") from None
    return out


def held_socket(argv: list[str]) -> list[str]:
    """A web line that binds the public port itself (``$PORT``), pointed at the socket pushcd holds on it
    instead (binding it would fail: pushcd has it): gunicorn's ``--bind``/``-b``, uvicorn's ``--port``
    (its ``--host`` dropped). Other commands are left as they are; they get ``$PORT`` all the same.

    >>> held_socket(["/bin/sh", "-c", "exec gunicorn -w 2 --bind 0.0.0.0:$PORT app:app"])
    ['/bin/sh', '-c', 'exec gunicorn -w 2 --bind fd://{fd} --bind fd://{probe_fd} app:app']
    >>> held_socket(["/bin/sh", "-c", "exec uvicorn --host 0.0.0.0 --port ${PORT} app:app"])
    ['/bin/sh', '-c', 'exec uvicorn --fd {fd} app:app']
    """
    if argv[:2] != ["/bin/sh", "-c"] or "PORT" not in argv[2]:
        return argv
    script = argv[2]
    port = r"\$(?:PORT\b|\{PORT\})"
    if re.search(r"\bgunicorn\b", script):
        script = re.sub(rf"(?:--bind[= ]|-b ?)\S*{port}", "--bind fd://{fd} --bind fd://{probe_fd}", script)
    elif re.search(r"\buvicorn\b", script):
        script = re.sub(rf"--port[= ]{port}", "--fd {fd}", script)
        script = re.sub(r"\s--host[= ]\S+", "", script)
    return [*argv[:2], script]
