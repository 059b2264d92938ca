"""Is this webhook delivery genuine, new and meant for us?

Pure decisions over raw request parts, so they are easy to test; the aiohttp
handler in :mod:`supervisor.webhook.intake` only carries bytes in and the verdict out.
The order is fixed: verify the signature over the raw bytes first, and only
then parse, filter and dedupe (an unsigned request never touches our state).

>>> import hmac, hashlib
>>> body = b'{"zen": "hi"}'
>>> sig = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
>>> judge({"X-GitHub-Event": "ping", "X-Hub-Signature-256": sig}, body, GITHUB,
...       secret=b"s3cret", branch="main", full_name=None, seen=set()).verdict
'ping'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Collection, Mapping

from .push import BadPayload, Push, wanted


@dataclass(frozen=True)
class Verdict:
    status: int
    verdict: str  # queued | ignored | ping | duplicate | unauthorized | bad_request
    reason: str
    delivery: str | None = None
    commit: str | None = None

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"verdict": self.verdict, "reason": self.reason}
        if self.delivery:
            out["delivery"] = self.delivery
        if self.commit:
            out["commit"] = self.commit
        return out


@dataclass(frozen=True)
class Streamed:
    """A body seen only as it streamed in: the HMAC of it under each algorithm a signature may use."""

    macs: Mapping[str, str]


Body = bytes | Streamed | None  # None: not read yet (only what the headers alone can tell is checked)


def _mac(secret: bytes, body: bytes | Streamed, algo: str) -> str:
    if isinstance(body, Streamed):
        return body.macs.get(algo, "")  # an algorithm not computed matches nothing
    return hmac.new(secret, body, getattr(hashlib, algo)).hexdigest()


def _hmac_header(secret: bytes, body: Body, value: str | None, algo: str, name: str) -> str | None:
    """None when ``value`` is a valid ``algo=<hex>`` signature (or, body not read yet, could be); else why not."""
    if not value:
        return f"missing {name}"
    prefix = f"{algo}="
    if not value.startswith(prefix):
        return f"{name} is not {algo}=<hex>"
    if body is None:
        return None
    expected = _mac(secret, body, algo)
    # compare_digest on ASCII str is constant-time; never log `expected`.
    if not hmac.compare_digest(expected.encode(), value[len(prefix):].strip().lower().encode("ascii", "replace")):
        return f"{name} does not match"
    return None


def verify_github(headers: Mapping[str, str], body: Body, secret: bytes, allow_sha1: bool) -> str | None:
    sig256 = headers.get("X-Hub-Signature-256")
    if sig256 or not allow_sha1:
        return _hmac_header(secret, body, sig256, "sha256", "X-Hub-Signature-256")
    return _hmac_header(secret, body, headers.get("X-Hub-Signature"), "sha1", "X-Hub-Signature")


def decode_body(body: bytes, content_type: str) -> object:
    """GitHub sends either JSON or ``payload=<json>`` form-encoded."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
        if list(fields) != ["payload"] or len(fields["payload"]) != 1:
            raise ValueError("form body must have exactly one 'payload' field")
        return json.loads(fields["payload"][0])
    return json.loads(body)


def verify_gitlab(headers: Mapping[str, str], body: Body, secret: bytes, _allow_sha1: bool) -> str | None:
    """GitLab sends the secret itself as a token, not a signature."""
    token = headers.get("X-Gitlab-Token")
    if not token:
        return "missing X-Gitlab-Token"
    if not hmac.compare_digest(token.encode("utf-8", "replace"), secret):
        return "X-Gitlab-Token does not match"
    return None


def verify_gitea(headers: Mapping[str, str], body: Body, secret: bytes, _allow_sha1: bool) -> str | None:
    """Gitea and Forgejo: HMAC-SHA256 of the body, bare hex."""
    name = "X-Forgejo-Signature" if headers.get("X-Forgejo-Signature") else "X-Gitea-Signature"
    value = headers.get(name)
    if not value:
        return "missing X-Gitea-Signature (or X-Forgejo-Signature)"
    return _hmac_header(secret, body, "sha256=" + value, "sha256", name)


@dataclass(frozen=True)
class Receiver:
    """One kind of sender: where its event name, delivery id and signature live.

    Headers are tried in order (Forgejo sends its own names besides Gitea's).
    """

    name: str
    event_headers: tuple[str, ...]
    delivery_headers: tuple[str, ...]
    verify: Callable[[Mapping[str, str], Body, bytes, bool], str | None]
    push_events: frozenset[str]
    ping_events: frozenset[str]
    repo_key: tuple[str, ...] = ("repository", "full_name")

    def first(self, headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
        for name in names:
            value = headers.get(name)
            if value:
                return value
        return None


#: The receiver kinds, as a table (Flux's notification-controller does the same).
GITHUB = Receiver("github", ("X-GitHub-Event",), ("X-GitHub-Delivery",), verify_github,
                  frozenset({"push"}), frozenset({"ping"}))
GITLAB = Receiver("gitlab", ("X-Gitlab-Event",), ("X-Gitlab-Event-UUID", "Idempotency-Key"), verify_gitlab,
                  frozenset({"Push Hook"}), frozenset(), ("project", "path_with_namespace"))
GITEA = Receiver("gitea", ("X-Forgejo-Event", "X-Gitea-Event"), ("X-Forgejo-Delivery", "X-Gitea-Delivery"),
                 verify_gitea, frozenset({"push"}), frozenset())


def delivery_id(headers: Mapping[str, str], receiver: Receiver) -> str | None:
    delivery = receiver.first(headers, receiver.delivery_headers)
    return None if delivery is not None and (len(delivery) > 200 or not delivery.isprintable()) else delivery


def authenticate(headers: Mapping[str, str], body: Body, receiver: Receiver, *, secret: bytes,
                 allow_sha1: bool = False) -> Verdict | None:
    """A 401 verdict, or None when the delivery is genuine. Before the body is read (``body`` None) only what
    the headers alone tell is checked: a missing or malformed signature, a GitLab token; a body that streamed
    in is checked by its digests (:class:`Streamed`), so an unsigned body is never held whole."""
    problem = receiver.verify(headers, body, secret, allow_sha1)
    return Verdict(401, "unauthorized", problem, delivery_id(headers, receiver)) if problem else None


def judge(
    headers: Mapping[str, str],
    body: bytes,
    receiver: Receiver,
    *,
    secret: bytes,
    branch: str,
    full_name: str | None,
    seen: Collection[str],
    allow_sha1: bool = False,
    digests: Streamed | None = None,
) -> Verdict:
    """The verdict on a delivery; ``digests``: the body's HMACs, computed as it streamed in (the body is then
    not hashed a second time)."""
    denied = authenticate(headers, body if digests is None else digests, receiver, secret=secret,
                          allow_sha1=allow_sha1)
    if denied is not None:
        return denied
    delivery = delivery_id(headers, receiver)
    event = receiver.first(headers, receiver.event_headers)
    if not event:
        return Verdict(400, "bad_request", f"missing {receiver.event_headers[-1]}", delivery)
    if delivery is not None and delivery in seen:
        return Verdict(200, "duplicate", f"duplicate delivery {delivery}; already handled", delivery)
    try:
        payload = decode_body(body, headers.get("Content-Type", "application/json"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." bombs
        return Verdict(400, "bad_request", f"body is not valid JSON: {str(exc)[:120]}", delivery)
    if event in receiver.ping_events:
        return Verdict(200, "ping", "pong", delivery)
    if event not in receiver.push_events:
        return Verdict(200, "ignored", f"event {event[:60]!r} is not a push", delivery)
    try:
        push = Push.from_payload(payload, receiver.repo_key)
    except BadPayload as exc:
        return Verdict(400, "bad_request", str(exc), delivery)
    ok, reason = wanted(push, branch=branch, full_name=full_name)
    if not ok:
        return Verdict(200, "ignored", reason, delivery, push.after)
    return Verdict(202, "queued", reason, delivery, push.after)


class SeenDeliveries:
    """Bounded memory of delivery ids, so GitHub's redeliveries do nothing twice."""

    def __init__(self, limit: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, delivery: object) -> bool:
        return delivery in self._ids

    def add(self, delivery: str) -> None:
        self._ids[delivery] = None
        self._ids.move_to_end(delivery)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)
