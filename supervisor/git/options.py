"""libgit2's process-wide settings: timeouts, cache and pack limits, the home whose known_hosts it reads."""

from __future__ import annotations

from pathlib import Path

import pygit2
from pygit2.enums import Option

PACK_FILES_OPEN = 16
OBJECT_CACHE_BYTES = 8 << 20
PACK_MAP_BYTES = 64 << 20



def set_network_timeouts(seconds: float) -> None:
    """libgit2's socket timeouts, so a hung remote fails instead of hanging forever.

    Also caps the pack files libgit2 keeps open: every fetch adds a pack (libgit2
    has no ``fetch.unpackLimit``), and by default it keeps them all open, one more
    file descriptor per deploy, forever.
    """
    ms = max(1, int(seconds * 1000))
    pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, ms)
    pygit2.option(Option.SET_SERVER_TIMEOUT, ms)
    pygit2.option(Option.SET_MWINDOW_FILE_LIMIT, PACK_FILES_OPEN)
    # libgit2's object cache may grow to 256 MB and its pack maps to gigabytes by default;
    # a supervisor reads a few trees per deploy, so keep both small.
    pygit2.option(Option.SET_CACHE_MAX_SIZE, OBJECT_CACHE_BYTES)
    pygit2.option(Option.SET_MWINDOW_MAPPED_LIMIT, PACK_MAP_BYTES)


def use_known_hosts(known_hosts: Path, home: Path) -> None:
    """libgit2 reads ``$HOME/.ssh/known_hosts``; give it a home whose file is ours.

    This is process-wide (libgit2 has one home directory), so it also stops
    libgit2 reading the user's ~/.gitconfig: the work tree's own config still applies.
    """
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "known_hosts").write_bytes(known_hosts.read_bytes())
    pygit2.option(Option.SET_HOMEDIR, str(home))
