"""Real sources: HTTPS with a token, SSH with a deploy key and known_hosts, polling,
GitLab and Gitea receivers, cloning on first start, submodules."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from supervisor import config
from supervisor.runner import StartupError, build

from .conftest import (SECRET, Client, Repos, deployed, eventually, free_port, git, payload, running, supervised,
                       wait_sync, write_config)
from .githttp import GitHttpServer


def _use_remote(repos: Repos, url: str) -> None:
    git("remote", "set-url", "origin", url, cwd=repos.work)


# -- HTTPS with a token ---------------------------------------------------------

async def test_https_token(repos: Repos, tmp_path: Path, session, monkeypatch) -> None:
    with GitHttpServer(repos.root, "x-access-token", "right-token") as server:
        _use_remote(repos, server.url("origin.git"))
        cfg = write_config(tmp_path / "c.toml", repos, repo_extra='[repo.auth]\ntoken_env = "PUSHCD_GIT_TOKEN"')
        monkeypatch.setenv("PUSHCD_GIT_TOKEN", "right-token")
        async with supervised(cfg, session) as (sup, c):
            sha = await c.ship(repos, {"message.txt": "over https\n"}, "https")
        monkeypatch.setenv("PUSHCD_GIT_TOKEN", "wrong-token")
        async with supervised(cfg, session) as (sup, c):
            pid = (await c.status())["child_pid"]
            sha2 = repos.commit({"message.txt": "not with that token\n"}, "https 2")
            await c.push(repos, sha2)
            last = await eventually(lambda: sup.deployer.last, what="the failed fetch")
            assert last.result == "failed"
            assert "token from $PUSHCD_GIT_TOKEN (user x-access-token) was rejected" in last.reason
            assert "wrong-token" not in last.reason and "right-token" not in last.reason
            st = await c.status()
            assert st["child_pid"] == pid and st["deployed_commit"] == sha  # the app keeps running
        assert server.rejected > 0


async def test_https_without_credentials_says_what_to_set(repos: Repos, tmp_path: Path, session) -> None:
    with GitHttpServer(repos.root, "x-access-token", "t") as server:
        _use_remote(repos, server.url("origin.git"))
        cfg = write_config(tmp_path / "c.toml", repos)
        async with running(cfg) as sup:
            await Client(sup, session).push(repos, repos.commit({}, "x"))
            last = await eventually(lambda: sup.deployer.last, what="the failed fetch")
            assert "none are configured" in last.reason and "token_env" in last.reason


# -- SSH with a deploy key ------------------------------------------------------

class Sshd:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "deploy_key", "other_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                           check=True)
        shutil.copy(root / "deploy_key.pub", root / "authorized_keys")
        self.port = free_port()
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            f"StrictModes no\nUsePAM no\nPidFile {root / 'sshd.pid'}\n")
        host_key = (root / "host_key.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        (root / "empty_known_hosts").write_text("")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f",
                                      str(root / "sshd_config")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        import socket

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return self.proc.poll() is not None  # died: stop waiting, the assert below says why

        wait_sync(up, 20, "sshd to listen")
        assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""

    def url(self, path: Path) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        if os.environ.get("CI"):
            pytest.fail("sshd is not installed; .ci/run installs Debian's openssh-server")
        pytest.skip("sshd not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd runs as root (as CI does)")
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()


def _ssh_config(tmp_path: Path, repos: Repos, sshd: Sshd, key: str, known: str) -> Path:
    return write_config(tmp_path / f"{key}-{known}.toml", repos, repo_extra=(
        f'[repo.auth]\nssh_key = "{sshd.root / key}"\nknown_hosts = "{sshd.root / known}"'))


async def test_ssh_deploy_key(repos: Repos, tmp_path: Path, session, sshd: Sshd) -> None:
    _use_remote(repos, sshd.url(repos.origin))
    async with running(_ssh_config(tmp_path, repos, sshd, "deploy_key", "known_hosts")) as sup:
        c = Client(sup, session)
        sha = await c.ship(repos, {"message.txt": "over ssh\n"}, "ssh")

    async with running(_ssh_config(tmp_path, repos, sshd, "other_key", "known_hosts")) as sup:
        c = Client(sup, session)
        await c.push(repos, repos.commit({"message.txt": "wrong key\n"}, "ssh 2"))
        last = await eventually(lambda: sup.deployer.last, what="the failed fetch")
        assert last.result == "failed" and f"the SSH key {sshd.root / 'other_key'} was rejected" in last.reason
        assert (await c.status())["deployed_commit"] == sha

    async with running(_ssh_config(tmp_path, repos, sshd, "deploy_key", "empty_known_hosts")) as sup:
        c = Client(sup, session)
        await c.push(repos, repos.head())
        last = await eventually(lambda: sup.deployer.last, what="the refused host key")
        assert last.result == "failed" and "host key" in last.reason and "unknown" in last.reason
        assert "empty_known_hosts" in last.reason


# -- polling ---------------------------------------------------------------------

async def test_polling_deploys_a_push_once_even_with_its_webhook(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra="poll_interval = 0.5")
    async with supervised(cfg, session) as (sup, c):
        sha = repos.commit({"message.txt": "polled\n"}, "no webhook for this one")
        await deployed(c, sha, timeout=10)  # within a couple of intervals, no webhook sent
        assert sup.deployer.last.trigger == "poll"
        sha2 = await c.ship(repos, {"message.txt": "both\n"}, "webhook and poll")
        runs = sup.deployer.runs
        await eventually(lambda: sup.deployer.runs >= runs + 3, what="a few more polls")
        history = sup.history.deploys(10)
        assert [d["to_commit"] for d in history].count(sha2) == 1
        assert sup.deployer.deploys == 2


# -- GitLab and Gitea over HTTP --------------------------------------------------

async def test_gitlab_and_gitea_receivers(repos: Repos, tmp_path: Path, session, monkeypatch) -> None:
    monkeypatch.setenv("PUSHCD_GITLAB_TOKEN", "gl-token")
    monkeypatch.setenv("PUSHCD_GITEA_SECRET", "gt-secret")
    repos_master = Repos(tmp_path / "m", branch="master")
    cfg = write_config(tmp_path / "c.toml", repos_master, webhook_extra=(
        '[webhook.gitlab]\ntoken_env = "PUSHCD_GITLAB_TOKEN"\n[webhook.gitea]\npath = "/forgejo"\n'
        'secret_env = "PUSHCD_GITEA_SECRET"'))
    async with running(cfg) as sup:
        base = sup.hook_url("")
        gl = payload("gitlab/push.json")
        sha = repos_master.commit({"message.txt": "from gitlab\n"}, "gitlab")
        async with session.post(base + "/gitlab", data=gl, headers={
                "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}) as resp:
            assert resp.status == 401
        async with session.post(base + "/gitlab", data=gl, headers={
                "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-token", "X-Gitlab-Event-UUID": "u-1"}) as resp:
            assert resp.status == 202
        await deployed(Client(sup, session), sha)
        async with session.post(base + "/gitlab", data=gl, headers={
                "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-token", "X-Gitlab-Event-UUID": "u-1"}) as resp:
            assert (await resp.json())["verdict"] == "duplicate"
        gt = payload("gitea/push.json")
        sig = hmac.new(b"gt-secret", gt, hashlib.sha256).hexdigest()
        sha = repos_master.commit({"message.txt": "from forgejo\n"}, "forgejo")
        async with session.post(base + "/forgejo", data=gt, headers={
                "X-Forgejo-Event": "push", "X-Forgejo-Signature": "0" * 64}) as resp:
            assert resp.status == 401
        async with session.post(base + "/forgejo", data=gt, headers={
                "X-Forgejo-Event": "push", "X-Forgejo-Signature": sig, "X-Forgejo-Delivery": "f-1"}) as resp:
            assert resp.status == 202
        await deployed(Client(sup, session), sha)
        # GitHub's path still works beside them, with its own secret.
        async with session.post(base + "/github", data=b"{}", headers={
                "X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=" + hmac.new(
                    SECRET.encode(), b"{}", hashlib.sha256).hexdigest()}) as resp:
            assert resp.status == 200


# -- first start: clone; submodules ------------------------------------------------

async def test_clone_on_first_start_with_submodules(tmp_path: Path, session) -> None:
    lib = Repos(tmp_path / "lib")
    lib_v1 = lib.commit({"lib.txt": "lib v1\n"}, "lib v1")
    repos = Repos(tmp_path / "app")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib.origin), "vendor/lib", cwd=repos.dev)
    repos.commit({}, "add the lib submodule")
    shutil.rmtree(repos.work)  # nothing deployed yet: pushcd clones it
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra=f'url = "{repos.origin}"\n'
                                                            f'submodule_urls = ["{tmp_path}/lib/*"]')
    async with supervised(cfg, session) as (sup, c):
        assert (repos.work / "vendor/lib/lib.txt").read_text() == "lib v1\n"
        assert (await c.status())["deployed_commit"] == repos.head()
        lib.commit({"lib.txt": "lib v2\n"}, "lib v2")
        git("-c", "protocol.file.allow=always", "submodule", "update", "-q", "--remote", cwd=repos.dev)
        await c.ship(repos, {}, "bump the lib")
        assert (repos.work / "vendor/lib/lib.txt").read_text() == "lib v2\n"
        assert git("status", "--porcelain", cwd=repos.work) == ""
        assert lib_v1 != git("rev-parse", "HEAD", cwd=repos.work / "vendor/lib")


def test_clone_failure_is_a_startup_error_and_leaves_nothing(tmp_path: Path, repos: Repos) -> None:
    shutil.rmtree(repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra=f'url = "{tmp_path / "missing.git"}"')
    with pytest.raises(StartupError, match="clone of .*missing.git failed"):
        build(config.load(cfg))
    assert not repos.work.exists() and not list(repos.root.glob(".work.cloning*"))
