"""Git: the deployed work tree through libgit2 (pygit2), never a ``git`` subprocess.

``tree`` moves the work tree (all or nothing), ``journal`` records what is under way so a crash
can be repaired, ``credentials`` answers libgit2's questions (keys, tokens, host keys),
``options`` sets libgit2's process-wide limits, ``submodules`` decides which submodule URLs may
be fetched, and ``thread`` is the one thread all of it runs in.
"""
