"""The dashboard's way in, on the ASGI app itself: a login form or a one-time link, never the key in a URL;
``/metrics`` wants the key as a bearer token; the page and its script come from the package."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon_node.observe import DashboardAccess, NodeMetrics, observed_surface
from cocoon_node.observe.surface import COOKIE

KEY = "s3cret-api-key"


async def fake_status() -> dict[str, Any]:
    return {"peer_id": "12D3KooWself", "network": "local", "version": "0", "uptime_s": 1.0, "workers": [
        {"peer_id": "12D3KooWworker", "model": "m", "announced_tee_kind": "dev-INSECURE", "load": 0,
         "max_concurrent": 2, "price_prompt": 1, "price_completion": 2, "path": "direct",
         "gate": {"verified": True, "reasons": ["dev-INSECURE TEE accepted by policy"]}}]}


def client(access: DashboardAccess) -> httpx.AsyncClient:
    async def inner(request: Any) -> JSONResponse:
        return JSONResponse({"inner": True})

    app = observed_surface(Starlette(routes=[Route("/v1/models", inner)]), metrics=NodeMetrics(),
                           status=fake_status, access=access)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


async def test_login_form_sets_a_session_and_the_key_never_rides_in_a_url() -> None:
    access = DashboardAccess(KEY)
    async with client(access) as c:
        page = await c.get("/dashboard")
        assert page.status_code == 200 and 'name="key"' in page.text and 'method="post"' in page.text
        assert (await c.get("/dashboard/data")).status_code == 401
        wrong = await c.post("/dashboard/login", data={"key": "nope"})
        assert wrong.status_code == 401 and "wrong key" in wrong.text and COOKIE not in wrong.headers.get(
            "set-cookie", "")
        huge = await c.post("/dashboard/login", content=b"key=" + b"x" * 100_000,
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert huge.status_code == 413
        ok = await c.post("/dashboard/login", data={"key": KEY})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and KEY not in cookie
        data = (await c.get("/dashboard/data")).json()
        assert data["workers"][0]["peer_id"] == "12D3KooWworker" and data["workers"][0]["dev_insecure"]
        assert "<canvas" in (await c.get("/dashboard")).text
        # the inner app is still there, with its own auth untouched
        assert (await c.get("/v1/models")).json() == {"inner": True}


async def test_one_time_link_works_once() -> None:
    access = DashboardAccess(KEY)
    token = access.one_time_link()
    assert KEY not in token
    async with client(access) as c:
        first = await c.get(f"/dashboard/login?once={token}")
        assert first.status_code == 303 and first.headers["location"] == "/dashboard"  # token leaves the URL
        assert (await c.get("/dashboard/data")).status_code == 200
    async with client(access) as other:
        again = await other.get(f"/dashboard/login?once={token}")
        assert again.status_code == 401 and "used already" in again.text
        assert (await other.get("/dashboard/data")).status_code == 401


async def test_metrics_want_the_key_and_static_files_are_packaged() -> None:
    async with client(DashboardAccess(KEY)) as c:
        assert (await c.get("/metrics")).status_code == 401
        ok = await c.get("/metrics", headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and "cocoon_workers 1.0" in ok.text
        js = await c.get("/dashboard/static/dashboard.js")
        assert js.status_code == 200 and "textContent" in js.text and "http" not in js.text.replace(
            "http.", "")  # nothing fetched from elsewhere
        assert (await c.get("/dashboard/static/../surface.py")).status_code == 404
    async with client(DashboardAccess("")) as open_node:  # no key: open, as the API itself is
        assert (await open_node.get("/metrics")).status_code == 200
        assert "<canvas" in (await open_node.get("/dashboard")).text
