"""The control endpoint: what is deployed and what is happening, as JSON."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runner import Supervisor


def status(sup: "Supervisor") -> dict[str, object]:
    d = sup.deployer
    live = sup.releases.live
    alive = live is not None and live.alive
    info = sup.describe(d.deployed)
    return {
        "deployed_commit": d.deployed,
        "deployed_message": info["message"],
        "deployed_author": info["author"],
        "state": d.state,
        "child_pid": live.child.pid if alive and live else None,
        "uptime": round(live.child.uptime, 3) if alive and live else 0.0,
        "restarts": sup.releases.restarts,
        "queue": d.queued,
        "last_deploy": d.last.as_dict() if d.last else None,
        "bad_commits": dict(d.bad),
        "app_port": sup.releases.port,
        "webhook_url": sup.webhook_url,
        "time": time.time(),
    }


def make_app(sup: "Supervisor") -> web.Application:
    async def get_status(_request: web.Request) -> web.Response:
        return web.json_response(status(sup))

    app = web.Application()
    app.add_routes([web.get("/status", get_status)])
    return app
