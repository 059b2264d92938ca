"""Config mistakes: exit 2 with one line naming the key and the fix, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from supervisor import config

from .conftest import PY, ROOT, SECRET, Repos, write_config


def check(path: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([PY, "-m", "supervisor", "check", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


MINIMAL = """
[webhook]
secret_env = "PUSHCD_TEST_SECRET"
[repo]
path = "work"
[app]
command = ["python3", "app.py"]
"""


def test_missing_file(tmp_path: Path) -> None:
    assert_user_error(check(tmp_path / "nope.toml"), "nope.toml", "no such file", "--config")


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + "\n[watch\n")
    assert_user_error(check(p), "TOML syntax error", "line 9", "column 7")


@pytest.mark.parametrize("extra, needles", [
    ("[webhook2]\nx = 1\n", ("unknown key 'webhook2'", "remove it")),
    ("[watch]\ndebounse_ms = 5\n", ("unknown key 'debounse_ms'", "[watch]")),
    ("[control]\nlisten = 9001\n", ("[control] listen", "expected `str`, got `int`")),
    ("[app.ready]\ntimeout = \"soon\"\n", ("[app.ready] timeout",)),
    ("[state]\ndir = []\n", ("[state] dir",)),
])
def test_unknown_keys_and_wrong_types(tmp_path: Path, extra: str, needles: tuple[str, ...]) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + extra)
    assert_user_error(check(p), *needles)


@pytest.mark.parametrize("replace, needles", [
    (('path = "work"', 'path = "work"\non_diverge = "merge"'), ("[repo] on_diverge", "not allowed")),
    (('command = ["python3", "app.py"]', 'command = []'), ("[app] command", "non-empty")),
    (('command = ["python3", "app.py"]', 'command = ["x"]\nstop_signal = "SIGNOPE"'), ("[app] stop_signal",)),
    (('[webhook]', '[webhook]\nlisten = "localhost"'), ("[webhook] listen", "host:port")),
    (('[webhook]', '[webhook]\npath = "github"'), ("[webhook] path", "/")),
    (('command = ["python3", "app.py"]', ''), ("[app] command", "non-empty", "procfile")),
    (('[webhook]', '[processes.worker]\ncount = 2\n[webhook]'), ("[processes.worker]", "needs command")),
    (('[webhook]', '[processes.web]\ncommand = ["x"]\n[webhook]'), ("[processes.web]", "another name")),
    (('[webhook]', '[release]\nlink = ["../etc"]\n[webhook]'), ("[release] link", "inside the repository")),
    (('[webhook]', '[jobs.tidy]\nschedule = "every day"\ncommand = ["x"]\n[webhook]'),
     ('[jobs.tidy] schedule = "every day"', "five fields")),
    (('[webhook]', '[jobs.tidy]\nschedule = "* * * * *"\ncommand = ["x"]\ntimezone = "Mars/Olympus"\n[webhook]'),
     ('[jobs.tidy] timezone = "Mars/Olympus"', "Europe/Paris")),
    (('[webhook]', '[jobs.tidy]\nschedule = "* * * * *"\ncommand = ["x"]\nconcurrency = "parallel"\n[webhook]'),
     ("[jobs.tidy] concurrency", "not allowed")),
    (('[webhook]', '[processes.w]\ncommand = ["x"]\n[processes.w.ready]\nhttp = "/health"\n[webhook]'),
     ("[processes.w].ready http", "whole address")),
])
def test_bad_values(tmp_path: Path, replace: tuple[str, str], needles: tuple[str, ...]) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace(*replace))
    assert_user_error(check(p), *needles)


def test_missing_secret_names_the_variable(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL)
    import os

    env = {k: v for k, v in os.environ.items() if k != "PUSHCD_TEST_SECRET"}
    result = subprocess.run([PY, "-m", "supervisor", "check", "--config", str(p)], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=60)
    assert_user_error(result, "[webhook] secret_env", "PUSHCD_TEST_SECRET is not set", "export")


def test_missing_secret_file_and_no_secret_at_all(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace('secret_env = "PUSHCD_TEST_SECRET"', 'secret_file = "nope"'))
    assert_user_error(check(p), "[webhook] secret_file", "nope")
    p.write_text(MINIMAL.replace('secret_env = "PUSHCD_TEST_SECRET"', ''))
    assert_user_error(check(p), "[webhook] needs secret_env or secret_file")


def test_check_prints_resolved_config_with_secret_masked(tmp_path: Path, repos: Repos) -> None:
    p = write_config(tmp_path / "c.toml", repos)
    result = check(p)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and "***" in result.stdout
    assert str(repos.work) in result.stdout


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "secret").write_text("s3cret\n")
    p = folder / "c.toml"
    p.write_text(MINIMAL.replace('secret_env = "PUSHCD_TEST_SECRET"', 'secret_file = "secret"')
                 + '\n[watch]\npaths = ["src"]\n[state]\ndir = "state"\n'
                 .replace("[app]", "[app]"))
    p.write_text(p.read_text().replace('command = ["python3", "app.py"]', 'command = ["python3", "app.py"]\ncwd = "web"'))
    s = config.load(p)
    assert s.secret == b"s3cret"
    assert s.repo_path == folder / "work"
    assert s.app.cwd == folder / "work" / "web"
    assert s.watch_paths == (folder / "work" / "src",)
    assert s.state_dir == folder / "state"
    assert "s3cret" not in repr(s)


def test_run_with_missing_work_tree_is_a_one_line_error(tmp_path: Path) -> None:
    import os

    p = tmp_path / "c.toml"
    p.write_text(MINIMAL)
    result = subprocess.run([PY, "-m", "supervisor", "run", "--config", str(p)], cwd=ROOT,
                            capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert_user_error(result, "[repo] path", "does not exist", "clone")


def test_a_foreign_supervisor_package_is_named(tmp_path: Path) -> None:
    """supervisord's package has our import name: the entry point says so instead of crashing."""
    import os

    fake = tmp_path / "site" / "supervisor"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}  # the foreign one first
    result = subprocess.run([PY, "-c", "import sys, pushcd_entry; sys.exit(pushcd_entry.main())", "status"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert_user_error(result, "found another package", str(fake), "own virtualenv")


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([PY, "-m", "supervisor", "run", "--config", str(path)], cwd=ROOT, capture_output=True,
                          text=True, env=os.environ.copy(), timeout=60)


@pytest.mark.parametrize("mistake", ["not a repository", "no such branch here", "no such branch on the remote",
                                     "missing cwd", "command not on PATH", "port in use", "probe without probe_fd"])
def test_check_finds_everything_run_would_trip_over(tmp_path: Path, repos: Repos, mistake: str) -> None:
    import socket

    from .conftest import git

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    app: dict = {}
    ready: dict = {}
    expect = {
        "not a repository": "is not a git work tree",
        "no such branch here": "is on other, not main",
        "no such branch on the remote": "has no branch main",
        "missing cwd": "[app] cwd",
        "command not on PATH": "`no-such-server` is not found on PATH",
        "port in use": f'[app] listen = "127.0.0.1:{port}": cannot bind',
        "probe without probe_fd": "cannot reach the new child alone",
    }[mistake]
    if mistake == "not a repository":
        (tmp_path / "plain").mkdir()
        repos.work = tmp_path / "plain"
    elif mistake == "no such branch here":
        git("checkout", "-q", "-b", "other", cwd=repos.work)
    elif mistake == "no such branch on the remote":
        git("update-ref", "-d", "refs/heads/main", cwd=repos.origin)
    elif mistake == "missing cwd":
        app["extra"] = 'cwd = "no/such/folder"'
    elif mistake == "command not on PATH":
        app["command"] = ["no-such-server", "--fd", "{fd}", "--fd", "{probe_fd}"]
    elif mistake == "port in use":
        app["listen"] = f"127.0.0.1:{port}"
    elif mistake == "probe without probe_fd":
        app["command"] = [PY, "app.py", "--fd", "{fd}"]
    cfg = write_config(tmp_path / "c.toml", repos, app=app or None, ready=ready or None)
    try:
        result = check(cfg)
        assert result.returncode == 2 and expect in result.stderr and "Traceback" not in result.stderr, result
        if mistake != "no such branch on the remote":  # run does not ask the network; its first fetch will
            result = _run(cfg)
            assert result.returncode == 2 and expect in result.stderr and "Traceback" not in result.stderr, result
    finally:
        taken.close()


def test_every_secret_can_come_from_a_file(tmp_path: Path, repos: Repos) -> None:
    """Hardening #19.11: only [webhook] had secret_file; a reload needing a new variable could not be helped."""
    files = {name: tmp_path / name for name in ("hook", "gitlab", "gitea", "ctl", "git", "pass", "sign", "gh")}
    for name, path in files.items():
        path.write_text(f"{name}-secret\n")
    cfg = write_config(tmp_path / "c.toml", repos,
                       webhook_extra=f'[webhook.gitlab]\ntoken_file = "{files["gitlab"]}"\n'
                                     f'[webhook.gitea]\nsecret_file = "{files["gitea"]}"',
                       repo_extra=f'full_name = "o/r"\n[repo.auth]\ntoken_file = "{files["git"]}"\n'
                                  f'ssh_passphrase_file = "{files["pass"]}"',
                       extra=f'[[notify]]\nurl = "http://127.0.0.1:9/x"\nsecret_file = "{files["sign"]}"\n'
                             f'[[notify]]\nkind = "github"\ntoken_file = "{files["gh"]}"\n')
    text = cfg.read_text().replace('secret_env = "PUSHCD_TEST_SECRET"', f'secret_file = "{files["hook"]}"')
    cfg.write_text(text.replace("[control]\n", f'[control]\ntoken_file = "{files["ctl"]}"\n'))
    s = config.load(cfg)
    assert dict((k, v) for k, _, v in s.hooks) == {"github": b"hook-secret", "gitlab": b"gitlab-secret",
                                                   "gitea": b"gitea-secret"}
    assert s.control_token == b"ctl-secret" and s.auth.token == "git-secret" and s.auth.ssh_passphrase == "pass-secret"
    assert s.notify_secrets == ((b"sign-secret", None), (None, b"gh-secret"))
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\ntoken_env = "PUSHCD_TEST_SECRET"\n'))
    assert_user_error(check(cfg), "[control] set token_env or token_file, not both")


def test_a_missing_variable_says_a_file_works_on_a_reload(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + '[[notify]]\nurl = "http://127.0.0.1:9/x"\nsecret_env = "PUSHCD_NOT_EXPORTED"\n')
    (tmp_path / "work").mkdir()
    assert_user_error(check(p), "[[notify]] #1 secret_env", "PUSHCD_NOT_EXPORTED is not set",
                      "set secret_file instead", "a running pushcd never sees a variable exported after it started")


def test_check_names_every_problem_in_one_run(tmp_path: Path) -> None:
    """Hardening #19.10: check reported one mistake per run, passed [app] listen equal to [control] listen
    (run then said "address already in use") and accepted min_uptime = -1."""
    p = tmp_path / "c.toml"
    (tmp_path / "work").mkdir()
    p.write_text(MINIMAL.replace('command = ["python3", "app.py"]', 'command = ["python3", "app.py"]\n'
                                 'listen = "127.0.0.1:9001"\nstop_timeout = 0') +
                 "[app.ready]\nmin_uptime = -1\n[watch]\ndebounse_ms = 5\n[release]\nkeep = 0\n")
    result = check(p)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    for needle in ("[app] stop_timeout must be greater than 0", "[app.ready] min_uptime must be at least 0",
                   "unknown key 'debounse_ms' in [watch]", "[release] keep must be at least 1"):
        assert needle in result.stderr, (needle, result.stderr)
    p.write_text(MINIMAL.replace('command = ["python3", "app.py"]', 'command = ["python3", "app.py"]\n'
                                 'listen = "127.0.0.1:9001"'))  # the schema holds now: the clash is seen
    assert_user_error(check(p), '[app] listen = "127.0.0.1:9001" takes the port of [control] listen')
    p.write_text(MINIMAL + '[control]\nlisten = "0.0.0.0:9000"\ntoken_env = "PUSHCD_TEST_SECRET"\n')
    assert_user_error(check(p), "[control] listen", "takes the port of [webhook] listen")
