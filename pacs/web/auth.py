"""Sign-in: browser sessions, HTTP Basic for scripts, bearer API tokens; CSRF on forms.

Every URL needs a signed-in user except the few listed in :data:`PUBLIC` (the status
page shows counts, never patient data). API clients get ``401`` with a Basic
challenge; browsers are sent to the sign-in page. Sessions live in a cookie signed
with a key kept in the index database, so every node accepts every other node's
sessions; the cookie carries the user id and the time of the last password change,
so a password change or a disabled account ends all sessions at the next request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint, Flask, abort, current_app, g, redirect, render_template_string, request,
    session, url_for,
)

from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import StorageUnavailable
from pacs.store.users import AuthFailed, UserInfo, Users
from pacs.web.services import users

bp = Blueprint("auth", __name__)

#: Reachable without signing in (exact paths, or prefixes ending in "/").
PUBLIC = ("/health", "/status", "/login", "/favicon.ico", "/static/")
#: Paths that answer like an API (401 + challenge) rather than a page (redirect to sign-in).
API_PREFIXES = ("/dicomweb", "/api/", "/wado")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
#: ``X-Requested-With`` value of the viewer's own requests (viewer/js/api.js).
VIEWER_SCRIPT = "pacs-viewer"

#: What each role may do beyond reading images (which every signed-in user may).
#: ``referrer`` is a referring doctor: reads studies and prints film sheets, changes nothing.
CAPABILITIES: dict[str, frozenset[str]] = {
    "upload": frozenset({"admin", "radiologist"}),     # STOW-RS and other writes to the archive
    "share": frozenset({"admin", "radiologist"}),      # create / revoke shared study links
    "admin": frozenset({"admin"}),                     # users, audit log, all share links
}

F = TypeVar("F", bound=Callable[..., Any])


def can(capability: str, user: UserInfo | None = None) -> bool:
    """Whether ``user`` (default: the signed-in user of this request) has ``capability``."""
    user = user if user is not None else getattr(g, "user", None)
    return user is not None and user.role in CAPABILITIES[capability]


def require(capability: str) -> Callable[[F], F]:
    """View decorator: 403 with a message unless the signed-in user has ``capability``."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not can(capability):
                abort(403, description=f"your role may not do this ({capability})")
            return view(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


LOGIN_PAGE = """<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mini-PACS · {{ t.title }}</title>
<style>
body{font-family:system-ui,sans-serif;background:#111;color:#eee;display:flex;min-height:100vh;
align-items:center;justify-content:center;margin:0}
form{background:#1d1f24;padding:2rem;border-radius:8px;width:min(22rem,90vw)}
label{display:block;margin:.8rem 0 .3rem}input{width:100%;box-sizing:border-box;padding:.6rem;
font-size:1rem;border-radius:4px;border:1px solid #555;background:#111;color:#eee}
button{margin-top:1.2rem;width:100%;padding:.7rem;font-size:1rem;border:0;border-radius:4px;
background:#2b7de9;color:#fff}.err{color:#f77;margin-top:.8rem}
</style></head><body>
<form method="post" action="{{ url_for('auth.login') }}">
<h1>mini-PACS</h1>
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="next" value="{{ next }}">
<label for="u">{{ t.user }}</label><input id="u" name="username" autocomplete="username" required autofocus>
<label for="p">{{ t.password }}</label>
<input id="p" name="password" type="password" autocomplete="current-password" required>
<button type="submit">{{ t.submit }}</button>
{% if error %}<p class="err" role="alert">{{ error }}</p>{% endif %}
</form></body></html>
"""

TEXT = {
    "en": {"title": "Sign in", "user": "User name", "password": "Password", "submit": "Sign in",
           "failed": "Wrong user name or password, or the account is locked. Try again later."},
    "vi": {"title": "Đăng nhập", "user": "Tên đăng nhập", "password": "Mật khẩu", "submit": "Đăng nhập",
           "failed": "Sai tên đăng nhập hoặc mật khẩu, hoặc tài khoản đang bị khóa. Vui lòng thử lại sau."},
}


def client_address() -> str:
    return request.remote_addr or ""


def csrf_token() -> str:
    """The session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    return bool(sent) and hmac.compare_digest(sent, session.get("csrf", ""))


class _TTLCache:
    """Verified credentials and user rows, for a few seconds: argon2 is slow on purpose (~50 ms)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < time.monotonic():
                self._items.pop(key, None)
                return None
            return item[1]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (time.monotonic() + self.ttl, value)


def _basic_user(header: str) -> UserInfo | None:
    try:
        name, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    cache: _TTLCache = current_app.extensions["pacs"]["auth_cache"]
    key = ("basic", hashlib.sha256(f"{name}\0{password}".encode()).hexdigest())
    user = cache.get(key)
    if user is None:
        try:
            user = users().authenticate(name, password)
        except AuthFailed as exc:
            current_app.logger.warning("basic auth refused from %s: %s", client_address(), exc)
            users().audit("signin-failed", username=name, address=client_address(),
                          user_agent=request.user_agent.string, detail="basic")
            return None
        cache.put(key, user)
    return user  # type: ignore[no-any-return]


def _session_user() -> UserInfo | None:
    uid = session.get("uid")
    if uid is None:
        return None
    cache: _TTLCache = current_app.extensions["pacs"]["auth_cache"]
    user = cache.get(("uid", uid))
    if user is None:
        user = users().get(int(uid))
        if user is None:
            return None
        cache.put(("uid", uid), user)
    if user.disabled or session.get("pwv") != user.password_version:
        session.clear()
        return None
    return user  # type: ignore[no-any-return]


def current_user() -> UserInfo | None:
    """The signed-in user of this request: bearer token, Basic credentials, or session."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        g.auth_kind = "token"
        cache: _TTLCache = current_app.extensions["pacs"]["auth_cache"]
        key = ("token", hashlib.sha256(header[7:].strip().encode()).hexdigest())
        user = cache.get(key)
        if user is None:
            user = users().by_token(header[7:].strip())
            if user is not None:
                cache.put(key, user)
        return user  # type: ignore[no-any-return]
    if header[:6].lower() == "basic ":
        g.auth_kind = "basic"
        return _basic_user(header)
    g.auth_kind = "session"
    return _session_user()


def _is_public(path: str) -> bool:
    return path == "/" or any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)


def _wants_api(path: str) -> bool:
    return any(path.startswith(p) for p in API_PREFIXES) or not request.accept_mimetypes.accept_html


def _lang() -> str:
    return request.accept_languages.best_match(["vi", "en"]) or "en"


def _safe_next(target: str | None) -> str:
    """Only same-site relative targets after sign-in (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@bp.get("/login")
def login_form() -> Any:
    lang = _lang()
    return render_template_string(LOGIN_PAGE, t=TEXT[lang], lang=lang, csrf=csrf_token(),
                                  next=_safe_next(request.args.get("next")), error="")


@bp.post("/login")
def login() -> Any:
    lang = _lang()
    if not _csrf_ok():
        abort(400, description="the form has expired; reload the sign-in page")
    name = request.form.get("username", "")
    target = _safe_next(request.form.get("next"))
    try:
        user = users().authenticate(name, request.form.get("password", ""))
    except AuthFailed as exc:
        current_app.logger.warning("sign-in refused from %s: %s", client_address(), exc)
        users().audit("signin-failed", username=name, address=client_address(),
                      user_agent=request.user_agent.string)
        body = render_template_string(LOGIN_PAGE, t=TEXT[lang], lang=lang, csrf=csrf_token(),
                                      next=target, error=TEXT[lang]["failed"])
        return body, 401
    session.clear()  # a fresh session at sign-in (no fixation)
    session.permanent = True
    session["uid"], session["pwv"] = user.id, user.password_version
    csrf_token()
    users().audit("signin", username=user.username, address=client_address(),
                  user_agent=request.user_agent.string)
    return redirect(target)


@bp.post("/logout")
def logout() -> Any:
    user = _session_user()
    if user is not None:
        users().audit("signout", username=user.username, address=client_address(),
                      user_agent=request.user_agent.string)
    session.clear()
    return redirect(url_for("auth.login_form"))


def install(app: Flask, users_: Users, *, secure_cookies: bool, session_hours: float) -> None:
    """Register the blueprint and the guard that every request passes."""
    from datetime import timedelta

    app.extensions["pacs"]["users"] = users_
    app.extensions["pacs"]["auth_cache"] = _TTLCache(ttl=5.0)
    def load_secret() -> None:
        # In the database so that every node signs and accepts the same cookies.
        if app.secret_key is None:
            try:
                app.secret_key = users_.secret("session-key")
            except SQLAlchemyError as exc:
                raise StorageUnavailable(f"index database unavailable: {type(exc).__name__}") from exc

    with contextlib.suppress(StorageUnavailable):
        load_secret()  # else at the first request that needs it (an unmigrated index answers 503)
    app.config.update(
        SESSION_COOKIE_NAME="pacs_session", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=session_hours),
        # Each request would otherwise re-sign and re-send the cookie: not needed, it holds no expiry.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.register_blueprint(bp)

    @app.before_request
    def guard() -> Any:
        path = request.path
        if "pacs.share.token" in request.environ:
            # /s/<token>/...: a shared study link stands in for a user; pacs.web.share checks
            # the link, its PIN and its scope (set by its LinkPaths middleware, TOKEN_KEY).
            load_secret()
            g.user = None
            return app.extensions["pacs"]["share_guard"]()
        if _is_public(path):
            g.user = None
            if path.startswith("/login"):
                load_secret()
            return None
        load_secret()
        user = current_user()
        if user is None:
            if _wants_api(path):
                body = {"error": "sign-in required: a session, HTTP Basic or a bearer token"}
                # No Basic challenge for our own viewer's fetch() calls: a browser answers a
                # challenge with its password dialog, hiding the sign-in page the viewer opens.
                if request.headers.get("X-Requested-With") == VIEWER_SCRIPT:
                    return body, 401
                return body, 401, {"WWW-Authenticate": 'Basic realm="mini-PACS", charset="UTF-8"'}
            return redirect(url_for("auth.login_form", next=request.full_path.rstrip("?")))
        g.user = user
        # CSRF: a browser session must prove a state change came from our own page;
        # Basic/bearer requests cannot be forged by another site (no ambient credentials).
        if request.method in UNSAFE and g.auth_kind == "session" and not _csrf_ok():
            abort(403, description="missing or wrong CSRF token")
        return None

    @app.context_processor
    def inject() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "user": getattr(g, "user", None)}
