"""The status page: what is deployed, the recent deploys and deliveries, the app's output, and a console.

Rendered from data alone (a status snapshot, history rows, output lines). The console's buttons
(deploy, restart, pause or resume, retry a marked-bad commit, roll back to a recent release) ask
for confirmation, POST to the control API from the page itself, and show the answer. They carry
a page token (``X-Pushcd-Page``, derived from the control token) that the API accepts only on a
same-origin request (see ``control.gate``): another site can neither read the page nor send it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
from typing import Any


def page_token(token: bytes) -> str:
    """The credential the page's own buttons send: derived, so the control token itself is never in a page."""
    return hmac.new(token, b"pushcd page", hashlib.sha256).hexdigest()


def _ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2330}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:18px 0 6px}
.card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 2px #0001;margin-bottom:10px}
.state{display:inline-block;padding:2px 8px;border-radius:10px;background:#dde;font-weight:600}
.running,.ok,.queued{background:#d4f5dd;color:#125c2a} .deploying,.ping,.paused{background:#fff1c2;color:#6b4e00}
.crashed,.failed,.unauthorized,.forbidden,.bad_request{background:#fbd5d5;color:#8a1414}
.refused,.ignored,.duplicate,.too_large{background:#e5e7eb;color:#374151}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:4px 6px;border-top:1px solid #eee;
vertical-align:top;font-size:14px} code{font-size:13px} .reason{word-break:break-word}
pre{background:#111827;color:#e5e7eb;padding:8px;border-radius:6px;overflow-x:auto;font-size:12px;max-height:22em}
button{font:inherit;padding:4px 10px;border-radius:6px;border:1px solid #c5c9d3;background:#fff;cursor:pointer}
button:hover{background:#eef0f4} #result{margin-left:8px} td button{font-size:12px;padding:1px 6px}
@media (max-width:600px){.wide{display:none} td,th{font-size:13px}}
"""

# Reload every 5 s to stay current, but never under an open dialog or an action in flight.
_JS = """
const TOKEN = document.body.dataset.page;
let busy = false;
async function act(button) {
  if (!confirm(button.dataset.ask)) return;
  busy = true;
  const out = document.getElementById('result');
  out.textContent = button.textContent + ': working...';
  try {
    const headers = {'X-Pushcd-Page': TOKEN};
    if (button.dataset.body) headers['Content-Type'] = 'application/json';
    const r = await fetch(button.dataset.act, {method: 'POST', headers, body: button.dataset.body});
    const b = await r.json().catch(() => ({}));
    out.textContent = button.textContent + ': ' + (b.result ? b.result.result + ': ' + b.result.reason
      : b.run ? (b.run.result || 'running') + ': ' + b.run.reason
      : b.note || b.error || (b.paused ? 'paused (' + b.paused.reason + ')' : 'answered ' + r.status));
  } catch (err) {
    out.textContent = button.textContent + ': ' + err;
  } finally {
    busy = false;
    setTimeout(() => location.reload(), 3000);
  }
}
document.querySelectorAll('button[data-act]').forEach(b => b.addEventListener('click', () => act(b)));
const setVar = document.getElementById('config-set');
if (setVar) {
  setVar.addEventListener('focusin', () => { busy = true; });  // no reload while a value is typed
  setVar.addEventListener('submit', ev => {
    ev.preventDefault();
    const button = setVar.querySelector('button');
    button.dataset.act = '/config?wait=1';
    const field = name => setVar.elements.namedItem(name).value;
    button.dataset.body = JSON.stringify({set: {[field('key')]: field('value')}});
    act(button);
  });
}
setInterval(() => { if (!busy) location.reload(); }, 5000);
const logs = document.getElementById('logs');
logs.scrollTop = logs.scrollHeight;  // the newest line first in view
"""


def chart(deploys: list[dict[str, Any]]) -> str:
    """The last deploys' durations as bars, oldest left, coloured by result: inline SVG, nothing external.

    >>> '<rect' in chart([{"duration": 1.5, "result": "ok", "to_commit": "a" * 40}])
    True
    """
    rows = list(reversed(deploys[:30]))
    if not rows:
        return ""
    top = max(d["duration"] for d in rows) or 1.0
    colour = {"ok": "#2f9e57", "failed": "#d64545", "refused": "#9aa1ad"}
    bars = []
    for i, d in enumerate(rows):
        h = max(2.0, 56 * d["duration"] / top)
        bars.append(f"<rect x='{i * 12 + 2}' y='{60 - h:.1f}' width='9' height='{h:.1f}' "
                    f"fill='{colour.get(d['result'], '#9aa1ad')}'><title>{html.escape(d['result'])} "
                    f"{html.escape((d['to_commit'] or '')[:12])} {d['duration']:.2f}s</title></rect>")
    return (f"<svg id='chart' width='{len(rows) * 12 + 4}' height='62' role='img' "
            f"aria-label='durations of the last {len(rows)} deploys, longest {top:.2f}s'>{''.join(bars)}</svg>"
            f" <small>longest {top:.2f}s</small>")


def _button(label: str, path: str, ask: str, ident: str = "", body: Any = None) -> str:
    """A console button: ``path`` is POSTed (with ``body`` as JSON) after the person confirms ``ask``."""
    e = html.escape
    id_attr = f" id='{e(ident)}'" if ident else ""
    body_attr = f" data-body='{e(json.dumps(body))}'" if body is not None else ""
    return f"<button{id_attr} data-act='{e(path)}' data-ask='{e(ask)}'{body_attr}>{e(label)}</button>"


def _jobs(jobs: list[dict[str, Any]]) -> str:
    """The scheduled jobs: schedule, next run, the last run's result, and a button to run one now."""
    if not jobs:
        return ""
    e = html.escape
    rows = []
    for job in jobs:
        last = job["last"] or {}
        state = ("running" if job["running"] else last.get("result", "never ran"))
        when = _ago(last["ended_at"]) if last.get("ended_at") else ""
        rows.append(f"<tr><td><code>{e(job['name'])}</code></td><td><code>{e(job['schedule'])}</code></td>"
                    f"<td><span class='state {e(state)}'>{e(state)}</span> {e(when)}</td>"
                    f"<td class='reason'>{e(last.get('reason') or '')}</td><td>"
                    + _button("run now", f"/jobs/run?name={job['name']}&wait=1", f"Run {job['name']} now?")
                    + "</td></tr>")
    return (f"<h2>Jobs</h2>\n<div class='card'><table id='jobs'><tr><th>job</th><th>schedule</th><th>last run</th>"
            f"<th>reason</th><th></th></tr>{''.join(rows)}</table></div>")


def _config_vars(config: dict[str, Any] | None) -> str:
    """The config vars, masked, each with a button to remove it, and a form to set one (each a release)."""
    if config is None:
        return ""
    e = html.escape
    rows = "".join(f"<tr><td><code>{e(k)}</code></td><td>{e(v)}</td><td>"
                   + _button("unset", "/config?wait=1", f"Remove {k}? The app restarts without it (health-gated).",
                             body={"unset": [k]})
                   + "</td></tr>" for k, v in sorted(config["vars"].items()))
    pending = (f"<div>The live release runs with {e(config['live'] or '(none)')}; these apply at the next deploy "
               f"or restart.</div>" if config.get("live") not in (None, config["config"]) else "")
    return f"""<h2>Config vars <small><code>{e(config['config'] or '(none)')}</code></small></h2>
<div class="card" id="config">{pending}<table id="config-vars">{rows or '<tr><td>none set</td></tr>'}</table>
<form id="config-set"><input name="key" placeholder="KEY" required pattern="[A-Za-z_][A-Za-z0-9_]*">
<input name="value" placeholder="value" type="password" autocomplete="off">
<button id="config-save" data-ask="Set this config var? The app restarts with it (health-gated).">set</button>
</form></div>"""


def _release(release: dict[str, Any] | None) -> str:
    """Which release folder and environment serve (snapshot mode); nothing in place."""
    if not release or not release.get("id"):
        return ""
    e = html.escape
    edits = " <span class='state deploying'>with hand edits</span>" if release["dirty"] else ""
    return (f"<div>Release: <code id='release'>{e(release['id'])}</code>{edits}, environment "
            f"<code>{e(release['env'] or 'none')}</code></div>")


def _processes(processes: list[dict[str, Any]]) -> str:
    """One row per process instance: the web process and each worker (shown when there is more than web)."""
    if len(processes) < 2:
        return ""
    e = html.escape
    rows = "".join(f"<tr><td>{e(str(p['name']))}[{p['index']}]</td><td><span class='state {e(str(p['state']))}'>"
                   f"{e(str(p['state']))}</span></td><td>{p['pid'] or '-'}</td><td><code>{e(str(p['commit'])[:12])}"
                   f"</code></td><td>{p['restarts']}</td><td>{p['uptime']:.0f}s</td></tr>" for p in processes)
    return (f"<div class='card'><table id='processes'><tr><th>process</th><th>state</th><th>pid</th>"
            f"<th>commit</th><th>restarts</th><th>up</th></tr>{rows}</table></div>")


_LOGOUT = "<form method='post' action='/logout' id='logout-form'><button id='logout'>Log out</button></form>"


def render_page(st: dict[str, Any], deploys: list[dict[str, Any]], deliveries_seen: list[dict[str, Any]],
                lines_seen: list[dict[str, Any]], token: str, logout: bool = False,
                config: dict[str, Any] | None = None, jobs: list[dict[str, Any]] | None = None) -> str:
    """The page from data alone; ``token`` is the page token its buttons send; ``logout``: a person logged in
    to read it (a token guards the page), so it offers to log out."""
    e = html.escape
    sha = st["deployed_commit"]
    rows = []
    for d in deploys:
        to = d["to_commit"] or ""
        back = (_button("roll back to this", f"/deploy?commit={to}&wait=1",
                        f"Deploy {to[:12]} again? Automatic deploys pause until you resume.")
                if d["result"] == "ok" and to and to != sha else "")
        rows.append(
            f"<tr><td><span class='state {e(d['result'])}'>{e(d['result'])}</span></td>"
            f"<td><code>{e(to[:12])}</code> {back}</td><td>{e(d['trigger'])}</td>"
            f"<td>{d['duration']:.2f}s</td><td class='wide'>{e(_ago(d['ended_at']))}</td>"
            f"<td class='reason'>{e(d['reason'] or '')}</td></tr>")
    deliveries = []
    for d in deliveries_seen:
        ident = "" if d["id"].startswith("-") else d["id"]
        deliveries.append(
            f"<tr><td><span class='state {e(d['verdict'])}'>{e(d['verdict'])}</span></td>"
            f"<td>{e(d['event'] or '')}</td><td class='wide'><code>{e(ident[:36])}</code></td>"
            f"<td>{e(_ago(d['received_at']))}</td><td class='reason'>{e(d['reason'] or '')}</td></tr>")
    lines = "\n".join(f"{r['process']}[{r['pid']}] {r['line']}" for r in lines_seen)
    last = st["last_deploy"]
    last_html = (f"<span class='state {e(last['result'])}'>{e(last['result'])}</span> "
                 f"<span class='reason'>{e(last['reason'])}</span>") if last else "none yet"
    bad = "".join(f"<li><code>{e(k[:12])}</code> {e(v)} "
                  f"{_button('retry', f'/deploy?commit={k}&wait=1', f'Deploy {k[:12]} again, although it failed?')}"
                  f"</li>" for k, v in st["bad_commits"].items())
    paused = st.get("paused")
    pause = (_button("resume", "/resume?wait=1", "Deploy pushes again (and the branch tip now, if it moved)?",
                     "resume") if paused else
             _button("pause", "/pause?reason=paused+from+the+page",
                     "Stop deploying pushes? They are still verified and recorded.", "pause"))
    waiting = (st.get("last_reload") or {}).get("waiting_for_restart") or []
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(st.get('app') or 'pushcd')}: {e(st['state'])} {e(sha[:12])}</title><style>{_CSS}</style></head>
<body data-page="{e(token)}">
<h1>{e(st.get('app') or 'pushcd')} <small>pushcd</small></h1>{_LOGOUT if logout else ''}
<div class="card" id="deployed">
 <div>State: <span class="state {e(st['state'])}" id="state">{e(st['state'])}</span>
 {f"<span class='state paused' id='paused'>automatic deploys paused: {e(paused['reason'])}</span>" if paused else ""}</div>
 <div>Deployed: <code id="commit">{e(sha)}</code></div>
 <div>Message: <b id="message">{e(st['deployed_message'])}</b> by {e(st['deployed_author'])}</div>
 {_release(st.get("release"))}
 <div>Child pid {st['child_pid'] or '-'}, up {st['uptime']:.0f}s, {st['restarts']} restarts, queue: {e(', '.join(st['queue']) or 'empty')}</div>
 <div>Last deploy: {last_html}</div>
 {f"<div>Reloaded, waiting for a restart: {e(', '.join(waiting))}</div>" if waiting else ""}
 {f"<div class='state failed'>History: {e(st['history']['problem'])}</div>" if st['history']['problem'] else ""}
 {f"<div>Marked bad:<ul id='bad'>{bad}</ul></div>" if bad else ""}
</div>
{_processes(st.get("processes") or [])}
<div class="card" id="console">
 {_button("deploy", "/deploy?wait=1", "Fetch and deploy the branch tip now?", "deploy")}
 {_button("restart", "/restart?wait=1", "Restart the live release with the current config (health-gated)?",
          "restart")}
 {pause}<span id="result"></span>
</div>
{_jobs(jobs or [])}
{_config_vars(config)}
<h2>Deploys</h2>
<div class="card">{chart(deploys)}
<table id="deploys"><tr><th>result</th><th>commit</th><th>trigger</th><th>took</th>
<th class="wide">when</th><th>reason</th></tr>{''.join(rows) or '<tr><td colspan=6>none yet</td></tr>'}</table></div>
<h2>Deliveries</h2>
<div class="card"><table id="deliveries"><tr><th>verdict</th><th>event</th><th class="wide">id</th><th>when</th>
<th>reason</th></tr>{''.join(deliveries) or '<tr><td colspan=5>none yet</td></tr>'}</table></div>
<h2>App output</h2>
<pre id="logs">{e(lines) or '(nothing yet)'}</pre>
<p><small>Refreshes every 5 s. JSON: <a href="status">/status</a>, <a href="history">/history</a>,
<a href="logs">/logs</a>, <a href="releases">/releases</a>, <a href="metrics">/metrics</a>.</small></p>
<script>{_JS}</script>
</body></html>
"""
