"""What git operations raise: a message that says what failed and, where possible, the fix."""

from __future__ import annotations


class GitFailure(Exception):
    """A git operation failed; the message says what and, where possible, the fix."""


class FetchError(GitFailure):
    pass


class MoveFailed(GitFailure):
    """Moving the tree failed; the tree, the index and the ref are back at the running commit."""
