"""The webhook endpoint: bytes in, a verdict out, at once.

The handler reads the raw body (capped at GitHub's 25 MB: 413 above it),
asks :func:`supervisor.delivery.judge` for a verdict, and for a wanted push
only *requests* a deploy; the answer goes out before any git work starts.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from aiohttp import web

from .delivery import GITHUB, Receiver, SeenDeliveries, Verdict, judge

log = logging.getLogger("supervisor.intake")

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


class Intake:
    def __init__(self, *, secret: bytes, branch: str, full_name: str | None, allow_sha1: bool,
                 request_deploy: Callable[[str], None], seen: SeenDeliveries | None = None,
                 receiver: Receiver = GITHUB) -> None:
        self._secret = secret
        self.branch = branch
        self.full_name = full_name
        self.allow_sha1 = allow_sha1
        self.request_deploy = request_deploy
        self.seen = seen if seen is not None else SeenDeliveries()
        self.receiver = receiver
        self.counts: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        peer = request.remote or "?"
        try:
            body = await request.read()  # bounded by client_max_size -> 413
        except web.HTTPRequestEntityTooLarge:
            log.warning("delivery %s from %s: body over %d bytes; 413",
                        request.headers.get(self.receiver.delivery_header, "-"), peer, MAX_BODY)
            self._count("too_large")
            raise
        verdict = judge(request.headers, body, self.receiver, secret=self._secret, branch=self.branch,
                        full_name=self.full_name, seen=self.seen, allow_sha1=self.allow_sha1)
        self.act(verdict)
        ms = (time.perf_counter() - started) * 1000
        level = logging.WARNING if verdict.status >= 400 else logging.INFO
        log.log(level, "delivery %s from %s: %s %s (%s) in %.1fms", verdict.delivery or "-", peer,
                verdict.status, verdict.verdict, verdict.reason, ms)
        return web.json_response(verdict.body(), status=verdict.status)

    def act(self, verdict: Verdict) -> None:
        self._count(verdict.verdict)
        if verdict.status < 400 and verdict.verdict != "duplicate" and verdict.delivery:
            self.seen.add(verdict.delivery)
        if verdict.verdict == "queued":
            self.request_deploy("webhook")

    def _count(self, verdict: str) -> None:
        self.counts[verdict] = self.counts.get(verdict, 0) + 1

    def routes(self, path: str) -> list[web.RouteDef]:
        return [web.post(path, self.handle)]


def make_app(intake: Intake, path: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(intake.routes(path))
    return app
