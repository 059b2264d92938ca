"""Release folders built from git objects: a release made from a base (hard links, then only what differs
written) holds exactly what one made from nothing holds, whatever changed between them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pygit2
import pytest

from supervisor.releases import snapshot
from supervisor.releases.pyenv import BuildFailed, dependencies, installer_error

from .conftest import Repos, git


def listing(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: kind and content (a symlink's target), and the files' modes."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(folder) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = (oct(stat.S_IMODE(full.stat().st_mode)), full.read_text())
    return out


def build(repos: Repos, dest: Path, base: snapshot.Base | None = None, overlay: bool = False,
          links: tuple[str, ...] = (), spare: Path | None = None) -> snapshot.Base:
    repo = pygit2.Repository(str(repos.work))
    content = (snapshot.of_work_tree(repo, repos.work, links, links) if overlay
               else snapshot.of_commit(repo, str(repo.head.target), links))  # links shape both, as in Snapshots
    snapshot.write(repo, content, dest / content.id, workdir=repos.work, base=base, links=links, spare=spare)
    snapshot.seal(dest / content.id)
    return snapshot.Base(dest / content.id, content)


def advance(repos: Repos, files: dict[str, str | None], message: str) -> None:
    repos.commit(files, message)
    git("pull", "-q", "--ff-only", cwd=repos.work)


@pytest.mark.parametrize("use_spare", [False, True])
def test_a_release_built_from_a_base_equals_one_built_from_nothing(tmp_path: Path, repos: Repos,
                                                                  use_spare: bool) -> None:
    advance(repos, {"keep.txt": "same\n", "dir/a.txt": "a\n", "dir/sub/b.txt": "b\n", "gone/x.txt": "x\n",
                    "becomes_dir": "file\n", "run.sh": "#!/bin/sh\n"}, "first")
    (repos.dev / "run.sh").chmod(0o755)
    os.symlink("keep.txt", repos.dev / "alias")
    advance(repos, {}, "an executable and a symlink")
    one, two = tmp_path / "one", tmp_path / "two"
    base = build(repos, one)
    assert stat.S_IMODE((base.root / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((base.root / "keep.txt").stat().st_mode) == 0o444
    assert stat.S_IMODE((base.root / "dir").stat().st_mode) == 0o555
    spare = tmp_path / "spare" / base.root.name
    if use_spare:
        snapshot.make_spare(pygit2.Repository(str(repos.work)), base, spare)
    advance(repos, {"dir/a.txt": "a2\n", "gone/x.txt": None, "becomes_dir": None, "becomes_dir/inner.txt": "in\n",
                    "new/deep/c.txt": "c\n"}, "second")
    incremental = build(repos, one, base=base, spare=spare if use_spare else None)
    from_nothing = build(repos, two)
    assert incremental.root.name == from_nothing.root.name
    assert listing(incremental.root) == listing(from_nothing.root)
    assert not (incremental.root / "gone").exists()  # an emptied folder goes too
    assert (incremental.root / "keep.txt").stat().st_ino == (base.root / "keep.txt").stat().st_ino
    assert (base.root / "dir" / "a.txt").read_text() == "a\n"  # the base never changed
    assert not spare.exists()  # taken by the build


def test_hand_edits_are_copied_into_the_release_and_links_point_to_the_work_tree(tmp_path: Path,
                                                                                 repos: Repos) -> None:
    advance(repos, {"app.py": "v1\n", "media/.gitkeep": "", ".gitignore": ".env\n"}, "first")
    base = build(repos, tmp_path, links=(".env", "media/"))
    (repos.work / "app.py").write_text("edited\n")
    (repos.work / "new.py").write_text("untracked\n")
    (repos.work / ".env").write_text("ignored\n")
    dirty = build(repos, tmp_path, base=base, overlay=True, links=(".env", "media/"))
    assert dirty.content.dirty and set(dirty.content.overlay) == {"app.py", "new.py"}
    assert (dirty.root / "app.py").read_text() == "edited\n" and (dirty.root / "new.py").read_text() == "untracked\n"
    assert (dirty.root / "app.py").stat().st_ino != (repos.work / "app.py").stat().st_ino
    assert os.readlink(dirty.root / ".env") == str(repos.work / ".env")
    assert os.readlink(dirty.root / "media") == str(repos.work / "media")
    assert (base.root / "app.py").read_text() == "v1\n"
    (repos.work / "app.py").write_text("v1\n")  # the edit reverted: the clean release's content again
    (repos.work / "new.py").unlink()
    repo = pygit2.Repository(str(repos.work))
    links = (".env", "media/")
    assert snapshot.of_work_tree(repo, repos.work, links, links).id == base.content.id  # reused, not rebuilt


def test_dependency_files_are_detected_in_order_and_a_named_missing_one_is_an_error(tmp_path: Path) -> None:
    assert dependencies(tmp_path, None) is None
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert dependencies(tmp_path, None) is None  # tool settings only: no environment
    (tmp_path / "requirements.txt").write_text("flask\n")
    assert dependencies(tmp_path, None).file == "requirements.txt"  # type: ignore[union-attr]
    (tmp_path / "uv.lock").write_text("")
    assert dependencies(tmp_path, None).kind == "uv.lock"  # type: ignore[union-attr]
    assert dependencies(tmp_path, "") is None
    with pytest.raises(BuildFailed, match="requirements-prod.txt"):
        dependencies(tmp_path, "requirements-prod.txt")


def test_the_installer_error_line_leads() -> None:
    lines = ["Resolved 3 packages", "error: No solution found when resolving dependencies:",
             "  ╰─▶ Because humanize==99 was not found, we can conclude that your requirements are unsatisfiable."]
    assert installer_error(lines).startswith("error: No solution found when resolving dependencies: | ╰─▶ Because")


def test_where_hard_links_are_refused_releases_are_copies(tmp_path: Path, repos: Repos,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Hardening #19, not tried before: a state dir on a filesystem that refuses hard links. No such
    filesystem can be mounted here (this kernel has no vfat), so os.link refuses as FAT does (EPERM)."""
    advance(repos, {"keep.txt": "same\n", "dir/a.txt": "a\n"}, "first")
    base = build(repos, tmp_path / "one")

    def refuse(src: object, dst: object, **_kw: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(snapshot, "_copies_told", False)
    advance(repos, {"dir/a.txt": "a2\n"}, "second")
    copied = build(repos, tmp_path / "one", base=base)
    assert listing(copied.root) == listing(build(repos, tmp_path / "two").root)
    assert (copied.root / "keep.txt").stat().st_ino != (base.root / "keep.txt").stat().st_ino  # a copy
    assert stat.S_IMODE((copied.root / "keep.txt").stat().st_mode) == 0o444  # read-only all the same
    warnings = [r.getMessage() for r in caplog.records if "hard links refused" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not once per file
