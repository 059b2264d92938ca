"""Property: no request of any shape, to either listener, gets a 5xx or leaves a traceback in the log.

One real supervisor (webhook and control listeners, a real app child) runs in a thread with its
own event loop; hypothesis sends it raw HTTP requests over loopback: any method, path, query,
headers (Host, Origin, Sec-Fetch-Site, Authorization, encodings) and body.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import SECRET, Repos, raw_request, running, sign, write_config


class Captured(logging.Handler):
    """Every record at ERROR or above, or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(self.format(record) + (str(record.exc_info) if record.exc_info else ""))


class Background:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.done = threading.Event()
        self.sup: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(60) or self.error:
            raise RuntimeError(f"supervisor did not start: {self.error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        try:
            async with running(self.cfg) as sup:
                self.sup = sup
                self.ready.set()
                await self.stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
            self.ready.set()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("http-property")
    mp = pytest.MonkeyPatch()
    mp.setenv("PUSHCD_TEST_SECRET", SECRET)
    repos = Repos(root / "repos")
    captured = Captured()
    logging.getLogger().addHandler(captured)
    bg = Background(write_config(root / "c.toml", repos))
    try:
        yield bg, captured
    finally:
        bg.close()
        logging.getLogger().removeHandler(captured)
        mp.undo()


text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
paths = st.one_of(st.sampled_from(["/", "/status", "/history", "/logs", "/metrics", "/deploy", "/rollback",
                                   "/github", "/nope", "//", "/status/", "/%2e%2e/", "/logs/../status"]),
                  text.map(lambda t: "/" + t))
queries = st.one_of(st.just(""), st.dictionaries(
    st.sampled_from(["since", "limit", "before", "deliveries", "wait", "x"]),
    st.one_of(st.sampled_from(["", "abc", "-1", "0", "1e309", "nan", "inf", "99999999999999999999", "1", "true"]),
              text), max_size=4).map(lambda d: "?" + "&".join(f"{k}={v}" for k, v in d.items())))
header = st.one_of(
    st.tuples(st.sampled_from(["Host"]), st.sampled_from(["127.0.0.1", "localhost", "evil.example", "", "[::1]",
                                                          "127.0.0.1:1", "x" * 300])),
    st.tuples(st.sampled_from(["Origin"]), st.sampled_from(["null", "http://evil.example", "http://127.0.0.1",
                                                            "garbage"])),
    st.tuples(st.sampled_from(["Sec-Fetch-Site"]), st.sampled_from(["cross-site", "same-origin", "none", "?"])),
    st.tuples(st.sampled_from(["Authorization"]), st.sampled_from(["Bearer ", "Bearer x", "Basic eA==", "TOKEN"])),
    st.tuples(st.sampled_from(["Content-Encoding", "Transfer-Encoding"]), st.sampled_from(["gzip", "br",
                                                                                           "deflate", "chunked"])),
    st.tuples(st.sampled_from(["Content-Type", "X-GitHub-Event", "X-GitHub-Delivery"]), text),
)
bodies = st.one_of(st.just(b""), st.binary(max_size=300), st.just(b"\x1f\x8b\x08\x00garbage"),
                   st.just(b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'"}'))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(target=st.sampled_from(["webhook", "control"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
       path=paths, query=queries, headers=st.lists(header, max_size=6), body=bodies,
       token=st.booleans(), signed=st.booleans(), length=st.sampled_from(["exact", "short", "long", "none"]))
def test_no_request_gets_a_5xx_or_a_traceback(server: Any, target: str, method: str, path: str, query: str,
                                              headers: list[tuple[str, str]], body: bytes, token: bool, signed: bool,
                                              length: str) -> None:
    bg, captured = server
    sup = bg.sup
    port = sup.webhook_port if target == "webhook" else sup.control_port
    lines = [f"{method} {path}{query} HTTP/1.1", "Connection: close"]
    if not any(name == "Host" for name, _ in headers):
        lines.append("Host: 127.0.0.1")
    lines += [f"{name}: {value}" for name, value in headers]
    if token:
        lines.append(f"Authorization: Bearer {sup.control_token.decode()}")
    if signed:
        lines.append(f"X-Hub-Signature-256: {sign(body)}")
    declared = {"exact": len(body), "short": max(0, len(body) - 1), "long": len(body) + 10}.get(length)
    if declared is not None:
        lines.append(f"Content-Length: {declared}")
    before = len(captured.bad)
    status = raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, timeout=20,
                         half_close=True)
    assert status < 500, (status, lines)
    assert len(captured.bad) == before, captured.bad[before:]
