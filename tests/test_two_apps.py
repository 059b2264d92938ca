"""Several apps on one box (#20): one pushcd per app, side by side, each named, neither touching the other."""

from __future__ import annotations

import signal
import threading
import urllib.request
from pathlib import Path

from .conftest import (Repos, pid_alive, signed_push, spawn_supervisor, stop_process, try_status, wait_sync,
                       write_config)


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
        shop_pid = try_status(apps["shop"][1])["child_pid"]
        blog = try_status(apps["blog"][1])
        apps["shop"][2].send_signal(signal.SIGKILL)  # one dies hard: its guard takes its app with it
        apps["shop"][2].wait(10)
        wait_sync(lambda: not pid_alive(shop_pid), 10, "shop's app to go with it")
        again = try_status(apps["blog"][1])
        assert again["child_pid"] == blog["child_pid"] and pid_alive(blog["child_pid"])  # the other untouched
        assert again["state"] == "running" and again["deployed_commit"] == shas["blog"]
    finally:
        outs = {name: stop_process(proc) for name, (_r, _c, proc) in apps.items()}
    assert "[blog] supervisor" in outs["blog"] and "[shop]" not in outs["blog"], outs["blog"][-1500:]
