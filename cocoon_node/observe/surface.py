"""``/metrics`` and ``/dashboard`` beside an existing app (the requester API, the admin endpoint).

The node mounts its app under this one; requests to every path are counted (:class:`ObservedHTTP`).
Access: when the listener has a key (the API key, the admin token), ``/metrics`` wants it as a bearer token,
and the dashboard wants a session cookie, got by typing the key into the login form or by opening the
one-time link the node prints at start (its token works once, for minutes, and is not the key).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from cocoon_node.observe.dashboard_data import dashboard_data
from cocoon_node.observe.metrics import CONTENT_TYPE, NodeMetrics
from cocoon_node.observe.timing import ObservedHTTP

COOKIE = "cocoon_dashboard"


def cookie_name(request: Request) -> str:
    """Cookies ignore ports: the API's and the admin listener's sessions on one host need their own names."""
    return f"{COOKIE}_{request.url.port or 0}"
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 600
MAX_SESSIONS = 64
MAX_LOGIN_BYTES = 4096
_STATIC = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}


class DashboardAccess:
    """Sessions and one-time links for one listener; all in memory, bounded, gone at restart."""

    def __init__(self, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self._clock = clock
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._links: dict[str, float] = {}

    @property
    def open(self) -> bool:
        return not self.key

    def key_matches(self, given: str) -> bool:
        return bool(self.key) and hmac.compare_digest(given.encode(), self.key.encode())

    def bearer_ok(self, request: Request) -> bool:
        if self.open:
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and self.key_matches(header.removeprefix("Bearer "))

    def one_time_link(self) -> str:
        """A fresh token for ``/dashboard/login?once=TOKEN``: one use, within :data:`LINK_SECONDS`."""
        token = secrets.token_urlsafe(24)
        now = self._clock()
        self._links = {t: exp for t, exp in self._links.items() if exp > now}
        self._links[token] = now + LINK_SECONDS
        return token

    def redeem(self, token: str) -> bool:
        expires = self._links.pop(token, None)
        return expires is not None and expires > self._clock()

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = self._clock() + SESSION_SECONDS
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid

    def session_ok(self, request: Request) -> bool:
        if self.open:
            return True
        expires = self._sessions.get(request.cookies.get(cookie_name(request), ""))
        return expires is not None and expires > self._clock()


def _static(name: str) -> str:
    return resources.files("cocoon_node.observe").joinpath("static", name).read_text(encoding="utf-8")


def _login_page(message: str = "") -> HTMLResponse:
    note = f'<p class="error">{message}</p>' if message else ""
    return HTMLResponse(_static("login.html").replace("<!--NOTE-->", note), status_code=401 if message else 200)


def observed_surface(inner: ASGIApp, *, metrics: NodeMetrics, status: Callable[[], Awaitable[dict[str, Any]]],
                     access: DashboardAccess, models: Callable[[], list[dict[str, Any]]] | None = None,
                     listener: str = "api") -> ASGIApp:
    """``inner`` with ``/metrics`` and the dashboard in front, every request counted."""

    async def get_metrics(request: Request) -> Response:
        if not access.bearer_ok(request):
            return JSONResponse({"error": {"message": "missing or wrong key: send it as a bearer token",
                                           "type": "invalid_request_error", "code": "invalid_api_key"}},
                                status_code=401)
        return Response(metrics.render(await status()), media_type=CONTENT_TYPE)

    async def dashboard(request: Request) -> Response:
        if not access.session_ok(request):
            return _login_page()
        return HTMLResponse(_static("dashboard.html").replace("<!--LISTENER-->", listener))

    async def login(request: Request) -> Response:
        if access.open:
            return RedirectResponse("/dashboard", status_code=303)
        if request.method == "GET":
            if not access.redeem(request.query_params.get("once", "")):
                return _login_page("that link was used already or has expired: type the key instead")
        else:
            body = b""
            async for part in request.stream():  # bounded: the form is one short field
                body += part
                if len(body) > MAX_LOGIN_BYTES:
                    return Response("login form over 4096 bytes", status_code=413)
            # urlencoded by hand: Starlette's form parser needs python-multipart, one dependency for one field
            form = parse_qs(body.decode("utf-8", "replace"))
            if not access.key_matches((form.get("key") or [""])[0]):
                return _login_page("wrong key")
        # See-other to the bare page: the one-time token leaves the address bar and the history.
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.set_cookie(cookie_name(request), access.new_session(), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", path="/")
        return resp

    async def data(request: Request) -> Response:
        if not (access.session_ok(request) or access.bearer_ok(request)):
            return JSONResponse({"error": "log in at /dashboard"}, status_code=401)
        snapshot = await status()
        return JSONResponse(dashboard_data(snapshot, models() if models else [], metrics))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404)
        return Response(_static(name), media_type=_STATIC[name], headers={"cache-control": "no-cache"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for it; a 404 would show as an error on the page

    app = Starlette(routes=[
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/login", login, methods=["GET", "POST"]),
        Route("/dashboard/data", data, methods=["GET"]),
        Route("/dashboard/static/{name}", static, methods=["GET"]),
        Mount("", app=inner),
    ])
    return ObservedHTTP(app, metrics)
