"""Delivery verdicts over the real published payloads (pure functions, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse

import pytest

from supervisor.webhook.delivery import GITHUB, SeenDeliveries, judge, verify_github
from supervisor.webhook.push import Push, wanted

from .conftest import PAYLOADS, SECRET, payload, sign


def test_github_hmac_test_vector_from_the_docs() -> None:
    readme = (PAYLOADS / "README.md").read_text()
    assert "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17" in readme
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    secret = b"It's a Secret to Everybody"
    assert verify_github({"X-Hub-Signature-256": header}, b"Hello, World!", secret, False) is None
    assert verify_github({"X-Hub-Signature-256": header}, b"Hello, World?", secret, False) == \
        "X-Hub-Signature-256 does not match"
    assert verify_github({"X-Hub-Signature-256": header.upper().replace("SHA256", "sha256")},
                         b"Hello, World!", secret, False) is None


def _judge(name: str, event: str, *, branch: str = "master", full_name: str | None = None,
           seen: SeenDeliveries | None = None, headers: dict[str, str] | None = None,
           body: bytes | None = None, allow_sha1: bool = False):
    body = payload(name) if body is None else body
    h = {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": sign(body),
         "Content-Type": "application/json", **(headers or {})}
    h = {k: v for k, v in h.items() if v is not None}
    return judge(h, body, GITHUB, secret=SECRET.encode(), branch=branch, full_name=full_name,
                 seen=seen if seen is not None else SeenDeliveries(), allow_sha1=allow_sha1)


@pytest.mark.parametrize(
    "name, event, branch, full_name, status, verdict, reason",
    [
        ("github/push.json", "push", "master", "binkkatal/sample_app", 202, "queued", "push to master"),
        ("github/push.json", "push", "master", "BinkKatal/Sample_App", 202, "queued", "push to master"),
        ("github/push.json", "push", "main", None, 200, "ignored", "branch master is not main"),
        ("github/push.json", "push", "master", "someone/else", 200, "ignored", "repository binkkatal/sample_app"),
        ("github/push-new-branch.json", "push", "master", None, 202, "queued", "push to master"),
        ("github/push-deleted.json", "push", "feature-branch", None, 200, "ignored", "was deleted"),
        ("github/push-tag.json", "push", "master", None, 200, "ignored", "tag simple-tag"),
        ("github/push-tag-deleted.json", "push", "master", None, 200, "ignored", "tag simple-tag"),
        ("github/ping.json", "ping", "master", None, 200, "ping", "pong"),
        ("github/pull_request.opened.json", "pull_request", "master", None, 200, "ignored", "not a push"),
        ("github/create.json", "create", "master", None, 200, "ignored", "not a push"),
    ],
)
def test_real_payloads(name, event, branch, full_name, status, verdict, reason) -> None:
    v = _judge(name, event, branch=branch, full_name=full_name)
    assert (v.status, v.verdict) == (status, verdict)
    assert reason in v.reason


def test_queued_push_names_the_commit_as_a_hint_only() -> None:
    v = _judge("github/push.json", "push")
    assert v.commit == "fd489864e7642b48eaad6e3f155c10e46810ec72"
    assert v.body() == {"verdict": "queued", "reason": "push to master", "delivery": "d-1",
                        "commit": "fd489864e7642b48eaad6e3f155c10e46810ec72"}


@pytest.mark.parametrize("signature, why", [
    (None, "missing X-Hub-Signature-256"),
    ("sha256=" + "0" * 64, "does not match"),
    ("sha256=zz", "does not match"),
    ("sha1=" + "0" * 40, "is not sha256=<hex>"),
    ("sha256=" + "é" * 64, "does not match"),
])
def test_bad_signatures_are_401_before_anything_is_parsed(signature, why) -> None:
    v = _judge("github/push.json", "push", headers={"X-Hub-Signature-256": signature}, body=b"not json at all")
    assert (v.status, v.verdict) == (401, "unauthorized")
    assert why in v.reason
    assert "sha256=" + hmac.new(SECRET.encode(), b"not json at all", hashlib.sha256).hexdigest() not in v.reason


def test_signature_with_another_secret_is_refused() -> None:
    body = payload("github/push.json")
    v = _judge("github/push.json", "push", headers={"X-Hub-Signature-256": sign(body, "other")})
    assert v.status == 401


def test_legacy_sha1_only_when_allowed() -> None:
    body = payload("github/push.json")
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    headers = {"X-Hub-Signature-256": None, "X-Hub-Signature": sha1}
    assert _judge("github/push.json", "push", headers=headers).status == 401
    assert _judge("github/push.json", "push", headers=headers, allow_sha1=True).status == 202
    bad = {"X-Hub-Signature-256": None, "X-Hub-Signature": "sha1=" + "0" * 40}
    assert _judge("github/push.json", "push", headers=bad, allow_sha1=True).status == 401


def test_form_encoded_payload() -> None:
    body = urllib.parse.urlencode({"payload": payload("github/push.json").decode()}).encode()
    v = _judge("github/push.json", "push", body=body,
               headers={"Content-Type": "application/x-www-form-urlencoded", "X-Hub-Signature-256": sign(body)})
    assert (v.status, v.verdict) == (202, "queued")


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"),
    (b"\xff\xfe", "application/json"),
    (b"payload=%7Bbroken", "application/x-www-form-urlencoded"),
    (b"other=1", "application/x-www-form-urlencoded"),
    (b"[1, 2]", "application/json"),
    (json.dumps({"ref": 5}).encode(), "application/json"),
])
def test_malformed_body_behind_a_valid_signature_is_400(body, content_type) -> None:
    v = _judge("github/push.json", "push", body=body,
               headers={"Content-Type": content_type, "X-Hub-Signature-256": sign(body)})
    assert (v.status, v.verdict) == (400, "bad_request"), v


def test_missing_event_header_is_400() -> None:
    v = _judge("github/push.json", "push", headers={"X-GitHub-Event": None})
    assert v.status == 400 and "X-GitHub-Event" in v.reason


def test_duplicate_delivery_is_2xx_and_says_duplicate() -> None:
    seen = SeenDeliveries()
    seen.add("d-1")
    v = _judge("github/push.json", "push", seen=seen)
    assert v.status == 200 and v.verdict == "duplicate" and "duplicate" in json.dumps(v.body())


def test_unsigned_request_cannot_probe_duplicates() -> None:
    seen = SeenDeliveries()
    seen.add("d-1")
    assert _judge("github/push.json", "push", seen=seen, headers={"X-Hub-Signature-256": None}).status == 401


def test_seen_deliveries_are_bounded() -> None:
    seen = SeenDeliveries(limit=3)
    for i in range(5):
        seen.add(str(i))
    assert "0" not in seen and "1" not in seen and "4" in seen


def test_push_fields_are_type_checked() -> None:
    p = Push.from_payload({"ref": "refs/heads/main", "after": "<script>", "repository": "x"})
    assert p.after is None and p.repository is None
    assert wanted(p, branch="main", full_name=None) == (True, "push to main")
    assert wanted(p, branch="main", full_name="a/b")[0] is False
    weird = Push.from_payload({"ref": "refs/notes/x"})
    assert wanted(weird, branch="main", full_name=None) == (False, "ref refs/notes/x is not a branch")


# -- GitLab and Gitea/Forgejo ---------------------------------------------------

from supervisor.webhook.delivery import GITEA, GITLAB  # noqa: E402


def _other(receiver, name: str, headers: dict[str, str], *, branch: str = "master", full_name: str | None = None,
           seen: SeenDeliveries | None = None):
    return judge(headers, payload(name), receiver, secret=SECRET.encode(), branch=branch, full_name=full_name,
                 seen=seen if seen is not None else SeenDeliveries())


def _gitlab(token: str = SECRET, **extra: str) -> dict[str, str]:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token, "X-Gitlab-Event-UUID": "gl-1",
            "Content-Type": "application/json", **extra}


def _gitea(body: bytes, prefix: str = "Gitea", secret: str = SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {f"X-{prefix}-Event": "push", f"X-{prefix}-Signature": sig, f"X-{prefix}-Delivery": "gt-1",
            "Content-Type": "application/json"}


def test_gitlab_push_token_and_project_filter() -> None:
    v = _other(GITLAB, "gitlab/push.json", _gitlab(), full_name="mike/diaspora")
    assert (v.status, v.verdict, v.commit) == (202, "queued", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    assert _other(GITLAB, "gitlab/push.json", _gitlab(), full_name="someone/else").verdict == "ignored"
    assert _other(GITLAB, "gitlab/push.json", _gitlab(), branch="main").reason == "branch master is not main"
    bad = _other(GITLAB, "gitlab/push.json", _gitlab(token="wrong"))
    assert (bad.status, bad.reason) == (401, "X-Gitlab-Token does not match")
    headers = _gitlab()
    del headers["X-Gitlab-Token"]
    assert _other(GITLAB, "gitlab/push.json", headers).status == 401
    seen = SeenDeliveries()
    seen.add("gl-1")
    assert _other(GITLAB, "gitlab/push.json", _gitlab(), seen=seen).verdict == "duplicate"
    tag = _other(GITLAB, "gitlab/push.json", _gitlab(**{"X-Gitlab-Event": "Tag Push Hook"}))
    assert tag.verdict == "ignored"


@pytest.mark.parametrize("name, full_name, after", [
    ("gitea/push.json", "gogits/hello-world", "4522cbcefc20728a5b72b3a86af35e608622c514"),
    ("gitea/push-new-branch.json", "example/example", "67b56589a45103f891bdee7c0546e5d40bc02001"),
])
@pytest.mark.parametrize("prefix", ["Gitea", "Forgejo"])
def test_gitea_and_forgejo_push(name: str, full_name: str, after: str, prefix: str) -> None:
    body = payload(name)
    v = _other(GITEA, name, _gitea(body, prefix), full_name=full_name)
    assert (v.status, v.verdict, v.commit, v.delivery) == (202, "queued", after, "gt-1")
    assert _other(GITEA, name, _gitea(body, prefix, secret="wrong")).status == 401
    assert _other(GITEA, name, _gitea(body, prefix), full_name="x/y").verdict == "ignored"
