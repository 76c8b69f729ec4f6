"""Sign-in: sessions with CSRF, HTTP Basic, bearer tokens, lock-out; nothing readable without them."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pacs.config import Settings
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web.app import create_app

PROTECTED_API = "/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9/rendered"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, fsync=False, login_max_failures=3)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    index = Index(settings.resolved_database_url, fsync=False)
    index.migrate()
    users = Users(index)
    users.add("binh", "mật khẩu dài", "radiologist")
    app = create_app(settings, index, FilesystemBlobStore(settings.resolved_blob_dir, fsync=False),
                     test_config={"TESTING": True})
    yield app
    index.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def csrf_of(client: FlaskClient) -> str:
    page = client.get("/login").get_data(as_text=True)
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m, page
    return m.group(1)


def sign_in(client: FlaskClient, password: str = "mật khẩu dài", next_: str = "/") -> tuple[int, str]:
    resp = client.post("/login", data={"username": "BINH", "password": password,
                                       "csrf_token": csrf_of(client), "next": next_})
    return resp.status_code, resp.headers.get("Location", "")


def test_health_and_status_are_public_but_patient_data_is_not(client: FlaskClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200
    resp = client.get(PROTECTED_API)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert "sign-in required" in resp.get_json()["error"]


def test_a_browser_is_sent_to_the_sign_in_page(client: FlaskClient) -> None:
    resp = client.get("/studies?q=1", headers={"Accept": "text/html"})
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")


def test_sign_in_needs_the_csrf_token(client: FlaskClient) -> None:
    resp = client.post("/login", data={"username": "binh", "password": "mật khẩu dài"})
    assert resp.status_code == 400
    assert client.get(PROTECTED_API).status_code == 401


def test_session_sign_in_and_out(client: FlaskClient) -> None:
    code, where = sign_in(client, next_="/dicomweb/studies")
    assert (code, where) == (302, "/dicomweb/studies")
    # Signed in: the guard lets the request through (404: no such instance, not 401).
    assert client.get(PROTECTED_API).status_code == 404
    # Logging out is a state change: it needs the token too.
    assert client.post("/logout").status_code == 403
    token = csrf_of(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get(PROTECTED_API).status_code == 401


def test_wrong_password_gives_one_generic_message(client: FlaskClient) -> None:
    resp = client.post("/login", data={"username": "binh", "password": "wrong",
                                       "csrf_token": csrf_of(client)})
    unknown = client.post("/login", data={"username": "nobody", "password": "wrong",
                                          "csrf_token": csrf_of(client)})
    assert resp.status_code == unknown.status_code == 401
    assert "Wrong user name or password" in resp.get_data(as_text=True)
    assert resp.get_data(as_text=True).replace("binh", "nobody") == unknown.get_data(as_text=True).replace(
        "binh", "nobody")


def test_sign_in_page_speaks_vietnamese_when_the_browser_does(client: FlaskClient) -> None:
    page = client.get("/login", headers={"Accept-Language": "vi-VN,vi;q=0.9,en;q=0.5"})
    assert "Đăng nhập" in page.get_data(as_text=True)


def test_no_open_redirect_after_sign_in(client: FlaskClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        assert sign_in(client, next_=target) == (302, "/")


def test_session_cookie_flags(client: FlaskClient, settings: Settings, app: Flask) -> None:
    client.post("/login", data={"username": "binh", "password": "mật khẩu dài",
                                "csrf_token": csrf_of(client)})
    cookie = client.get_cookie("pacs_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert not cookie.secure  # plain http setup
    secure_app = create_app(settings.replace(public_url="https://pacs.benhvien.vn"),
                            app.extensions["pacs"]["index"], app.extensions["pacs"]["blobs"],
                            test_config={"TESTING": True})
    assert secure_app.config["SESSION_COOKIE_SECURE"] is True


def test_password_change_ends_existing_sessions(client: FlaskClient, app: Flask) -> None:
    sign_in(client)
    assert client.get(PROTECTED_API).status_code == 404
    app.extensions["pacs"]["users"].set_password("binh", "a brand new one")
    app.extensions["pacs"]["auth_cache"]._items.clear()  # the 5 s cache would delay it
    assert client.get(PROTECTED_API).status_code == 401


def test_http_basic(client: FlaskClient) -> None:
    assert client.get(PROTECTED_API, headers=basic("binh", "mật khẩu dài")).status_code == 404
    assert client.get(PROTECTED_API, headers=basic("binh", "wrong")).status_code == 401
    assert client.get(PROTECTED_API, headers={"Authorization": "Basic !!!"}).status_code == 401


def test_basic_failures_lock_the_account(client: FlaskClient) -> None:
    for _ in range(3):
        assert client.get(PROTECTED_API, headers=basic("binh", "guess")).status_code == 401
    # Locked now: even the right password is refused for a while.
    assert client.get(PROTECTED_API, headers=basic("binh", "mật khẩu dài")).status_code == 401


def test_bearer_token(client: FlaskClient, app: Flask) -> None:
    users: Users = app.extensions["pacs"]["users"]
    token = users.create_token("binh", "script")
    assert client.get(PROTECTED_API, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert client.get(PROTECTED_API, headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    users.revoke_tokens("binh")
    app.extensions["pacs"]["auth_cache"]._items.clear()  # else it takes up to 5 s to apply
    assert client.get(PROTECTED_API, headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_state_changes_with_basic_auth_need_no_csrf(client: FlaskClient) -> None:
    # No ambient credentials: a forged cross-site request cannot carry the header.
    resp = client.post("/logout", headers=basic("binh", "mật khẩu dài"))
    assert resp.status_code == 302


def test_sign_ins_are_audited(client: FlaskClient, app: Flask) -> None:
    sign_in(client, password="wrong")
    sign_in(client)
    events = app.extensions["pacs"]["users"].audit_events()
    assert [e.action for e in events[:2]] == ["signin", "signin-failed"]
    assert events[0].username == "binh" and events[0].address == "127.0.0.1"


def _aged_cookie(app: Flask, value: str, age_hours: float) -> str:
    """The session cookie ``value`` re-signed as if issued ``age_hours`` ago (same secret)."""
    import time

    from itsdangerous import TimestampSigner

    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    data = serializer.loads(value)

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age_hours * 3600)

    serializer.signer = Then
    return str(serializer.dumps(data))


def test_an_expired_session_gets_the_sign_in_page_and_no_data(client: FlaskClient, app: Flask,
                                                             settings: Settings) -> None:
    sign_in(client)
    value = client.get_cookie("pacs_session").value  # type: ignore[union-attr]
    # Younger than Settings.session_hours (12 by default): still signed in.
    client.set_cookie("pacs_session", _aged_cookie(app, value, settings.session_hours - 1))
    assert client.get(PROTECTED_API).status_code == 404
    client.set_cookie("pacs_session", _aged_cookie(app, value, settings.session_hours + 0.1))
    page = client.get("/worklist", headers={"Accept": "text/html"})
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/worklist")
    api = client.get(PROTECTED_API)
    assert api.status_code == 401 and set(api.get_json()) == {"error"}
    assert client.get("/api/worklist").status_code == 401
