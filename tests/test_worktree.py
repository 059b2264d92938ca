"""Git sync against real repositories: fast-forward, divergence, local edits."""

from __future__ import annotations

import subprocess

import pytest

from supervisor.backoff import Backoff
from supervisor.plan import plan
from supervisor.git.tree import Facts, FetchError, GitFailure, WorkTree

from .conftest import Repos, git


def tree(repos: Repos) -> WorkTree:
    return WorkTree(repos.work, "origin", repos.branch)


def clean_and_consistent(repos: Repos) -> None:
    assert git("status", "--porcelain", cwd=repos.work) == ""
    subprocess.run(["git", "fsck", "--no-progress"], cwd=repos.work, check=True, capture_output=True)


def F(head_is_ancestor=True, target_is_ancestor=False, blocking=(), head="a" * 40, target="b" * 40) -> Facts:
    return Facts(head, target, head_is_ancestor, target_is_ancestor, ("x",), tuple(blocking))


def test_plan_decisions() -> None:
    assert plan(F(), "refuse", {}).action == "forward"
    assert plan(F(head="b" * 40), "refuse", {}).action == "none"
    assert plan(F(), "refuse", {"b" * 40: "crashed"}).action == "none"
    refused = plan(F(head_is_ancestor=False), "refuse", {})
    assert refused.action == "refuse" and "diverged" in refused.reason
    assert plan(F(head_is_ancestor=False), "reset", {}).action == "reset"
    ahead = plan(F(head_is_ancestor=False, target_is_ancestor=True), "reset", {})
    assert ahead.action == "refuse" and "diverged" in ahead.reason and "ahead" in ahead.reason
    dirty = plan(F(blocking=("app.py", "x/y.txt")), "reset", {})
    assert dirty.action == "refuse" and "app.py, x/y.txt" in dirty.reason


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(first=0.5, cap=4, healthy=10)
    assert [b.next() for _ in range(5)] == [0.5, 1, 2, 4, 4]
    b.observe_uptime(3)
    assert b.next() == 4
    b.observe_uptime(11)
    assert b.next() == 0.5


def test_fast_forward(repos: Repos) -> None:
    sha = repos.commit({"message.txt": "v2\n", "new/file.txt": "x"}, "v2")
    t = tree(repos)
    assert t.fetch() == sha
    facts = t.facts(sha)
    assert facts.head_is_ancestor and not facts.blocking
    assert set(facts.changed) == {"message.txt", "new/file.txt"}
    t.move_to(sha, "test")
    assert repos.head() == sha
    assert (repos.work / "new/file.txt").read_text() == "x"
    clean_and_consistent(repos)


def test_deleted_files_are_removed(repos: Repos) -> None:
    sha = repos.commit({"README.md": None}, "rm readme")
    t = tree(repos)
    t.move_to(t.fetch(), "test")
    assert repos.head() == sha and not (repos.work / "README.md").exists()
    clean_and_consistent(repos)


def test_local_edits_the_update_touches_are_named(repos: Repos) -> None:
    sha = repos.commit({"message.txt": "v2\n"}, "v2")
    (repos.work / "message.txt").write_text("hot fix on the server\n")
    t = tree(repos)
    facts = t.facts(t.fetch())
    assert facts.blocking == ("message.txt",)
    with pytest.raises(GitFailure):
        t.move_to(sha, "test")  # libgit2 SAFE refuses too, before writing anything
    assert (repos.work / "message.txt").read_text() == "hot fix on the server\n"
    assert repos.head() != sha


def test_untracked_file_in_the_way_blocks(repos: Repos) -> None:
    repos.commit({"extra.txt": "from upstream"}, "add extra")
    (repos.work / "extra.txt").write_text("mine")
    t = tree(repos)
    assert t.facts(t.fetch()).blocking == ("extra.txt",)


def test_unrelated_edits_and_untracked_files_are_kept(repos: Repos) -> None:
    sha = repos.commit({"message.txt": "v2\n"}, "v2")
    (repos.work / "README.md").write_text("local note\n")
    (repos.work / "local.env").write_text("SECRET=1\n")
    git("add", "local.env", cwd=repos.work)  # a staged new file is local state too
    (repos.work / "scratch.txt").write_text("untracked\n")
    t = tree(repos)
    facts = t.facts(t.fetch())
    assert facts.blocking == ()
    t.move_to(sha, "test")
    assert repos.head() == sha
    assert (repos.work / "message.txt").read_text() == "v2\n"
    assert (repos.work / "README.md").read_text() == "local note\n"
    assert (repos.work / "scratch.txt").read_text() == "untracked\n"
    assert "A  local.env" in git("status", "--porcelain", cwd=repos.work)


def test_divergence_is_detected_and_reset_keeps_a_backup(repos: Repos) -> None:
    (repos.work / "local.txt").write_text("local commit\n")
    git("add", "local.txt", cwd=repos.work)
    git("-c", "user.name=x", "-c", "user.email=x@y", "commit", "-qm", "local", cwd=repos.work)
    local = repos.head()
    upstream = repos.commit({"message.txt": "upstream\n"}, "upstream")
    t = tree(repos)
    facts = t.facts(t.fetch())
    assert not facts.head_is_ancestor and not facts.target_is_ancestor
    assert plan(facts, "refuse", {}).action == "refuse"
    ref = t.backup(local)
    t.move_to(upstream, "reset")
    assert repos.head() == upstream and not (repos.work / "local.txt").exists()
    assert git("rev-parse", ref, cwd=repos.work) == local  # nothing lost
    clean_and_consistent(repos)


def test_force_push_upstream_is_divergence(repos: Repos) -> None:
    first = repos.head()
    repos.commit({"a.txt": "a"}, "a")
    t = tree(repos)
    t.move_to(t.fetch(), "a")
    git("reset", "-q", "--hard", first, cwd=repos.dev)
    rewritten = repos.commit({"b.txt": "b"}, "rewritten history")  # pushed with --force
    facts = t.facts(t.fetch())
    assert facts.target == rewritten and not facts.head_is_ancestor
    assert plan(facts, "refuse", {}).action == "refuse"


def test_fetch_errors_are_clear(repos: Repos) -> None:
    git("remote", "set-url", "origin", str(repos.root / "gone.git"), cwd=repos.work)
    with pytest.raises(FetchError, match="fetch from origin"):
        tree(repos).fetch()
    with pytest.raises(FetchError, match="no remote named 'upstream'"):
        WorkTree(repos.work, "upstream", repos.branch).fetch()


def test_wrong_branch_checked_out_is_refused(repos: Repos) -> None:
    git("checkout", "-q", "-b", "other", cwd=repos.work)
    with pytest.raises(GitFailure, match="is on other, not main"):
        tree(repos).check_branch()


def _as(repos: Repos, path: str, kind: str) -> None:
    """Make ``path`` in the dev clone a file, a folder (with a file in it), a symlink or an executable."""
    full = repos.dev / path
    if full.is_dir() and not full.is_symlink():
        subprocess.run(["rm", "-rf", str(full)], check=True)
    elif full.exists() or full.is_symlink():
        full.unlink()
    if kind == "folder":
        full.mkdir()
        (full / "x").write_text("in a folder\n")
    elif kind == "symlink":
        full.symlink_to("message.txt")
    else:
        full.write_text(f"a {kind}\n")
        full.chmod(0o755 if kind == "executable" else 0o644)


@pytest.mark.parametrize("first, then", [("file", "folder"), ("folder", "file"), ("file", "symlink"),
                                         ("symlink", "file"), ("folder", "symlink"), ("file", "executable")])
def test_every_type_change_moves_both_ways(repos: Repos, first: str, then: str) -> None:
    """Hardening #19.4: a folder turning back into a file was refused forever ("local edits would be
    overwritten: conf") with a clean tree, and so was the rollback of the commit that made it a folder."""
    _as(repos, "conf", first)
    a = repos.commit({}, f"conf is a {first}")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    _as(repos, "conf", then)
    b = repos.commit({}, f"conf is a {then}")
    _as(repos, "conf", first)
    c = repos.commit({}, f"conf is a {first} again")
    t = tree(repos)
    t.fetch()
    for target in (b, c, b, a):  # forward through both changes, then back (a rollback) through both
        facts = t.facts(target)
        assert not facts.blocking, (target, facts.blocking)
        t.move_to(target, "test")
        assert repos.head() == target
        clean_and_consistent(repos)
    conf = repos.work / "conf"
    assert conf.is_symlink() == (first == "symlink") and conf.is_dir() == (first == "folder" and not conf.is_symlink())


def test_a_folder_with_an_untracked_file_still_blocks_becoming_a_file(repos: Repos) -> None:
    _as(repos, "conf", "folder")
    repos.commit({}, "conf is a folder")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    _as(repos, "conf", "file")
    target = repos.commit({}, "conf is a file")
    (repos.work / "conf" / "mine.txt").write_text("not in git\n")  # the user's: a move would lose it
    t = tree(repos)
    t.fetch()
    assert t.facts(target).blocking == ("conf",)


def test_a_failing_submodule_update_puts_the_index_back_too(repos: Repos, tmp_path) -> None:
    """Hardening #19.3: the files came back, the index kept the bad gitlink (`MM vendor_lib`), and every later
    deploy failed until a hand `git reset`."""
    from .conftest import Repos as Lib

    lib = Lib(tmp_path / "lib")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib.origin), "vendor_lib", cwd=repos.dev)
    added = repos.commit({}, "add vendor_lib")
    t = WorkTree(repos.work, "origin", repos.branch, submodule_urls=[f"{tmp_path}/*"])
    t.fetch()
    t.move_to(added, "add vendor_lib")
    newer = lib.commit({"lib.txt": "v2\n"}, "lib v2")

    def point(sha: str, message: str) -> str:  # `git add -A` would take the submodule's HEAD instead
        git("update-index", "--cacheinfo", f"160000,{sha},vendor_lib", cwd=repos.dev)
        git("commit", "-q", "-m", message, cwd=repos.dev)
        git("push", "-q", "origin", f"HEAD:{repos.branch}", cwd=repos.dev)
        return git("rev-parse", "HEAD", cwd=repos.dev)

    missing = point("1" * 40, "a gitlink to a commit nobody has")
    t.fetch()
    with pytest.raises(GitFailure, match="submodule"):
        t.move_to(missing, "missing")
    assert repos.head() == added
    assert git("status", "--porcelain", "--ignore-submodules=none", cwd=repos.work) == ""
    fixed = point(newer, "the pointer fixed")
    t.fetch()
    assert not t.facts(fixed).blocking
    t.move_to(fixed, "fixed")
    assert repos.head() == fixed and (repos.work / "vendor_lib" / "lib.txt").read_text() == "v2\n"



def test_a_failed_move_across_a_type_change_leaves_a_clean_tree(repos: Repos) -> None:
    """The ref moves last: a lock on it fails the move after every path was written, so the repair must put a
    file back as a folder, and the index with it."""
    _as(repos, "conf", "folder")
    folder = repos.commit({}, "conf is a folder")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    _as(repos, "conf", "file")
    target = repos.commit({"message.txt": "v2\n"}, "conf is a file")
    t = tree(repos)
    t.fetch()
    lock = repos.work / ".git" / "refs" / "heads" / f"{repos.branch}.lock"
    lock.write_text("")
    with pytest.raises(GitFailure):
        t.move_to(target, "test")
    lock.unlink()
    assert repos.head() == folder and (repos.work / "conf" / "x").read_text() == "in a folder\n"
    clean_and_consistent(repos)
    t.move_to(target, "test")  # and the next try goes through
    assert repos.head() == target and (repos.work / "conf").read_text() == "a file\n"
