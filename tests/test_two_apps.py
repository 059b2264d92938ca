"""Several apps on one box (#20): one pushcd per app, side by side, each named, neither touching the other."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

from .conftest import (PY, ROOT, Repos, pid_alive, signed_push, spawn_supervisor, stop_process, try_status,
                       wait_sync, write_config)


def ls(folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "supervisor", "ls", "--dir", str(folder), *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def listed(folder: Path) -> dict[str, dict]:
    """`pushcd ls --json`, by config file name."""
    done = ls(folder, "--json")
    assert done.returncode == 0, done.stderr
    return {Path(row["config"]).stem: row for row in json.loads(done.stdout)}


def test_two_instances_deploy_side_by_side_and_one_dying_leaves_the_other(tmp_path: Path) -> None:
    apps = {}
    for name in ("shop", "blog"):
        repos = Repos(tmp_path / name / "repos")
        cfg = write_config(tmp_path / name / "c.toml", repos, watch="enabled = false")
        cfg.write_text(cfg.read_text().replace("[app]\n", f'[app]\nname = "{name}"\n', 1))
        apps[name] = (repos, cfg, spawn_supervisor(cfg))
    try:
        for name, (_repos, cfg, _proc) in apps.items():
            st = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s, 30, f"{name} to start")
            assert st["app"] == name
        shas = {name: repos.commit({"message.txt": f"{name} v2\n"}, "v2") for name, (repos, _c, _p) in apps.items()}
        pushes = [threading.Thread(target=signed_push, args=(cfg, repos, shas[name]))
                  for name, (repos, cfg, _p) in apps.items()]
        for t in pushes:  # both deliveries at once
            t.start()
        for t in pushes:
            t.join(30)
        for name, (repos, cfg, _proc) in apps.items():
            st = wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == shas[name] and
                           s["state"] == "running" and s, 60, f"{name}'s deploy")
            with urllib.request.urlopen(f"http://127.0.0.1:{st['app_port']}/", timeout=10) as resp:
                assert f"{name} v2" in resp.read().decode()  # each serves its own commit
        etc = tmp_path / "etc"  # as /etc/pushcd holds them for pushcd@.service
        etc.mkdir()
        for name, (_r, cfg, _p) in apps.items():
            shutil.copy(cfg, etc / f"{name}.toml")
        (etc / "typo.toml").write_text("[app\n")
        rows = listed(etc)
        for name in apps:
            assert rows[name]["name"] == name and rows[name]["state"] == "running", rows
            assert rows[name]["commit"] == shas[name] and rows[name]["last_deploy"] == "ok", rows
        assert rows["typo"]["state"] == "config error" and "TOML syntax error" in rows["typo"]["problem"], rows
        table = ls(etc)
        assert table.stdout.splitlines()[0].split() == ["NAME", "STATE", "COMMIT", "LAST", "DEPLOY", "CONTROL",
                                                        "CONFIG"], table.stdout
        assert "typo: " in table.stderr and "TOML syntax error" in table.stderr
        shop_pid = try_status(apps["shop"][1])["child_pid"]
        blog = try_status(apps["blog"][1])
        apps["shop"][2].send_signal(signal.SIGKILL)  # one dies hard: its guard takes its app with it
        apps["shop"][2].wait(10)
        wait_sync(lambda: not pid_alive(shop_pid), 10, "shop's app to go with it")
        again = try_status(apps["blog"][1])
        assert again["child_pid"] == blog["child_pid"] and pid_alive(blog["child_pid"])  # the other untouched
        assert again["state"] == "running" and again["deployed_commit"] == shas["blog"]
        rows = listed(etc)
        assert rows["shop"]["state"] == "not answering" and rows["blog"]["state"] == "running", rows
    finally:
        outs = {name: stop_process(proc) for name, (_r, _c, proc) in apps.items()}
    assert "[blog] supervisor" in outs["blog"] and "[shop]" not in outs["blog"], outs["blog"][-1500:]
