"""Real git repositories for tests and benchmarks, made with the git CLI:
a bare origin, a developer clone that pushes to it, and the deployed clone."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_APP = ROOT / "examples" / "app"


def git(*args: str, cwd: Path | str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class Repos:
    """A bare origin, a developer clone that pushes to it, and the deployed clone."""

    root: Path
    branch: str = "main"
    origin: Path = field(init=False)
    dev: Path = field(init=False)
    work: Path = field(init=False)

    seed: Path = EXAMPLE_APP

    def __post_init__(self) -> None:
        self.origin = self.root / "origin.git"
        self.dev = self.root / "dev"
        self.work = self.root / "work"
        self.root.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", self.branch, str(self.origin), cwd=self.root)
        git("clone", "-q", str(self.origin), str(self.dev), cwd=self.root)
        git("checkout", "-q", "-b", self.branch, cwd=self.dev)
        for item in self.seed.iterdir():
            if item.is_file() and item.suffix != ".pyc":
                shutil.copy(item, self.dev / item.name)
        self.commit({}, "initial")
        git("clone", "-q", "-b", self.branch, str(self.origin), str(self.work), cwd=self.root)

    def commit(self, files: dict[str, str | None], message: str, push: bool = True) -> str:
        for name, content in files.items():
            path = self.dev / name
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        git("add", "-A", cwd=self.dev)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.dev)
        if push:
            git("push", "-q", "--force", "origin", f"HEAD:{self.branch}", cwd=self.dev)
        return git("rev-parse", "HEAD", cwd=self.dev)

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)


