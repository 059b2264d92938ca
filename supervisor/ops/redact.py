"""Credentials never leave in a message: ``https://user:pass@host`` becomes ``https://user:***@host``.

A remote URL with a password or token in it (``[repo] url``, a remote set up
by hand) reaches error messages from libgit2 and from us; every message that
is logged, stored in the history or shown on the page passes through
:func:`redact`, and :class:`RedactFilter` covers every log record.

>>> redact("fetch from https://bob:hunter2@example.com/r.git failed")
'fetch from https://bob:***@example.com/r.git failed'
>>> redact("clone of https://ghp_abc123@github.com/o/r.git failed")
'clone of https://***@github.com/o/r.git failed'
>>> redact("ssh://git@github.com/o/r.git and git@github.com:o/r.git stay as they are")
'ssh://git@github.com/o/r.git and git@github.com:o/r.git stay as they are'
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ ; userinfo without '/', '@' or white space
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*)(?P<password>:[^/@\s]*)?@")


def _hide(m: re.Match[str]) -> str:
    scheme, user, password = m["scheme"], m["user"], m["password"]
    if password:
        return f"{scheme}{user}:***@"
    if scheme.lower().startswith(("http", "ftp")) and user:
        return f"{scheme}***@"  # a bare token in the user part (https://TOKEN@host)
    return m[0]  # ssh://git@host: a user name, not a secret


def redact(text: str) -> str:
    return _USERINFO.sub(_hide, text) if "@" in text else text


class RedactFilter(logging.Filter):
    """Applied to every handler: the message is formatted once, then redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
