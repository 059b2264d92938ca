"""The webhook endpoint: bytes in, a verdict out, at once.

The handler checks what the headers alone can tell (a missing signature, a
GitLab token, a ``Content-Encoding`` GitHub never sends) before it reads a byte of
the body; then it streams the body through the HMACs into a bounded spool
(:mod:`.body`, capped at GitHub's 25 MB: 413 above it) and checks the signature
from the digests, so an unsigned body is never held whole. Only then does it ask
:func:`supervisor.webhook.delivery.judge` for a verdict, and for a wanted push it
only *requests* a deploy; the answer goes out before any git work starts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Callable, Collection, Protocol, Sequence

from aiohttp import http_exceptions, web

from .body import CHUNK, Budget, OverBudget, TooLarge, receive
from .delivery import GITHUB, Receiver, SeenDeliveries, Streamed, Verdict, authenticate, judge

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Seen(Protocol):
    def __contains__(self, delivery: object) -> bool: ...
    def add(self, delivery: str) -> None: ...


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def real_peer(remote: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: behind trusted proxies, the last X-Forwarded-For hop they did not add.

    >>> real_peer("10.0.0.2", "203.0.113.9, 10.0.0.1", [ipaddress.ip_network("10.0.0.0/8")])
    '203.0.113.9'
    >>> real_peer("198.51.100.7", "203.0.113.9", [ipaddress.ip_network("10.0.0.0/8")])
    '198.51.100.7'
    """
    peer = remote or "?"
    ip = _ip(peer)
    if not forwarded_for or ip is None or not any(ip in n for n in trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return peer  # malformed header: trust only what we saw
        peer = str(hop_ip)
        if not any(hop_ip in n for n in trusted):
            return peer
    return peer


def allowed(peer: str, allow_from: Collection[Network]) -> bool:
    if not allow_from:
        return True
    ip = _ip(peer)
    return ip is not None and any(ip in n for n in allow_from)

log = logging.getLogger("supervisor.intake")

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
BODY_TIMEOUT = 10.0  # seconds to receive a body: GitHub itself gives up after 10, so a slower one is no delivery


class Timing:
    """Where a delivery's time goes, phase by phase (headers, body, judge, queue), for
    ``supervisor_webhook_phase_seconds``; :attr:`total` is the answer's latency so far."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        """End ``phase`` now."""
        now = time.perf_counter()
        self.phases[phase], self.last = now - self.last, now

    @property
    def total(self) -> float:
        return self.last - self.started


class Intake:
    def __init__(self, *, secret: bytes, branch: str, full_name: str | None, allow_sha1: bool,
                 request_deploy: Callable[[str], None], seen: Seen | None = None,
                 receiver: Receiver = GITHUB, allow_from: Collection[Network] = (),
                 trusted_proxies: Sequence[Network] = (),
                 on_verdict: Callable[[Verdict, str | None, "Timing"], None] | None = None,
                 paused: Callable[[], str | None] = lambda: None) -> None:
        self.branch = branch
        self.paused = paused
        self.request_deploy = request_deploy
        self.seen: Seen = seen if seen is not None else SeenDeliveries()
        self.receiver = receiver
        self.on_verdict = on_verdict
        self.budget = Budget()  # make_app gives every receiver of a listener the same one
        self.configure(secret=secret, full_name=full_name, allow_sha1=allow_sha1, allow_from=allow_from,
                       trusted_proxies=trusted_proxies)

    def configure(self, *, secret: bytes, full_name: str | None, allow_sha1: bool,
                  allow_from: Collection[Network] = (), trusted_proxies: Sequence[Network] = ()) -> None:
        """What the config file decides and SIGHUP may change; applies from the next request."""
        self._secret = secret
        self.full_name = full_name
        self.allow_sha1 = allow_sha1
        self.allow_from = allow_from
        self.trusted_proxies = trusted_proxies

    async def handle(self, request: web.Request) -> web.Response:
        timing = Timing()
        peer = real_peer(request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies)
        delivery = (self.receiver.first(request.headers, self.receiver.delivery_headers) or "-")[:200]
        body: bytes | None = None
        digests: Streamed | None = None
        verdict = self._before_the_body(request, peer)
        timing.lap("headers")
        if verdict is None:
            verdict, body, digests = await self._read(request)
            timing.lap("body")
        if body is not None:
            verdict = judge(request.headers, body, self.receiver, secret=self._secret, branch=self.branch,
                            full_name=self.full_name, seen=self.seen, allow_sha1=self.allow_sha1, digests=digests)
            reason = self.paused() if verdict.verdict == "queued" else None
            if reason is not None:
                verdict = Verdict(200, "paused", f"deploys are paused ({reason}); recorded, not deployed",
                                  verdict.delivery, verdict.commit)
            timing.lap("judge")
        self.act(verdict, self.receiver.first(request.headers, self.receiver.event_headers), timing)
        seconds = timing.total
        level = logging.WARNING if verdict.status >= 400 else logging.INFO
        log.log(level, "delivery %s from %s: %s %s (%s) in %.1fms", verdict.delivery or delivery, peer,
                verdict.status, verdict.verdict, verdict.reason, seconds * 1000,
                extra={"delivery": verdict.delivery or delivery, "commit": verdict.commit,
                       "duration": round(seconds, 6), "peer": peer, "verdict": verdict.verdict})
        response = web.json_response(verdict.body(), status=verdict.status)
        if verdict.status in (408, 413, 503) or body is None:
            response.force_close()  # we did not read the rest of the body
        return response

    def _before_the_body(self, request: web.Request, peer: str) -> Verdict | None:
        """What the headers alone decide, before a byte of the body is read; None: read it."""
        if not allowed(peer, self.allow_from):
            return Verdict(403, "forbidden", f"peer {peer} is not in [webhook] allow_from")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # never inflated: a small gzip body can inflate to gigabytes
            return Verdict(415, "unsupported", f"Content-Encoding {encoding[:40]!r}: deliveries are not compressed "
                                               f"(GitHub, GitLab and Gitea never compress one)")
        if (request.content_length or 0) > MAX_BODY:
            return Verdict(413, "too_large", f"body over {MAX_BODY} bytes")
        return authenticate(request.headers, None, self.receiver, secret=self._secret, allow_sha1=self.allow_sha1)

    async def _read(self, request: web.Request) -> tuple[Verdict | None, bytes | None, Streamed | None]:
        """The body of a genuine delivery and its digests, or the verdict that refuses it; an unsigned body is
        never held whole."""
        try:
            # bounded in size (413), in time (408: a slow sender cannot hold a connection open forever)
            # and, with every other connection's, in unverified bytes (503)
            async with asyncio.timeout(BODY_TIMEOUT):  # no extra task per request, unlike wait_for
                received = await receive(request.content.iter_chunked(CHUNK), self._secret,
                                         ("sha256", "sha1") if self.allow_sha1 else ("sha256",), self.budget,
                                         MAX_BODY)
        except TooLarge:
            return Verdict(413, "too_large", f"body over {MAX_BODY} bytes"), None, None
        except OverBudget:
            return Verdict(503, "busy", "too many unverified bodies in flight; send again later"), None, None
        except asyncio.TimeoutError:
            return Verdict(408, "too_slow", f"body not received within {BODY_TIMEOUT:g}s"), None, None
        except (ConnectionError, http_exceptions.HttpProcessingError, web.RequestPayloadError) as exc:
            # a sender that hung up mid-body, or a malformed chunked body. We answer and close: aiohttp must not
            # read on after the answer (its lingering close would meet the same error again and log a traceback).
            request.content.feed_eof()
            return Verdict(400, "bad_request", f"body could not be read: {type(exc).__name__}"), None, None
        try:
            denied = authenticate(request.headers, received.streamed, self.receiver, secret=self._secret,
                                  allow_sha1=self.allow_sha1)
            return (denied, None, None) if denied is not None else (None, received.read(), received.streamed)
        finally:
            received.close()

    def act(self, verdict: Verdict, event: str | None = None, timing: "Timing | None" = None) -> None:
        if verdict.status < 400 and verdict.verdict != "duplicate" and verdict.delivery:
            self.seen.add(verdict.delivery)
        if verdict.verdict == "queued":
            self.request_deploy("webhook")
        timing = timing or Timing()
        timing.lap("queue")
        if self.on_verdict is not None:
            self.on_verdict(verdict, event, timing)  # the history row is queued, written in a batch later

    def routes(self, path: str) -> list[web.RouteDef]:
        return [web.post(path, self.handle)]


def make_app(intakes: dict[str, Intake]) -> web.Application:
    """One listener, one path per receiver kind (GitHub, GitLab, Gitea/Forgejo)."""
    app = web.Application(client_max_size=MAX_BODY)
    budget = Budget()  # unverified bytes in flight: one budget for the listener, whichever receiver they are for
    for path, intake in intakes.items():
        intake.budget = budget
        app.add_routes(intake.routes(path))
    return app
