"""Admin pages (role ``admin`` only): the audit log and the list of users.

Server-rendered HTML, no script needed::

    /admin                 -> /admin/audit
    /admin/audit?user=&action=&study=&page=     audit events, newest first, 50 a page
    /admin/users           accounts with role and state (changes: the ``pacs user`` CLI)

The share-link page (``/admin/shares``) lives with the shares; the nav links to it.
Other roles get a 403 page without any audit data; signed-out browsers are sent to the
sign-in page by the guard in :mod:`pacs.web.auth` before any of this runs.

:func:`install` also gives every template ``can_share`` / ``can_admin`` (booleans for the
signed-in user), so pages show links only to what the user may open.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint, Flask, g, redirect, render_template, render_template_string, request,
    url_for,
)
from werkzeug.exceptions import Forbidden

from pacs import __version__
from pacs.store.users import UserInfo
from pacs.web.auth import can, require
from pacs.web.services import users as _users
from pacs.web.ui import _page_lang

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50
MAX_PAGE = 10_000
#: Actions the core writes (others, e.g. share links, are added by their modules): filter hints.
KNOWN_ACTIONS = ("open-study", "signin", "signin-failed", "signout")

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "admin": "Admin", "audit": "Audit log", "users": "Users", "shares": "Share links",
        "worklist": "Worklist", "time": "Time (UTC)", "user": "User", "action": "Action",
        "study": "Study UID", "address": "Address", "agent": "User agent", "detail": "Detail",
        "filter": "Filter", "clear_filters": "Clear", "newer": "Newer", "older": "Older",
        "events": "events", "page": "page", "of": "of", "none": "No events match.",
        "username": "User name", "name": "Display name", "role": "Role", "state": "State",
        "active": "active", "disabled": "disabled", "locked": "locked until",
        "forbidden": "Your role may not open this page.", "back": "Back to the worklist",
        "cli": "Accounts are changed with the command line: pacs user add | passwd | disable | enable.",
        "admin_r": "admin", "radiologist_r": "radiologist", "referrer_r": "referring doctor",
    },
    "vi": {
        "admin": "Quản trị", "audit": "Nhật ký truy cập", "users": "Người dùng",
        "shares": "Liên kết chia sẻ", "worklist": "Danh sách ca chụp", "time": "Thời gian (UTC)",
        "user": "Người dùng", "action": "Thao tác", "study": "UID ca chụp", "address": "Địa chỉ",
        "agent": "Trình duyệt", "detail": "Chi tiết", "filter": "Lọc", "clear_filters": "Xóa lọc",
        "newer": "Mới hơn", "older": "Cũ hơn", "events": "sự kiện", "page": "trang", "of": "/",
        "none": "Không có sự kiện nào.", "username": "Tên đăng nhập", "name": "Tên hiển thị",
        "role": "Vai trò", "state": "Trạng thái", "active": "đang hoạt động",
        "disabled": "đã khóa", "locked": "tạm khóa đến",
        "forbidden": "Vai trò của bạn không được mở trang này.", "back": "Về danh sách ca chụp",
        "cli": "Thay đổi tài khoản bằng dòng lệnh: pacs user add | passwd | disable | enable.",
        "admin_r": "quản trị", "radiologist_r": "bác sĩ CĐHA", "referrer_r": "bác sĩ chỉ định",
    },
}

FORBIDDEN_PAGE = """{% extends "base.html" %}
{% block title %}mini-PACS · 403{% endblock %}
{% block topbar %}<h1 class="title">{{ t.admin }}</h1>{% endblock %}
{% block main %}<main class="worklist"><p role="alert">{{ t.forbidden }}</p>
<p><a href="{{ url_for('ui.worklist_page') }}">{{ t.back }}</a></p></main>
<script type="module">
import { applyTexts, bindLangSelect, onLangChange } from "{{ url_for('ui.static', filename='js/i18n.js') }}";
bindLangSelect(document.getElementById("lang"));
onLangChange(() => location.reload());
applyTexts();
</script>{% endblock %}
"""


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _utc(value: datetime | None) -> str:
    return "" if value is None else _aware(value).strftime("%Y-%m-%d %H:%M:%S")


def _page_context() -> dict[str, Any]:
    lang = _page_lang()
    return {"lang": lang, "t": TEXT[lang], "user": g.user, "version": __version__}


@bp.get("")
@bp.get("/")
@require("admin")
def index() -> Any:
    return redirect(url_for("admin.audit"))


@bp.get("/audit")
@require("admin")
def audit() -> Any:
    """The audit log, newest first, filtered by exact user / action / study UID."""
    filters = {k: request.args.get(k, "").strip()[:64] for k in ("user", "action", "study")}
    try:
        page = min(MAX_PAGE, max(1, int(request.args.get("page", "1"))))
    except ValueError:
        page = 1
    users = _users()
    total = users.audit_count(username=filters["user"], action=filters["action"], study=filters["study"])
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    events = users.audit_events(PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, username=filters["user"],
                                action=filters["action"], study=filters["study"])
    rows = [{"at": _utc(e.at), "iso": _aware(e.at).isoformat() if e.at else "", "user": e.username,
             "action": e.action, "study": e.study_instance_uid, "address": e.address,
             "agent": e.user_agent, "detail": e.detail} for e in events]

    def link(**change: Any) -> str:
        """This page's URL with some filters or the page changed (empty values dropped)."""
        params = {**filters, "page": page, **change}
        query = urlencode({k: v for k, v in params.items() if v not in ("", None, 1)})
        return url_for("admin.audit") + (f"?{query}" if query else "")

    return render_template("admin_audit.html", rows=rows, filters=filters, total=total, page=page,
                           pages=pages, link=link, actions=KNOWN_ACTIONS, **_page_context())


def _state(u: UserInfo, t: dict[str, str]) -> str:
    if u.disabled:
        return t["disabled"]
    if u.locked_until is not None and u.locked_until > datetime.now(timezone.utc):
        return f"{t['locked']} {_utc(u.locked_until)} UTC"
    return t["active"]


@bp.get("/users")
@require("admin")
def users_page() -> Any:
    """Every account with its role and state; read-only (the CLI changes accounts)."""
    ctx = _page_context()
    t = ctx["t"]
    rows = [{"username": u.username, "name": u.display_name, "role": u.role,
             "role_text": t.get(f"{u.role}_r", u.role), "state": _state(u, t),
             "enabled": not u.disabled} for u in _users().list()]
    return render_template("admin_users.html", rows=rows, **ctx)


@bp.errorhandler(Forbidden)
def forbidden(exc: Forbidden) -> Any:
    """A page for browsers (no audit data on it); JSON for API clients, as elsewhere."""
    if not request.accept_mimetypes.accept_html:
        return {"error": exc.description or "forbidden"}, 403
    lang = _page_lang()
    return render_template_string(FORBIDDEN_PAGE, lang=lang, t=TEXT[lang], user=g.get("user"),
                                  version=__version__), 403


def install(app: Flask) -> None:
    """Register the admin pages and the ``can_share`` / ``can_admin`` template values."""
    app.register_blueprint(bp)

    @app.context_processor
    def capabilities() -> dict[str, bool]:
        return {"can_share": can("share"), "can_admin": can("admin")}
