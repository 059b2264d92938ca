"""The control API and the status page, on ``[control] listen``.

``GET /status``, ``GET /history``, ``GET /logs``, ``POST /deploy``, ``POST /rollback``,
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
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import re
import time
from typing import Any, Awaitable, Callable, Collection, Protocol, Sequence

from aiohttp import web

from .history import History
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("supervisor.control")

WAIT_LIMIT = 900.0
COMMIT = re.compile(r"[0-9a-fA-F]{4,40}")  # POST /deploy?wait=1 answers within this, finished or not


class Console(Protocol):
    """What the control API reads and asks of the supervisor; nothing else of it is reachable from here."""

    history: History
    lines: Sequence[tuple[float, int, str]]  # the app's recent output: (time, pid, line)
    metrics: Metrics

    async def status(self) -> dict[str, Any]: ...

    def ask(self, what: str, commit: str | None = None) -> "asyncio.Future[Any]":
        """A job for the worker: "deploy" (the tip, or ``commit``), "retry", "rollback", "restart", "resume"."""

    def pause(self, reason: str) -> None: ...

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
    if origin is not None:
        scheme = "https" if request.secure else "http"
        if origin.lower() != f"{scheme}://{request.headers.get('Host', '')}".lower():
            return f"Origin {origin[:80]} is not this page's"
    return None


def gate(token: bytes, reads_need_token: bool, hosts: Collection[str] = ()) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The control API's middleware: Host, then cross-site, then the credential (see the module doc)."""

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
        if writes or reads_need_token:
            sent = request.headers.get("Authorization", "")
            given = sent[len("Bearer "):].encode() if sent.startswith("Bearer ") else b""
            if not hmac.compare_digest(given, token):
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
        lines = [{"time": t, "pid": pid, "line": line} for t, pid, line in sup.lines if t > since]
        return web.json_response({"lines": lines[-(_int(request, "limit", 200, 1, 500) or 200):]})

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
        return await act(request, sup.ask("rollback"), "rollback")

    async def post_restart(request: web.Request) -> web.Response:
        return await act(request, sup.ask("restart"), "restart")

    async def post_pause(request: web.Request) -> web.Response:
        reason = (request.query.get("reason") or "paused by hand")[:200]
        sup.pause(reason)
        return web.json_response({"paused": {"reason": reason}, "status": await sup.status()})

    async def post_resume(request: web.Request) -> web.Response:
        return await act(request, sup.ask("resume"), "deploy")

    async def get_metrics(_request: web.Request) -> web.Response:
        await sup.status()  # reads the deployed commit's message (in the git thread) for the info metric
        return web.Response(body=sup.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def get_page(_request: web.Request) -> web.Response:
        page = render_page(await sup.status(), sup.history.deploys(15), sup.history.deliveries(15),
                           list(sup.lines)[-40:])
        return web.Response(text=page, content_type="text/html")

    app = web.Application(middlewares=[gate(token, reads_need_token, hosts)])
    app.add_routes([
        web.get("/", get_page),
        web.get("/status", get_status),
        web.get("/history", get_history),
        web.get("/logs", get_logs),
        web.post("/deploy", post_deploy),
        web.post("/rollback", post_rollback),
        web.post("/restart", post_restart),
        web.post("/pause", post_pause),
        web.post("/resume", post_resume),
        web.get("/metrics", get_metrics),
    ])
    return app


def _ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2330}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:18px 0 6px}
.card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 2px #0001;margin-bottom:10px}
.state{display:inline-block;padding:2px 8px;border-radius:10px;background:#dde;font-weight:600}
.running,.ok,.queued{background:#d4f5dd;color:#125c2a} .deploying,.ping{background:#fff1c2;color:#6b4e00}
.crashed,.failed,.unauthorized,.forbidden,.bad_request{background:#fbd5d5;color:#8a1414}
.refused,.ignored,.duplicate,.too_large{background:#e5e7eb;color:#374151}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:4px 6px;border-top:1px solid #eee;
vertical-align:top;font-size:14px} code{font-size:13px} .reason{word-break:break-word}
pre{background:#111827;color:#e5e7eb;padding:8px;border-radius:6px;overflow-x:auto;font-size:12px;max-height:22em}
@media (max-width:600px){.wide{display:none} td,th{font-size:13px}}
"""


def render_page(st: dict[str, Any], deploys: list[dict[str, Any]], deliveries_seen: list[dict[str, Any]],
                lines_seen: list[tuple[float, int, str]]) -> str:
    """The status page from data alone (a status snapshot, history rows, output lines)."""
    e = html.escape
    sha = st["deployed_commit"]
    rows = []
    for d in deploys:
        rows.append(
            f"<tr><td><span class='state {e(d['result'])}'>{e(d['result'])}</span></td>"
            f"<td><code>{e((d['to_commit'] or '')[:12])}</code></td><td>{e(d['trigger'])}</td>"
            f"<td>{d['duration']:.2f}s</td><td class='wide'>{e(_ago(d['ended_at']))}</td>"
            f"<td class='reason'>{e(d['reason'] or '')}</td></tr>")
    deliveries = []
    for d in deliveries_seen:
        ident = "" if d["id"].startswith("-") else d["id"]
        deliveries.append(
            f"<tr><td><span class='state {e(d['verdict'])}'>{e(d['verdict'])}</span></td>"
            f"<td>{e(d['event'] or '')}</td><td class='wide'><code>{e(ident[:36])}</code></td>"
            f"<td>{e(_ago(d['received_at']))}</td><td class='reason'>{e(d['reason'] or '')}</td></tr>")
    lines = "\n".join(f"[{pid}] {line}" for _, pid, line in lines_seen)
    last = st["last_deploy"]
    last_html = (f"<span class='state {e(last['result'])}'>{e(last['result'])}</span> "
                 f"<span class='reason'>{e(last['reason'])}</span>") if last else "none yet"
    bad = "".join(f"<li><code>{e(k[:12])}</code> {e(v)}</li>" for k, v in st["bad_commits"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>pushcd: {e(st['state'])} {e(sha[:12])}</title><style>{_CSS}</style></head>
<body>
<h1>pushcd</h1>
<div class="card" id="deployed">
 <div>State: <span class="state {e(st['state'])}" id="state">{e(st['state'])}</span></div>
 <div>Deployed: <code id="commit">{e(sha)}</code></div>
 <div>Message: <b id="message">{e(st['deployed_message'])}</b> by {e(st['deployed_author'])}</div>
 <div>Child pid {st['child_pid'] or '-'}, up {st['uptime']:.0f}s, {st['restarts']} restarts, queue: {e(', '.join(st['queue']) or 'empty')}</div>
 <div>Last deploy: {last_html}</div>
 {f"<div class='state failed'>History: {e(st['history']['problem'])}</div>" if st['history']['problem'] else ""}
 {f"<div>Marked bad:<ul>{bad}</ul></div>" if bad else ""}
</div>
<h2>Deploys</h2>
<div class="card"><table id="deploys"><tr><th>result</th><th>commit</th><th>trigger</th><th>took</th>
<th class="wide">when</th><th>reason</th></tr>{''.join(rows) or '<tr><td colspan=6>none yet</td></tr>'}</table></div>
<h2>Deliveries</h2>
<div class="card"><table id="deliveries"><tr><th>verdict</th><th>event</th><th class="wide">id</th><th>when</th>
<th>reason</th></tr>{''.join(deliveries) or '<tr><td colspan=5>none yet</td></tr>'}</table></div>
<h2>App output</h2>
<pre id="logs">{e(lines) or '(nothing yet)'}</pre>
<p><small>Refreshes every 5 s. JSON: <a href="status">/status</a>, <a href="history">/history</a>,
<a href="logs">/logs</a>, <a href="metrics">/metrics</a>.</small></p>
</body></html>
"""
