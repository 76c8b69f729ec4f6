"""Roles: everyone signed in reads; referrers change nothing; only admins see the admin pages
(audit log, users); the audit query behind them (filters, paging)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import generate_uid

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web.app import create_app

CT = Path(__file__).resolve().parents[2] / "sample_dicom" / "CT" / "CT_small.dcm"
PASSWORD = "mật khẩu dài"
ACCOUNTS = {"an": "admin", "binh": "radiologist", "chi": "referrer"}
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=roles-boundary'
HTML = {"Accept": "text/html"}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("roles")
    settings = Settings(data_dir=tmp / "data", fsync=False, render_cache_mb=16)
    settings.data_dir.mkdir()
    index = Index(settings.resolved_database_url, fsync=False)
    index.migrate()
    blobs = FilesystemBlobStore(settings.resolved_blob_dir, fsync=False)
    users = Users(index)
    for name, role in ACCOUNTS.items():
        users.add(name, PASSWORD, role)
    users.add("dung", PASSWORD, "radiologist")
    users.set_disabled("dung", True)
    ingest = IngestService(blobs, index)
    ingest.store(CT.read_bytes(), Origin("import"))
    ingest.close()
    app = create_app(settings, index, blobs, test_config={"TESTING": True})
    yield app
    index.dispose()


@pytest.fixture(scope="module")
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(CT, stop_before_pixels=True)


def signed_in(app: Flask, user: str) -> FlaskClient:
    """A browser-like client with a session cookie (through the sign-in form)."""
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    resp = client.post("/login", data={"username": user, "password": PASSWORD,
                                       "csrf_token": token.group(1), "next": "/worklist"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def csrf(client: FlaskClient) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/worklist").get_data(as_text=True))
    assert m
    return m.group(1)


def new_instance() -> tuple[bytes, str]:
    ds = pydicom.dcmread(CT)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)


def stow_body(raw: bytes) -> bytes:
    return (b"--roles-boundary\r\nContent-Type: application/dicom\r\n\r\n" + raw
            + b"\r\n--roles-boundary--\r\n")


def index_of(app: Flask) -> Index:
    return app.extensions["pacs"]["index"]  # type: ignore[no-any-return]


def users_of(app: Flask) -> Users:
    return app.extensions["pacs"]["users"]  # type: ignore[no-any-return]


# -- reading: every role --------------------------------------------------------------------


@pytest.mark.parametrize("user", list(ACCOUNTS))
def test_every_role_reads_worklist_study_and_images(app: Flask, ct: Any, user: str) -> None:
    client = signed_in(app, user)
    st, se, sop = ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    assert client.get("/worklist", headers=HTML).status_code == 200
    rows = client.get("/api/worklist").get_json()["rows"]
    assert st in [r["study_uid"] for r in rows]
    assert client.get(f"/viewer/{st}", headers=HTML).status_code == 200
    assert client.get(f"/api/studies/{st}").status_code == 200
    inst = f"/dicomweb/studies/{st}/series/{se}/instances/{sop}"
    rendered = client.get(f"{inst}/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.mimetype == "image/png"
    assert client.get(f"{inst}/metadata").status_code == 200
    assert client.get(f"/dicomweb/studies?StudyInstanceUID={st}").status_code == 200
    assert client.get(f"/api/studies/{st}/series/{se}/instances/{sop}/meta").status_code == 200


# -- writing: not referrers -----------------------------------------------------------------


def test_referrer_stow_is_403_and_stores_nothing(app: Flask) -> None:
    client = app.test_client()
    raw, sop = new_instance()
    before = index_of(app).counts().instances
    resp = client.post("/dicomweb/studies", data=stow_body(raw),
                       headers={**basic("chi"), "Content-Type": STOW_TYPE})
    assert resp.status_code == 403
    assert "role may not" in resp.get_json()["error"]
    # Same from the browser session, with a valid CSRF token: the role, not CSRF, refuses it.
    browser = signed_in(app, "chi")
    resp = browser.post("/dicomweb/studies", data=stow_body(raw),
                        headers={"Content-Type": STOW_TYPE, "X-CSRF-Token": csrf(browser)})
    assert resp.status_code == 403 and "upload" in resp.get_json()["error"]
    resp = client.post("/dicomweb/studies/1.2.3", data=stow_body(raw),
                       headers={**basic("chi"), "Content-Type": STOW_TYPE})
    assert resp.status_code == 403
    assert index_of(app).get_instance(sop) is None
    assert index_of(app).counts().instances == before


def test_radiologist_and_admin_may_stow(app: Flask) -> None:
    for user in ("binh", "an"):
        raw, sop = new_instance()
        resp = app.test_client().post("/dicomweb/studies", data=stow_body(raw),
                                      headers={**basic(user), "Content-Type": STOW_TYPE})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert index_of(app).get_instance(sop) is not None


# -- admin pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["binh", "chi"])
def test_admin_pages_are_403_without_audit_data(app: Flask, ct: Any, user: str) -> None:
    opener = signed_in(app, "binh")
    assert opener.get(f"/viewer/{ct.StudyInstanceUID}", headers=HTML).status_code == 200
    client = signed_in(app, user)
    for path in ("/admin/audit", "/admin/users", "/admin", f"/admin/audit?study={ct.StudyInstanceUID}"):
        resp = client.get(path, headers=HTML)
        assert resp.status_code == 403, path
        body = resp.get_data(as_text=True)
        assert ct.StudyInstanceUID not in body and "open-study" not in body and "127.0.0.1" not in body
        assert "may not open this page" in body
    api = app.test_client().get("/admin/audit", headers={**basic(user), "Accept": "application/json"})
    assert api.status_code == 403 and "open-study" not in api.get_data(as_text=True)


def test_signed_out_is_sent_to_sign_in(app: Flask) -> None:
    resp = app.test_client().get("/admin/audit", headers=HTML)
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=/admin/audit")


def test_admin_sees_a_study_open_in_the_audit_log(app: Flask, ct: Any) -> None:
    st = ct.StudyInstanceUID
    reader = signed_in(app, "chi")
    assert reader.get(f"/viewer/{st}", headers={**HTML, "User-Agent": "Roles-Test/1.0"}).status_code == 200
    admin = signed_in(app, "an")
    page = admin.get("/admin/audit", headers=HTML)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    top = body.split("<tbody>")[1].split("</tr>")
    assert "signin" in top[0] and ">an<" in top[0]  # newest first: the admin's own sign-in
    row = top[1]
    assert "chi" in row and "open-study" in row and st in row and "127.0.0.1" in row
    assert "Roles-Test/1.0" in row
    only = admin.get("/admin/audit", query_string={"user": "chi", "action": "open-study"}, headers=HTML)
    rows = only.get_data(as_text=True).split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr>") >= 1 and "signin" not in rows
    none = admin.get("/admin/audit", query_string={"study": "9.9.9"}, headers=HTML)
    assert "No events match." in none.get_data(as_text=True)
    assert "built-in method" not in body  # a text key shadowed by a dict method (t.clear)
    # Admin nav: users and (another module's) share links.
    assert 'href="/admin/shares"' in body and 'href="/admin/users"' in body


def test_audit_page_pages_newest_first(app: Flask) -> None:
    users = users_of(app)
    for i in range(60):
        users.audit("open-study", username="pager", study=f"1.2.826.0.1.{i}", address="10.0.0.9")
    admin = signed_in(app, "an")
    first = admin.get("/admin/audit?user=pager", headers=HTML).get_data(as_text=True)
    assert "60 events" in first and "1.2.826.0.1.59" in first and "1.2.826.0.1.9<" not in first
    assert 'href="/admin/audit?user=pager&amp;page=2"' in first
    second = admin.get("/admin/audit?user=pager&page=2", headers=HTML).get_data(as_text=True)
    assert "1.2.826.0.1.9<" in second and "1.2.826.0.1.59" not in second
    assert admin.get("/admin/audit?page=abc", headers=HTML).status_code == 200
    assert admin.get("/admin/audit?page=99999", headers=HTML).status_code == 200


def test_users_page_lists_roles_and_states(app: Flask) -> None:
    body = signed_in(app, "an").get("/admin/users", headers=HTML).get_data(as_text=True)
    for name, role in ACCOUNTS.items():
        assert re.search(rf'data-role="{role}">\s*<td><a [^>]*>{name}</a>', body), name
    assert re.search(r"dung</a></td>.*?disabled", body, re.S)


def test_admin_link_only_for_admins(app: Flask) -> None:
    assert 'id="admin-link"' in signed_in(app, "an").get("/worklist", headers=HTML).get_data(as_text=True)
    for user in ("binh", "chi"):
        page = signed_in(app, user).get("/worklist", headers=HTML).get_data(as_text=True)
        assert 'id="admin-link"' not in page and "/admin/" not in page


# -- the audit query ------------------------------------------------------------------------


def test_audit_query_filters_and_counts(app: Flask) -> None:
    users = users_of(app)
    users.audit("signin-failed", username="Query-User", address="10.1.1.1")
    users.audit("open-study", username="query-user", study="1.2.3.77")
    users.audit("signin", username="query-user")
    assert users.audit_count(username="query-user") == 3  # names are kept lower case
    events = users.audit_events(10, username="QUERY-USER ")
    assert [e.action for e in events] == ["signin", "open-study", "signin-failed"]
    assert [e.action for e in users.audit_events(1, offset=1, username="query-user")] == ["open-study"]
    assert users.audit_count(study="1.2.3.77") == 1
    assert users.audit_count(username="query-user", action="signin") == 1
    assert users.audit_events(5, username="nobody-at-all") == []
