"""The control API and the status page, on ``[control] listen``.

``GET /status``, ``GET /history``, ``GET /logs``, ``GET /releases``, ``POST /deploy``, ``POST /rollback``,
``GET /config`` and ``POST /config`` (config vars; reading them always needs the credential),
``GET /jobs`` and ``POST /jobs/run?name=NAME`` (scheduled jobs),
``GET /metrics`` (Prometheus text) and ``GET /`` (an HTML page that refreshes
itself).

Who may do what (:func:`gate`): no request of another site may change state, and
a web page may not even read through a rebound DNS name.

- ``Host`` must be an IP address, ``localhost`` or a name in ``[control] hosts``:
  DNS rebinding (a stranger's name resolving to 127.0.0.1) is refused (403).
- A POST that a browser marks as cross-site (``Sec-Fetch-Site``) or that comes
  from another ``Origin`` is refused (403), token or not.
- Every POST needs ``Authorization: Bearer <token>`` (compared in constant time),
  on loopback too: the ``[control] token_env`` token or the generated one
  (:mod:`supervisor.ops.controltoken`). Reads need it when ``token_env`` is set.
  The page's own buttons send a page token instead (:func:`~supervisor.ops.page.page_token`),
  accepted only on a request the browser marks as same-origin.
- A browser logs in at ``/login`` with the token (when ``token_env`` makes reads need it): a session
  cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` behind TLS, 12 hours; an expiry and its HMAC
  under the token, so nothing is stored) then stands for the token on reads, and the page it reads
  carries the page token for its buttons. ``/login`` and ``/logout`` need no credential; the
  cross-site checks hold for them as for every POST.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import time
import ipaddress
import logging
import re
from typing import Any, Awaitable, Callable, Collection, Protocol

from aiohttp import web

from .history import History
from .metrics import CONTENT_TYPE, Metrics
from .page import page_token, render_page

log = logging.getLogger("supervisor.control")

WAIT_LIMIT = 900.0  # POST /deploy?wait=1 answers within this, finished or not
COMMIT = re.compile(r"[0-9a-fA-F]{4,40}")
PROCESS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
OUTPUT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}")  # whose output: a process type, job.NAME, a release


class Console(Protocol):
    """What the control API reads and asks of the supervisor; nothing else of it is reachable from here."""

    history: History
    metrics: Metrics

    async def status(self) -> dict[str, Any]: ...

    def releases_listing(self) -> list[dict[str, Any]]: ...

    async def output(self, process: str | None = None, since: float = 0.0, release: str | None = None,
                     limit: int = 200) -> list[dict[str, Any]]:
        """The app's output, from disk: ``{"time", "pid", "process", "release", "line"}``, oldest first."""

    def ask(self, what: str, arg: str | None = None, force: bool = False) -> "asyncio.Future[Any]":
        """A request for the worker: "deploy" (the tip, or ``arg``: a commit), "retry", "rollback" (to ``arg``;
        ``force``: even to a release that never went live), "restart" (``arg``: one process type), "resume"."""

    def pause(self, reason: str) -> None: ...

    def config_vars(self, show: bool = False) -> dict[str, Any]: ...

    def jobs(self) -> list[dict[str, Any]]: ...

    async def run_job(self, name: str, wait: float) -> dict[str, Any] | None:
        """A run of scheduled job ``name`` now; None when there is no such job."""

    def configure(self, set_: dict[str, str], unset: list[str], restart: bool) -> "asyncio.Future[Any] | str":
        """New config vars (ConfigVarsError, a ValueError, for a wrong key): with ``restart`` a request that puts
        them live, else their digest (applied at the next deploy)."""

    @property
    def queued(self) -> list[str]: ...


def _int(request: web.Request, name: str, default: int | None, low: int = 1, high: int = 1000) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return max(low, min(high, int(raw)))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _refuse(status: int, error: str, request: web.Request) -> web.Response:
    log.warning("control: refused %s %s (%s): %s", request.method, request.path, status, error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": error}, status=status, headers=headers)


def host_allowed(host: str, names: Collection[str] = ()) -> bool:
    """Is ``host`` (a Host header) one this listener may be reached by?

    >>> [host_allowed(h) for h in ("127.0.0.1:9001", "[::1]:9001", "localhost:9001", "10.1.2.3")]
    [True, True, True, True]
    >>> host_allowed("attacker.example:9001"), host_allowed("pushcd.internal", ["pushcd.internal"])
    (False, True)
    """
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name in {n.lower() for n in names}:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def cross_site(request: web.Request) -> str | None:
    """Why a state-changing request looks like another site's; None when it is same-origin or not a browser's."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site[:40]}"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != _own_origin(request):
        return f"Origin {origin[:80]} is not this page's"
    return None


def same_origin(request: web.Request) -> bool:
    """Does a browser say this request comes from our own page? (Only browsers send these headers.)"""
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin.lower() == _own_origin(request)


def _own_origin(request: web.Request) -> str:
    """The origin a page of ours has (from the Host header itself; see gate)."""
    return f"{'https' if request.secure else 'http'}://{request.headers.get('Host', '')}".lower()


SESSION = "pushcd_session"
SESSION_SECONDS = 12 * 3600
OPEN = frozenset({"/login", "/logout"})  # need no credential (the cross-site checks still hold)
SECRET_READS = frozenset({"/config"})  # need the credential even when other reads do not


def session_value(token: bytes, expires: int) -> str:
    """A session cookie's value: its expiry and the HMAC of it under the token (nothing kept server-side).

    >>> v = session_value(b"t", 2_000_000_000); valid_session(b"t", v, now=1_900_000_000)
    True
    >>> valid_session(b"other", v, now=1_900_000_000), valid_session(b"t", v, now=2_100_000_000)
    (False, False)
    """
    mac = hmac.new(token, f"pushcd-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def valid_session(token: bytes, value: str | None, now: float | None = None) -> bool:
    expires, _, _mac = (value or "").partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(session_value(token, int(expires)).encode(), (value or "").encode())


def gate(token: bytes, reads_need_token: bool, hosts: Collection[str] = ()
         ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The control API's middleware: Host, then cross-site, then the credential (see the module doc)."""
    page = page_token(token).encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The header itself: aiohttp's request.host would look up this machine's name (blocking DNS)
        # when there is none. No Host at all is no browser, so no DNS rebinding.
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, hosts):
            return _refuse(403, f"Host {host[:80]!r} is not this pushcd's; reach it by its address or "
                                f"localhost, or add the name to [control] hosts", request)
        writes = request.method not in SAFE_METHODS
        if writes and (why := cross_site(request)):
            return _refuse(403, f"cross-site request refused ({why})", request)
        if request.path in OPEN:
            return await handler(request)
        from_page = writes and same_origin(request) and hmac.compare_digest(
            request.headers.get("X-Pushcd-Page", "").encode(), page)
        # Writes: the page's own buttons (page token, same origin) or the bearer. Reads, when guarded: the
        # session a person logged in with, or the bearer.
        if writes:
            needs_bearer = not from_page
        else:
            needs_bearer = ((reads_need_token or request.path in SECRET_READS)
                            and not valid_session(token, request.cookies.get(SESSION)))
        if needs_bearer:
            sent = request.headers.get("Authorization", "")
            given = sent[len("Bearer "):].encode() if sent.startswith("Bearer ") else b""
            if not hmac.compare_digest(given, token):
                if request.method == "GET" and request.path == "/" and "text/html" in request.headers.get("Accept", ""):
                    raise web.HTTPSeeOther("/login")  # a person with a browser: the way in
                return _refuse(401, "a valid 'Authorization: Bearer <token>' is required (the CLI sends it: "
                                    "the [control] token_env token, or [state] dir/control-token)", request)
        return await handler(request)

    return check


def make_app(sup: Console, token: bytes, reads_need_token: bool, hosts: Collection[str] = ()) -> web.Application:
    async def get_status(_request: web.Request) -> web.Response:
        return web.json_response(await sup.status())

    async def get_history(request: web.Request) -> web.Response:
        limit = _int(request, "limit", 50)
        before = _int(request, "before", None, 1, 2**62)
        deploys = sup.history.deploys(limit or 50, before)
        return web.json_response({
            "deploys": deploys,
            "deliveries": sup.history.deliveries(_int(request, "deliveries", 20) or 20),
            "next": {"before": deploys[-1]["seq"]} if len(deploys) == limit else None,
        })

    async def get_logs(request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0") or 0)
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number (seconds since the epoch)") from None
        process, release = request.query.get("process"), request.query.get("release")
        for name, value in (("process", process), ("release", release)):
            if value is not None and not OUTPUT.fullmatch(value):
                raise web.HTTPBadRequest(text=f"{name} must be a name (letters, digits, ., - and _)")
        return web.json_response({"lines": await sup.output(process, since, release,
                                                            _int(request, "limit", 200, 1, 5000) or 200)})

    async def act(request: web.Request, future: "asyncio.Future[Any]", what: str) -> web.Response:
        if request.query.get("wait") not in ("1", "true", "yes"):
            return web.json_response({"queued": what, "queue": sup.queued}, status=202)
        try:
            last = await asyncio.wait_for(asyncio.shield(future), WAIT_LIMIT)
        except asyncio.TimeoutError:
            return web.json_response({"queued": what, "done": False, "status": await sup.status()}, status=202)
        done = last is not None and last.result != "none"
        body = {"done": True, "result": last.as_dict() if done else None, "status": await sup.status()}
        if not done:
            body["note"] = f"nothing to {what}" + (f": {last.reason}" if last is not None else "")
        return web.json_response(body)

    def _flag(request: web.Request, name: str) -> bool:
        return request.query.get(name) in ("1", "true", "yes")

    async def post_deploy(request: web.Request) -> web.Response:
        commit = request.query.get("commit")
        if commit is not None and not COMMIT.fullmatch(commit):
            raise web.HTTPBadRequest(text="commit must be a commit id (4 to 40 hex digits)")
        if commit and _flag(request, "retry"):
            raise web.HTTPBadRequest(text="give commit or retry, not both")
        what = "retry" if _flag(request, "retry") else "deploy"
        return await act(request, sup.ask(what, commit), "deploy")

    async def post_rollback(request: web.Request) -> web.Response:
        to = request.query.get("to")
        if to is not None and not COMMIT.fullmatch(to):
            raise web.HTTPBadRequest(text="to must be a release id or a commit id (4 to 40 hex digits)")
        return await act(request, sup.ask("rollback", to, force=_flag(request, "force")), "rollback")

    async def get_releases(_request: web.Request) -> web.Response:
        return web.json_response({"releases": sup.releases_listing()})

    async def post_restart(request: web.Request) -> web.Response:
        process = request.query.get("process") or None
        if process is not None and not PROCESS.fullmatch(process):
            raise web.HTTPBadRequest(text="process must be a process type's name (letters, digits, - and _)")
        return await act(request, sup.ask("restart", process), "restart")

    async def post_pause(request: web.Request) -> web.Response:
        reason = (request.query.get("reason") or "paused by hand")[:200]
        sup.pause(reason)
        return web.json_response({"paused": {"reason": reason}, "status": await sup.status()})

    async def post_resume(request: web.Request) -> web.Response:
        return await act(request, sup.ask("resume"), "deploy")

    async def get_config(request: web.Request) -> web.Response:
        return web.json_response(sup.config_vars(show=_flag(request, "show")))

    async def post_config(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be JSON: {\"set\": {KEY: VALUE}, \"unset\": [KEY], "
                                          "\"restart\": true}") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        set_, unset = body.get("set") or {}, body.get("unset") or []
        if not (isinstance(set_, dict) and all(isinstance(v, str) for v in set_.values())
                and isinstance(unset, list) and all(isinstance(k, str) for k in unset)):
            raise web.HTTPBadRequest(text="set must map keys to strings, unset must list keys")
        try:
            outcome = sup.configure(set_, unset, restart=body.get("restart", True) is not False)
        except ValueError as exc:  # ConfigVarsError: which key, and why
            return web.json_response({"error": str(exc)}, status=400)
        if isinstance(outcome, str):
            return web.json_response({"config": outcome, "applied": "at the next deploy"})
        return await act(request, outcome, "config")

    async def get_jobs(request: web.Request) -> web.Response:
        return web.json_response({"jobs": sup.jobs(),
                                  "runs": sup.history.job_runs(request.query.get("job"),
                                                               _int(request, "limit", 20) or 20)})

    async def post_job_run(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        if not PROCESS.fullmatch(name):
            raise web.HTTPBadRequest(text="name must be a job's name (letters, digits, - and _)")
        run = await sup.run_job(name, WAIT_LIMIT if _flag(request, "wait") else 0)
        if run is None:
            return web.json_response({"error": f"no job {name}; `pushcd jobs` lists them"}, status=404)
        return web.json_response({"run": run})

    async def get_metrics(_request: web.Request) -> web.Response:
        await sup.status()  # reads the deployed commit's message (in the git thread) for the info metric
        return web.Response(body=sup.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def get_page(_request: web.Request) -> web.Response:
        page = render_page(await sup.status(), sup.history.deploys(15), sup.history.deliveries(15),
                           await sup.output(limit=40), page_token(token), logout=reads_need_token,
                           config=sup.config_vars(), jobs=sup.jobs())
        return web.Response(text=page, content_type="text/html")

    async def get_login(request: web.Request, problem: str = "") -> web.Response:
        note = f"<p class='problem'>{html.escape(problem)}</p>" if problem else ""
        return web.Response(content_type="text/html", status=401 if problem else 200, text=(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pushcd: log in</title></head>"
            "<body><h1>pushcd</h1><form method='post' action='/login'><label>Control token "
            "<input type='password' name='token' id='token' autocomplete='current-password' autofocus></label> "
            f"<button id='login'>Log in</button></form>{note}<p>The token is [control] token_env's.</p>"
            "</body></html>"))

    async def post_login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = str(form.get("token", "")).encode()
        if not hmac.compare_digest(given, token):
            log.warning("control: a login with a wrong token from %s", request.remote)
            return await get_login(request, "That is not the token.")
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(SESSION, session_value(token, int(time.time()) + SESSION_SECONDS), max_age=SESSION_SECONDS,
                            httponly=True, samesite="Strict", secure=request.secure, path="/")
        return response

    async def post_logout(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(SESSION, path="/")
        return response

    app = web.Application(middlewares=[gate(token, reads_need_token, hosts)])
    app.add_routes([
        web.get("/", get_page),
        web.get("/status", get_status),
        web.get("/history", get_history),
        web.get("/logs", get_logs),
        web.get("/releases", get_releases),
        web.post("/deploy", post_deploy),
        web.post("/rollback", post_rollback),
        web.post("/restart", post_restart),
        web.post("/pause", post_pause),
        web.get("/config", get_config),
        web.get("/jobs", get_jobs),
        web.post("/jobs/run", post_job_run),
        web.post("/config", post_config),
        web.post("/resume", post_resume),
        web.get("/metrics", get_metrics),
        web.get("/login", get_login),
        web.post("/login", post_login),
        web.post("/logout", post_logout),
    ])
    return app
